"""Configuration: schema defaults, validation messages, environment overrides, file lookup."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from certlake.config import (
    DEFAULT_CT_LOGS_URL,
    ENV_VARS,
    Config,
    ConfigError,
    S3StorageConfig,
    find_config_file,
    load_config,
    parse_config,
    read_document,
    s3_storage_options,
    table_path_problem,
)
from support.hostile import ALIAS_BOMB

# A config.yaml as certstream-server-rust's operators write it (its key names and sections,
# including one certlake has no equivalent for, switched off).
RUST_STYLE_YAML = """\
host: "0.0.0.0"
port: 8080
log_level: "info"
buffer_size: 1000
protocols:
  websocket: true
  sse: false
  metrics: true
  health: true
  example_json: true
  api: false
ct_log:
  retry_max_attempts: 3
  retry_initial_delay_ms: 1000
  retry_max_delay_ms: 30000
  request_timeout_secs: 30
  healthy_threshold: 2
  unhealthy_threshold: 5
  health_check_interval_secs: 60
  state_file: "certstream_state.json"
  batch_size: 256
  poll_interval_ms: 1000
connection_limit:
  enabled: false
  max_connections: 10000
  per_ip_limit: null
rate_limit:
  enabled: false
auth:
  enabled: false
  tokens: []
  header_name: "Authorization"
hot_reload:
  enabled: false
  watch_path: null
custom_logs: []
static_logs:
  - name: "Let's Encrypt 'Sycamore' 2026h1"
    url: "https://mon.sycamore.ct.letsencrypt.org/2026h1/"
delta_sink:
  enabled: true
  table_path: "s3://ct-archive/certstream"
  batch_size: 10000
  flush_interval_secs: 30
  compression_level: 9
storage:
  s3:
    endpoint: "https://fly.storage.tigris.dev"
    region: "auto"
    access_key_id: "tid_example"
    secret_access_key: "tsec_example"
"""


def errors_of(document: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ or {})
    return list(info.value.errors)


def test_defaults_are_the_specified_ones() -> None:
    cfg = parse_config(None, {})
    assert (cfg.host, cfg.port, cfg.log_level) == ("0.0.0.0", 8080, "info")
    assert cfg.ct_logs_url == DEFAULT_CT_LOGS_URL
    assert cfg.ct_log.state_file == "certstream_state.json"
    assert cfg.ct_log.batch_size == 256
    sink = cfg.delta_sink
    assert (sink.enabled, sink.table_path, sink.batch_size, sink.flush_interval_secs) == (
        False,
        "./data/certstream",
        10000,
        30,
    )
    assert cfg.custom_logs == () and cfg.static_logs == ()
    assert not (cfg.auth.enabled or cfg.rate_limit.enabled or cfg.connection_limit.enabled)


def test_config_is_frozen() -> None:
    cfg = parse_config(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_rust_style_file_loads() -> None:
    cfg = parse_config(yaml.safe_load(RUST_STYLE_YAML), {})
    assert cfg.protocols.sse is False and cfg.protocols.api is False
    assert cfg.delta_sink.enabled and cfg.delta_sink.table_path == "s3://ct-archive/certstream"
    (log,) = cfg.static_logs
    assert log.name == "Let's Encrypt 'Sycamore' 2026h1"
    assert log.url == "https://mon.sycamore.ct.letsencrypt.org/2026h1"
    assert cfg.storage.s3.region == "auto"


def test_log_urls_are_normalized_like_the_state_keys() -> None:
    cfg = parse_config({"custom_logs": [{"name": "A", "url": "ct.example.com/2025h2/"}]}, {})
    assert cfg.custom_logs[0].url == "https://ct.example.com/2025h2"


def test_log_level_is_case_insensitive() -> None:
    assert parse_config({"log_level": "WARN"}, {}).log_level == "warn"


# --- one test per kind of message ----------------------------------------------------------------


def test_wrong_type_names_key_value_and_allowed() -> None:
    assert errors_of({"port": "http"}) == [
        "port: 'http' is not allowed; expected an integer from 0 to 65535"
    ]
    assert errors_of({"ct_log": {"retry_max_attempts": True}}) == [
        "ct_log.retry_max_attempts: true is not allowed; expected an integer from 1 to 100"
    ]
    assert errors_of({"protocols": {"sse": "yes"}}) == [
        "protocols.sse: 'yes' is not allowed; expected true or false"
    ]


def test_out_of_range() -> None:
    assert errors_of({"delta_sink": {"compression_level": 23}}) == [
        "delta_sink.compression_level: 23 is not allowed; expected an integer from 1 to 22"
    ]
    assert errors_of({"rate_limit": {"free_refill_rate": 0}}) == [
        "rate_limit.free_refill_rate: 0 is not allowed; expected a number > 0 and <= 1000000"
    ]
    assert errors_of({"connection_limit": {"per_ip_limit": 0}}) == [
        "connection_limit.per_ip_limit: 0 is not allowed; expected an integer from 1 to 1000000, "
        "or null"
    ]


def test_choices() -> None:
    assert errors_of({"log_format": "xml"}) == [
        "log_format: 'xml' is not allowed; expected one of text, json"
    ]
    (message,) = errors_of({"log_level": "verbose"})
    assert message.startswith("log_level: 'verbose' is not allowed; expected one of trace, debug")


def test_unknown_key_with_suggestion() -> None:
    (message,) = errors_of({"delta_sink": {"tabel_path": "x"}})
    assert message.startswith("delta_sink.tabel_path: unknown key; did you mean 'table_path'?")
    assert "allowed here: enabled, table_path, batch_size" in message


def test_unknown_key_without_suggestion() -> None:
    (message,) = errors_of({"zzz": 1})
    assert message.startswith("zzz: unknown key; (allowed here: host, port")


def test_section_must_be_a_mapping() -> None:
    assert errors_of({"ct_log": [1, 2]}) == [
        "ct_log: a list is not allowed; expected a mapping of CtLogConfig keys"
    ]
    assert errors_of(["port", 1]) == [
        "configuration: the configuration file must be a YAML mapping of keys"
    ]


def test_log_entries_need_name_and_url() -> None:
    assert errors_of({"static_logs": [{"url": "https://mon.example.com/"}, "x"]}) == [
        "static_logs[0].name: required key is missing",
        "static_logs[1]: 'x' is not allowed; expected a mapping of LogSpec keys",
    ]
    assert errors_of({"custom_logs": [{"name": "A", "url": "ftp://ct.example.com"}]}) == [
        "custom_logs[0].url: 'ftp://ct.example.com' is not allowed; expected an absolute "
        "http or https URL without query or fragment"
    ]


def test_duplicate_log_urls_after_normalization() -> None:
    document = {
        "custom_logs": [{"name": "A", "url": "ct.example.com/log/"}],
        "static_logs": [{"name": "B", "url": "https://ct.example.com/log"}],
    }
    (message,) = errors_of(document)
    assert message.startswith(
        "static_logs[0].url: 'https://ct.example.com/log' is the same log as custom_logs[0].url"
    )


def test_table_path_forms() -> None:
    for ok in ("./data/certstream", "/var/lib/ct", "file:///var/lib/ct", "s3://bucket/prefix/x"):
        assert table_path_problem(ok) is None, ok
    for bad in ("", "gcs://bucket/x", "s3://", "s3:///prefix", "file://"):
        assert table_path_problem(bad) is not None, bad
    assert errors_of({"delta_sink": {"table_path": "gcs://b/x"}}) == [
        "delta_sink.table_path: 'gcs://b/x' is not allowed; expected a local directory path, "
        "a file:// URI or an s3://bucket/prefix URI"
    ]


def test_cross_field_rules() -> None:
    assert errors_of({"ct_log": {"retry_initial_delay_ms": 5000, "retry_max_delay_ms": 100}}) == [
        "ct_log.retry_max_delay_ms: 100 is not allowed; expected a value >= "
        "ct_log.retry_initial_delay_ms (5000)"
    ]
    assert errors_of({"tls_cert": "cert.pem"}) == [
        "tls_key: required when the other of tls_cert/tls_key is set"
    ]
    assert errors_of({"delta_sink": {"batch_size": 500, "max_buffer_records": 100}}) == [
        "delta_sink.max_buffer_records: 100 is not allowed; expected a value >= "
        "delta_sink.batch_size (500)"
    ]
    (message,) = errors_of({"auth": {"enabled": True}})
    assert message.startswith("auth.tokens: empty while auth.enabled is true")


def test_s3_options_validated() -> None:
    assert errors_of({"storage": {"s3": {"access_key_id": "AKIA"}}}) == [
        "storage.s3.secret_access_key: required when the other of "
        "access_key_id/secret_access_key is set"
    ]
    assert errors_of({"storage": {"s3": {"endpoint": "http://127.0.0.1:9000"}}}) == [
        "storage.s3.endpoint: 'http://127.0.0.1:9000' uses plain http; set "
        "storage.s3.allow_http: true to allow it"
    ]
    assert errors_of({"storage": {"s3": {"conditional_put": "dynamo"}}}) == [
        "storage.s3.conditional_put: 'dynamo' is not allowed; expected one of etag"
    ]
    cfg = parse_config(
        {"storage": {"s3": {"endpoint": "http://127.0.0.1:9000", "allow_http": True}}}, {}
    )
    assert cfg.storage.s3.allow_http


def test_s3_storage_options_for_deltalake() -> None:
    s3 = S3StorageConfig(
        endpoint="http://127.0.0.1:9000",
        region="us-east-1",
        access_key_id="minio",
        secret_access_key="minio123",
        allow_http=True,
        conditional_put="etag",
    )
    assert s3_storage_options(s3) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "minio",
        "AWS_SECRET_ACCESS_KEY": "minio123",
        "aws_conditional_put": "etag",
        "AWS_ALLOW_HTTP": "true",
    }
    assert s3_storage_options(S3StorageConfig()) == {}


def test_secrets_are_never_echoed() -> None:
    (message,) = errors_of({"auth": {"enabled": True, "tokens": ["", "s3cret"]}})
    assert message == "auth.tokens[0]: <redacted> is not allowed; expected a non-empty string"
    (message,) = errors_of({"storage": {"s3": {"secret_access_key": 12345}}})
    assert "12345" not in message and "<redacted>" in message


def test_tokens_must_be_utf8_text() -> None:
    # os.environ holds bytes that are not UTF-8 as lone surrogates; the server compares tokens
    # as UTF-8 bytes, so such a token could neither be encoded nor ever match
    not_utf8 = b"s3cret\xff".decode("utf-8", "surrogateescape")
    for key in ("TOKENS", "STANDARD_TOKENS", "PREMIUM_TOKENS"):
        assert errors_of(None, {f"CERTSTREAM_AUTH_{key}": f"good,{not_utf8}"}) == [
            f"auth.{key.lower()}[1]: <redacted> is not allowed; expected UTF-8 text"
        ]
    assert parse_config(None, {"CERTSTREAM_AUTH_TOKENS": "naïve-tøken"}).auth.tokens == (
        "naïve-tøken",
    )


def test_rust_only_feature_switched_on_is_an_error() -> None:
    (message,) = errors_of({"zerobus_sink": {"enabled": True, "endpoint": "x"}})
    assert message.startswith("zerobus_sink.enabled: true is not allowed; expected false")
    (message,) = errors_of({"hot_reload": {"enabled": True}})
    assert message.startswith("hot_reload.enabled: true is not allowed; expected false")
    assert parse_config({"hot_reload": {"enabled": False, "watch_path": "x"}}, {}) == Config()


def test_query_api_is_certlakes_own_now() -> None:
    config = parse_config(
        {"query_api": {"enabled": True, "table_path": "./x", "max_results_per_page": 500}}, {}
    )
    assert config.query_api.enabled and config.query_api.table_path == "./x"
    (message,) = errors_of({"query_api": {"max_results_per_page": 50}})
    assert message.startswith("query_api.default_results_per_page: 100 is not allowed")


def test_every_error_is_collected() -> None:
    errors = errors_of(
        {
            "port": -1,
            "ct_log": {"batch_size": 0, "retry_max_attempts": "3"},
            "delta_sink": {"compression_level": 99},
            "bogus": 1,
        },
        {"CERTSTREAM_BUFFER_SIZE": "many"},
    )
    keys = sorted(e.split(":", 1)[0] for e in errors)
    assert keys == [
        "CERTSTREAM_BUFFER_SIZE",
        "bogus",
        "ct_log.batch_size",
        "ct_log.retry_max_attempts",
        "delta_sink.compression_level",
        "port",
    ]


def test_config_error_text_lists_the_source_and_each_problem() -> None:
    error = ConfigError(["a: bad", "b: worse"], "/etc/certstream/config.yaml")
    assert str(error) == (
        "invalid configuration (/etc/certstream/config.yaml):\n  - a: bad\n  - b: worse"
    )
    assert isinstance(error, ValueError)


_KEYS = st.sampled_from(
    sorted({part for path in ENV_VARS.values() for part in path} | {"custom_logs", "name", "url"})
)
_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=4), inner),
    max_leaves=20,
)


@given(_documents)
def test_any_document_gives_a_config_or_config_error(document: object) -> None:
    try:
        assert isinstance(parse_config(document, {}), Config)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and ": " in e for e in exc.errors)


# --- numbers: every numeric key is finite and bounded ------------------------------------------

KeyPath = tuple[str, ...]


def _numeric_fields(cls: type = Config, prefix: KeyPath = ()) -> list[tuple[KeyPath, type, Any]]:
    """(key path, int or float, field metadata) of every numeric key, `ct_log.operators.*` given
    for one operator."""
    found: list[tuple[KeyPath, type, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], (*prefix, f.name)
        if typing.get_origin(tp) is dict:
            found += _numeric_fields(typing.get_args(tp)[1], (*path, "Google"))
        elif dataclasses.is_dataclass(tp):
            found += _numeric_fields(tp, path)  # type: ignore[arg-type]
        else:
            base = next(a for a in (*typing.get_args(tp), tp) if a is not type(None))
            if base in (int, float):
                found.append((path, base, f.metadata))
    return found


NUMERIC = _numeric_fields()


def _nested(path: KeyPath, value: object) -> dict[str, Any]:
    doc: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        doc = {part: doc}
    return doc


def _dotted(path: KeyPath) -> str:
    return ".".join(path)


def test_numeric_keys_are_found() -> None:
    paths = {_dotted(p) for p, _, _ in NUMERIC}
    assert {"port", "ct_log.batch_size", "ct_log.operators.Google.max_requests_per_second"} <= paths
    assert {"rate_limit.free_burst", "backfill.range_split_size"} <= paths and len(paths) > 40


@pytest.mark.parametrize(("path", "kind", "meta"), NUMERIC, ids=[_dotted(p) for p, *_ in NUMERIC])
def test_every_numeric_key_has_an_upper_bound(path: KeyPath, kind: type, meta: Any) -> None:
    assert meta["max"] is not None, f"{_dotted(path)} has no upper bound"
    assert (meta["min"] is None) != (meta["gt"] is None), f"{_dotted(path)}: one lower bound"


def test_every_numeric_key_at_its_upper_bound_is_accepted() -> None:
    doc: dict[str, Any] = {}
    for path, _, meta in NUMERIC:
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = meta["max"]
    cfg = parse_config(doc, {})
    assert (cfg.port, cfg.ct_log.batch_size, cfg.rate_limit.free_burst) == (65535, 10_000, 1e6)
    assert cfg.ct_log.operators["Google"].max_requests_per_second == 10_000


ABSURD: list[object] = [10**20, 1e20, math.inf, -math.inf, math.nan, -1, -0.5]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(path, value, id=f"{_dotted(path)}={value}")
        for path, _, meta in NUMERIC
        for value in [*ABSURD, meta["max"] + 1]
    ],
)
def test_absurd_numbers_are_refused_with_the_key_named(path: KeyPath, value: object) -> None:
    (error,) = errors_of(_nested(path, value))
    assert error.startswith(f"{_dotted(path)}: {value} is not allowed; expected "), error
    # what is allowed, with both bounds: "from 1 to 100", "> 0 and <= 1000000"
    assert " to " in error or " and <= " in error, error


def test_yaml_spellings_of_absurd_numbers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "ct_log: {batch_size: 1.0e+20, poll_interval_ms: 100000000000000000000}\n"
        "rate_limit: {free_refill_rate: .inf, free_burst: .nan, premium_burst: -.inf}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, tmp_path)
    assert info.value.errors == (
        "ct_log.batch_size: 1e+20 is not allowed; expected an integer from 1 to 10000",
        "ct_log.poll_interval_ms: 100000000000000000000 is not allowed; expected an integer "
        "from 1 to 3600000",
        "rate_limit.free_refill_rate: inf is not allowed; expected a number > 0 and <= 1000000",
        "rate_limit.free_burst: nan is not allowed; expected a number > 0 and <= 1000000",
        "rate_limit.premium_burst: -inf is not allowed; expected a number > 0 and <= 1000000",
    )


ENV_NUMERIC = [
    (name, kind, meta)
    for name, env_path in ENV_VARS.items()
    for path, kind, meta in NUMERIC
    if env_path == path
]
# Each is accepted by int() or float(): digits of other scripts, separators, spelled-out values.
NOT_PLAIN_NUMBERS = ["８０８０", "١٢", "1_000", "nan", "inf", "-Infinity", "0x10", "1e999", "½"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param(name, text, id=f"{name}={text}")
        for name, _, _ in ENV_NUMERIC
        for text in NOT_PLAIN_NUMBERS
    ],
)
def test_env_numbers_must_be_plain_ascii(name: str, text: str) -> None:
    (error,) = errors_of(None, {name: text})
    # `1e999` is plain for a float key, and refused as what it reads as, infinity
    assert error.startswith(f"{name}: {text!r} is not allowed; expected ") or error.startswith(
        f"{name} ({'.'.join(ENV_VARS[name])}): inf is not allowed; expected "
    ), error


def _value_at(cfg: Config, path: KeyPath) -> Any:
    node: Any = cfg
    for part in path:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


@pytest.mark.parametrize(("name", "kind", "meta"), ENV_NUMERIC, ids=[n for n, *_ in ENV_NUMERIC])
def test_env_numbers_in_ascii_are_read(name: str, kind: type, meta: Any) -> None:
    # the default (the bound where the default is null) keeps every rule relating keys satisfied
    value = _value_at(Config(), ENV_VARS[name])
    value = meta["max"] if value is None else value
    text = f" +{value} " if kind is int else f"{value:e}"
    got = _value_at(parse_config(None, {name: text}), ENV_VARS[name])
    assert got == value and type(got) is kind


# --- environment ---------------------------------------------------------------------------------


def test_env_overrides_file_and_defaults() -> None:
    cfg = parse_config(
        {"port": 9000, "delta_sink": {"table_path": "./from-file"}},
        {
            "CERTSTREAM_PORT": "9100",
            "CERTSTREAM_DELTA_SINK_TABLE_PATH": "s3://bucket/ct",
            "CERTSTREAM_CT_LOG_BATCH_SIZE": "1024",
            "CERTSTREAM_CT_LOGS_URL": "http://127.0.0.1:8081/log_list.json",
            "CERTSTREAM_DELTA_SINK_ENABLED": "TRUE",
            "CERTSTREAM_STORAGE_S3_ENDPOINT": "https://s3.example.net",
            "CERTSTREAM_AUTH_TOKENS": "one, two,,",
            "CERTSTREAM_CT_LOG_STATE_FILE": "",
            "CERTSTREAM_RATE_LIMIT_FREE_BURST": "2.5",
            "UNRELATED": "x",
        },
    )
    assert cfg.port == 9100
    assert cfg.delta_sink.table_path == "s3://bucket/ct" and cfg.delta_sink.enabled
    assert cfg.ct_log.batch_size == 1024
    assert cfg.ct_logs_url == "http://127.0.0.1:8081/log_list.json"
    assert cfg.storage.s3.endpoint == "https://s3.example.net"
    assert cfg.auth.tokens == ("one", "two")
    assert cfg.ct_log.state_file is None
    assert cfg.rate_limit.free_burst == 2.5


def test_rust_protocol_env_names_work() -> None:
    cfg = parse_config(None, {"CERTSTREAM_WS_ENABLED": "false", "CERTSTREAM_API_ENABLED": "0"})
    assert cfg.protocols.websocket is False and cfg.protocols.api is False


def test_env_values_are_validated_like_file_values() -> None:
    assert errors_of(None, {"CERTSTREAM_CT_LOG_BATCH_SIZE": "0"}) == [
        "CERTSTREAM_CT_LOG_BATCH_SIZE (ct_log.batch_size): 0 is not allowed; "
        "expected an integer from 1 to 10000"
    ]
    assert errors_of(None, {"CERTSTREAM_DELTA_SINK_ENABLED": "maybe"}) == [
        "CERTSTREAM_DELTA_SINK_ENABLED: 'maybe' is not allowed; expected true or false "
        "(also 1/0, yes/no, on/off)"
    ]


def test_unknown_env_variable_is_an_error() -> None:
    assert errors_of(None, {"CERTSTREAM_DELTA_SINK_TABLEPATH": "x"}) == [
        "CERTSTREAM_DELTA_SINK_TABLEPATH: unknown certlake environment variable; "
        "did you mean CERTSTREAM_DELTA_SINK_TABLE_PATH?"
    ]
    assert errors_of(None, {"CERTSTREAM_STATIC_LOGS": "x"}) == [
        "CERTSTREAM_STATIC_LOGS: static_logs cannot be set from the environment; "
        "list the logs in the config file"
    ]


def test_env_names_follow_section_key_scheme() -> None:
    assert ENV_VARS["CERTSTREAM_DELTA_SINK_TABLE_PATH"] == ("delta_sink", "table_path")
    assert ENV_VARS["CERTSTREAM_STORAGE_S3_SECRET_ACCESS_KEY"] == (
        "storage",
        "s3",
        "secret_access_key",
    )
    assert ENV_VARS["CERTSTREAM_STREAM_HEARTBEAT_INTERVAL_SECS"] == (
        "stream",
        "heartbeat_interval_secs",
    )
    assert ENV_VARS["CERTSTREAM_CT_LOGS_URL"] == ("ct_logs_url",)


def _int_fields() -> list[tuple[str, int | None, int | None]]:
    found = []
    for name, path in ENV_VARS.items():
        if len(path) != 2 or path[0] in ("hot_reload", "zerobus_sink"):
            continue
        section = next(f for f in dataclasses.fields(Config) if f.name == path[0])
        fields = dataclasses.fields(section.default_factory)  # type: ignore[arg-type]
        fld = next(f for f in fields if f.name == path[1])
        if fld.type == "int":
            found.append((name, fld.metadata["min"], fld.metadata["max"]))
    return found


INT_FIELDS = _int_fields()


@given(field=st.sampled_from(INT_FIELDS), value=st.integers(-(2**40), 2**40))
def test_integer_env_override_accepted_iff_in_range(
    field: tuple[str, int | None, int | None], value: int
) -> None:
    name, lo, hi = field
    in_range = (lo is None or value >= lo) and (hi is None or value <= hi)
    try:
        cfg = parse_config(None, {name: str(value)})
    except ConfigError as exc:
        # An in-range value can still break a rule relating it to another key's default
        # ("expected a value >= ..."), which is not a range error.
        range_errors = [
            e
            for e in exc.errors
            if e.startswith(f"{name} (") and f"{value} is not allowed; expected an integer" in e
        ]
        assert len(range_errors) == (0 if in_range else 1), exc.errors
    else:
        section, key = ENV_VARS[name]
        assert in_range
        assert getattr(getattr(cfg, section), key) == value


# --- files ---------------------------------------------------------------------------------------


def test_search_order(tmp_path: Path) -> None:
    etc = tmp_path / "etc.yaml"
    search = (Path("config.yaml"), Path("config.yml"), etc)
    assert find_config_file(None, {}, tmp_path, search) is None
    etc.write_text("port: 1\n")
    assert find_config_file(None, {}, tmp_path, search) == etc
    (tmp_path / "config.yml").write_text("port: 2\n")
    assert find_config_file(None, {}, tmp_path, search) == tmp_path / "config.yml"
    (tmp_path / "config.yaml").write_text("port: 3\n")
    assert find_config_file(None, {}, tmp_path, search) == tmp_path / "config.yaml"
    (tmp_path / "env.yaml").write_text("port: 4\n")
    env = {"CERTSTREAM_CONFIG": "env.yaml"}
    assert find_config_file(None, env, tmp_path, search) == tmp_path / "env.yaml"
    (tmp_path / "flag.yaml").write_text("port: 5\n")
    assert find_config_file("flag.yaml", env, tmp_path, search) == tmp_path / "flag.yaml"
    loaded = load_config("flag.yaml", env, tmp_path, search)
    assert loaded.config.port == 5 and loaded.path == tmp_path / "flag.yaml"
    assert load_config(None, env, tmp_path, search).config.port == 4


def test_named_file_must_exist(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("port: 3\n")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "file").write_text("")
    for explicit, environ, message in [
        ("nope.yaml", {}, "--config: config file not found: nope.yaml"),
        (
            None,
            {"CERTSTREAM_CONFIG": "/nonexistent/c.yaml"},
            "CERTSTREAM_CONFIG: config file not found: /nonexistent/c.yaml",
        ),
        ("file/c.yaml", {}, "--config: config file not found: file/c.yaml"),
        ("dir.yaml", {}, "--config: config file dir.yaml is not a regular file"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(explicit, environ, tmp_path)
        assert info.value.errors == (message,)


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 8080\nct_log:\n  batch_size: [1\n")
    with pytest.raises(ConfigError) as info:
        read_document(bad)
    assert info.value.errors[0].startswith("not valid YAML at line 4")
    assert info.value.source == str(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("port: 8080\nhost: 127.0.0.1\nport: 9090\n")
    with pytest.raises(ConfigError) as info:
        read_document(dup)
    assert info.value.errors == (
        "not valid YAML at line 3, column 1: duplicate key 'port' (first given on line 1)",
    )
    date = tmp_path / "date.yaml"
    date.write_text("ct_log:\n  state_file: 2001-13-45\n")
    with pytest.raises(ConfigError) as info:
        read_document(date)
    assert info.value.errors == ("not valid YAML: month must be in 1..12",)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError):
        read_document(deep)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert load_config(empty, {}, tmp_path).config == Config()


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) == 342
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    with pytest.raises(ConfigError) as info:
        read_document(path)
    assert info.value.errors == (
        "refused: the document, its aliases (*name) expanded, holds more than 100,000 values; "
        "a configuration needs far fewer (an alias bomb?)",
    )


def test_alias_bombs_of_other_shapes_are_refused(tmp_path: Path) -> None:
    # merge keys copy the merged mapping's pairs: the same growth through `<<`
    lines = ["a: &a {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} {{<<: [{','.join([f'*{prev}'] * 10)}]}}")
    merges = tmp_path / "merges.yaml"
    merges.write_text("\n".join(lines) + "\n")
    # few values, but each a copy of one long string
    long = tmp_path / "long.yaml"
    long.write_text(
        f"s: &s {'x' * 1000}\nl: &l [{','.join(['*s'] * 100)}]\nm: [{','.join(['*l'] * 101)}]\n"
    )
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("ct_log: &a {operators: {x: *a}}\n")
    for path, problem in [
        (merges, "holds more than 100,000 values"),
        (long, "holds more than 10,000,000 characters of text"),
        (cycle, "an alias (*name) names a node that contains it; the document would be infinite"),
    ]:
        with pytest.raises(ConfigError) as info:
            read_document(path)
        (error,) = info.value.errors
        assert error.startswith("refused: ") and problem in error, path


def test_aliases_within_the_bound_are_read(tmp_path: Path) -> None:
    # Nodes, each alias counted as a copy of its anchor: the root mapping, then key `s` and its
    # list of 99 (1 + 99), key `l` and its list of 998 copies of that list (1 + 998 * 100), and
    # key `p` and its list of `pad` scalars (1 + pad): 99_906 + pad.
    def document(pad: int) -> Path:
        path = tmp_path / f"pad{pad}.yaml"
        path.write_text(
            f"s: &s [{','.join(['0'] * 99)}]\nl: [{','.join(['*s'] * 998)}]\n"
            f"p: [{','.join(['0'] * pad)}]\n"
        )
        return path

    doc = read_document(document(94))
    assert isinstance(doc, dict) and len(doc["l"]) == 998 and doc["l"][0] == [0] * 99
    with pytest.raises(ConfigError, match="holds more than 100,000 values"):
        read_document(document(95))
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text(
        "ct_log:\n  operators:\n    Google: &slow {max_in_flight: 2}\n    Sectigo: *slow\n"
    )
    operators = load_config(anchored, {}, tmp_path).config.ct_log.operators
    assert operators["Google"] == operators["Sectigo"] and operators["Google"].max_in_flight == 2


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ct_log:\n  <<: {batch_size: 100, poll_interval_ms: 5}\n  batch_size: 200\n")
    assert load_config(path, {}, tmp_path).config.ct_log.batch_size == 200


# --- locations serve writes ----------------------------------------------------------------------


def write_errors(tmp_path: Path, document: str) -> tuple[str, ...]:
    path = tmp_path / "c.yaml"
    path.write_text(document)
    assert load_config(path, {}, tmp_path).config  # without the check the file is fine
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, tmp_path, check_writes=True)
    return info.value.errors


def test_state_file_directory_must_be_writable(tmp_path: Path) -> None:
    # a regular file where a directory should be stops writes as root too
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    for state_file, problem in [
        ("file/state.json", f"{tmp_path}/file is not a directory"),
        ("file/deeper/state.json", f"{tmp_path}/file is not a directory"),
        # the rename that replaces the state file needs its directory; nothing creates it
        ("missing/state.json", f"directory {tmp_path}/missing does not exist"),
        ("dir", f"{tmp_path}/dir is a directory"),
    ]:
        assert write_errors(tmp_path, f"ct_log: {{state_file: {state_file}}}\n") == (
            f"ct_log.state_file: {state_file!r} cannot be written: {problem}",
        )


def test_archive_table_location_must_be_writable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for table_path, problem in [
        ("file/archive", f"{tmp_path}/file is not a directory"),
        ("file", f"{tmp_path}/file is not a directory"),
        (f"file://{tmp_path}/file/archive", f"{tmp_path}/file is not a directory"),
    ]:
        document = f"delta_sink: {{enabled: true, table_path: '{table_path}'}}\n"
        assert write_errors(tmp_path, document) == (
            f"delta_sink.table_path: {table_path!r} cannot be written: {problem}",
        )
    other_host = "delta_sink: {enabled: true, table_path: 'file://elsewhere/archive'}\n"
    assert write_errors(tmp_path, other_host) == (
        "delta_sink.table_path: file://elsewhere/archive: file:// URIs on another host are not "
        "supported",
    )


def test_writable_locations_pass(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for document in [
        "{}",  # certstream_state.json in the working directory; the archive is off
        "ct_log: {state_file: null}\ndelta_sink: {enabled: false, table_path: file/x}\n",
        # delta-rs creates the table's missing directories
        f"delta_sink: {{enabled: true, table_path: '{tmp_path}/new/deeper/archive'}}\n",
        f"delta_sink: {{enabled: true, table_path: 'file://{tmp_path}/new'}}\n",
        "delta_sink: {enabled: true, table_path: 's3://bucket/prefix'}\n",  # needs the network
    ]:
        path.write_text(document)
        (tmp_path / "file").write_text("")
        assert load_config(path, {}, tmp_path, check_writes=True).config, document
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directories_are_refused(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        document = (
            "ct_log: {state_file: ro/state.json}\n"
            "delta_sink: {enabled: true, table_path: ro/archive}\n"
        )
        assert write_errors(tmp_path, document) == (
            f"ct_log.state_file: 'ro/state.json' cannot be written: directory {read_only} is not "
            "writable",
            f"delta_sink.table_path: 'ro/archive' cannot be written: directory {read_only} is not "
            "writable",
        )
    finally:
        read_only.chmod(0o755)


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    path = tmp_path / "c.yaml"
    path.write_text("tls_cert: cert.pem\ntls_key: key.pem\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, tmp_path)
    assert info.value.errors == (
        "tls_key: 'key.pem' is not allowed; expected an existing PEM file",
    )
