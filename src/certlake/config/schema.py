"""The configuration schema, its defaults, and the pure function that validates it.

Key names follow certstream-server-rust's `config.yaml` so an existing file keeps working; keys
certlake adds (`stream`, `backfill`, a few more under `ct_log` and `delta_sink`) use the same
style. Every scalar can be overridden from the environment as `CERTSTREAM_<SECTION>_<KEY>`
(`CERTSTREAM_DELTA_SINK_TABLE_PATH`, `CERTSTREAM_PORT`, `CERTSTREAM_STORAGE_S3_ENDPOINT`).

`parse_config` takes the parsed YAML document and an environment mapping — no I/O — and either
returns a frozen `Config` or raises `ConfigError` carrying one message per problem, each naming
the key, the offending value and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import difflib
import functools
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from certlake.ct.limits import DEFAULT_MAX_DECOMPRESSED_BYTES, DEFAULT_MAX_RESPONSE_BYTES, MiB
from certlake.ct.urls import normalize_url
from certlake.logsetup import FORMATS, LEVELS

ENV_PREFIX: Final = "CERTSTREAM_"
CONFIG_PATH_ENV: Final = "CERTSTREAM_CONFIG"
DEFAULT_CT_LOGS_URL: Final = "https://www.gstatic.com/ct/log_list/v3/all_logs_list.json"
DEFAULT_TABLE_PATH: Final = "./data/certstream"
DEFAULT_STATE_FILE: Final = "certstream_state.json"


class ConfigError(ValueError):
    """The configuration cannot be used. `errors` holds one human-readable line per problem."""

    def __init__(self, errors: list[str] | tuple[str, ...], source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(
            f"invalid configuration{where}:\n" + "\n".join(f"  - {e}" for e in self.errors)
        )


# --- value checks: each returns None when the value is fine, else what *is* allowed -------------


def _http_url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return "an absolute http or https URL without query or fragment"
    return None


def _list_url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme == "file" and parts.path:
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "an http(s) URL of a v3 log list, or a file:// URL of a local copy"


_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def table_path_problem(value: str) -> str | None:
    """None when `value` is a usable Delta table location, else what is allowed.

    Local paths (`./data/certstream`), `file://` URIs and `s3://bucket[/prefix]` URIs are allowed.
    Shared with the CLI, which checks `--staging-path` the same way.
    """
    allowed = "a local directory path, a file:// URI or an s3://bucket/prefix URI"
    if not value.strip():
        return allowed
    if "://" not in value:
        return None
    scheme, rest = value.split("://", 1)
    if scheme == "file" and rest.strip("/"):
        return None
    if scheme == "s3" and _BUCKET.fullmatch(rest.split("/", 1)[0]):
        return None
    return allowed


def _host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value.split(".")
    if value and all(
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?", x) for x in labels
    ):
        return None
    return "an IP address (0.0.0.0 for all interfaces) or a host name"


def _header_problem(value: str) -> str | None:
    if re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        return None
    return "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"


def _network_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
        return None
    except ValueError:
        return "an IP address or CIDR network such as 10.0.0.0/8"


def _key_problem(value: str) -> str | None:
    try:
        if base64.b64decode(value, validate=True):
            return None
    except (binascii.Error, ValueError):
        pass
    return "the log's public key as base64 DER (the log list's `key` field)"


def _nonempty_problem(value: str) -> str | None:
    return None if value.strip() else "a non-empty string"


def _ip_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IP address of this host"
    return None


def _nats_url_problem(value: str) -> str | None:
    scheme = urlsplit(value).scheme
    return None if scheme in ("nats", "tls") else "a nats:// or tls:// URL"


def _nats_name_problem(value: str) -> str | None:
    # JetStream stream names may not hold these (they are subject tokens).
    ok = value and not any(c in value for c in " .*>/\\")
    return None if ok else "a stream name without spaces, '.', '*', '>', '/' or '\\'"


def _token_problem(value: str) -> str | None:
    # Tokens are compared as UTF-8 bytes. An environment value that was not UTF-8 arrives with
    # lone surrogates (Python's surrogateescape), which have no UTF-8 form.
    try:
        value.encode()
    except UnicodeEncodeError:
        return "UTF-8 text"
    return _nonempty_problem(value)


def _m(
    *,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[str], str | None] | None = None,
    normalize: Callable[[str], str] | None = None,
    secret: bool = False,
) -> dict[str, Any]:
    """Field metadata read by the validator: numeric bounds, allowed strings, a check function
    (returns what is allowed, or None when fine), a normalizer applied first, and whether the
    value must never be echoed in an error message."""
    return {
        "min": min,
        "max": max,
        "gt": gt,
        "choices": choices,
        "check": check,
        "normalize": normalize,
        "secret": secret,
    }


# --- the schema ----------------------------------------------------------------------------------

# Every number has an upper bound. Each lies far beyond any sensible setting, so that it never gets
# in an operator's way, yet refuses the typo or hostile file (`1e20`, `.inf`) that would overflow a
# timer, reserve memory without limit or quietly mean "never". Shared bounds:
_HOUR_MS: Final = 3_600_000  # waits (retries, polls) in ms: longer than an hour is an outage
_HOUR_SECS: Final = 3600  # timeouts and keep-alives, in seconds
_DAY_SECS: Final = 86_400  # intervals in seconds: a day is already "never"
_WEEK_SECS: Final = 604_800  # housekeeping (log-list refresh, compaction): at least weekly
# Items one queue, ring, cache or buffer holds in memory: messages and rows are kilobytes each,
# so a million is gigabytes.
_MILLION: Final = 1_000_000
_MAX_IN_FLIGHT: Final = 64  # concurrent requests to one operator: more only earns 429s


@dataclass(frozen=True, slots=True)
class LogSpec:
    """A log named in the config (`custom_logs` / `static_logs`).

    `url` is stored normalized (`ct.urls.normalize_url`); for static logs it is the monitoring
    prefix. `key` (base64 DER public key) enables signature checks for a log that is not in the
    log list; `log_origin` overrides a static log's checkpoint origin when it differs from the
    URL's host/path.
    """

    name: str = field(metadata=_m(check=_nonempty_problem))
    url: str = field(metadata=_m(normalize=normalize_url, check=_http_url_problem))
    key: str | None = field(default=None, metadata=_m(check=_key_problem))
    log_origin: str | None = field(default=None, metadata=_m(check=_nonempty_problem))


@dataclass(frozen=True, slots=True)
class ProtocolsConfig:
    # certstream-server-rust leaves sse and api off by default; certlake serves `/sse` and the
    # `/api/*` endpoints as part of its server, so they default on.
    websocket: bool = True
    sse: bool = True
    metrics: bool = True
    health: bool = True
    example_json: bool = True
    api: bool = True


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """Limits for one log operator's logs together (`ct_log.operators.<operator name>`)."""

    # A ceiling the adaptive rate never passes; null: learn it from the operator's answers.
    # No operator lets one client near 10,000 requests a second.
    max_requests_per_second: float | None = field(default=None, metadata=_m(gt=0, max=10_000))
    # null: `ct_log.default_operator_max_in_flight`
    max_in_flight: int | None = field(default=None, metadata=_m(min=1, max=_MAX_IN_FLIGHT))


@dataclass(frozen=True, slots=True)
class CtLogConfig:
    # 100 attempts with back-off already span hours of a failing log.
    retry_max_attempts: int = field(default=3, metadata=_m(min=1, max=100))
    retry_initial_delay_ms: int = field(default=1000, metadata=_m(min=1, max=_HOUR_MS))
    retry_max_delay_ms: int = field(default=30000, metadata=_m(min=1, max=_HOUR_MS))
    # an answer that takes over an hour is no answer
    request_timeout_secs: int = field(default=30, metadata=_m(min=1, max=_HOUR_SECS))
    # answers in a row that change a log's health; past 1000 it would never change
    healthy_threshold: int = field(default=2, metadata=_m(min=1, max=1000))
    unhealthy_threshold: int = field(default=5, metadata=_m(min=1, max=1000))
    health_check_interval_secs: int = field(default=60, metadata=_m(min=1, max=_DAY_SECS))
    # null disables the state file: every start is then a fresh start at the tree head.
    state_file: str | None = field(default=DEFAULT_STATE_FILE, metadata=_m(check=_nonempty_problem))
    # entries asked for per get-entries; logs answer at most a few thousand
    batch_size: int = field(default=256, metadata=_m(min=1, max=10_000))
    poll_interval_ms: int = field(default=1000, metadata=_m(min=1, max=_HOUR_MS))
    # certlake additions (names as in later certstream-server-rust releases where they exist).
    user_agent: str | None = field(default=None, metadata=_m(check=_nonempty_problem))
    # The local address reads leave from (None: the system's choice). Logs limit each client
    # address, so each address is its own budget; a Dask worker sets its own through the
    # environment (CERTSTREAM_CT_LOG_SOURCE_ADDRESS), as every option can be.
    source_address: str | None = field(default=None, metadata=_m(check=_ip_problem))
    log_refresh_interval_secs: int = field(default=3600, metadata=_m(min=1, max=_WEEK_SECS))
    # Spacing an operator's requests start at (0: 50 requests/s); the rate then adapts to what
    # the operator allows, learned from its answers. A minute apart is the slowest useful pace.
    default_operator_rate_limit_ms: int = field(default=500, metadata=_m(min=0, max=60_000))
    # A handful: more connections per client address is what operators throttle first.
    default_operator_max_in_flight: int = field(default=4, metadata=_m(min=1, max=_MAX_IN_FLIGHT))
    # Per-operator overrides, keyed by the operator's name in the log list (any case).
    operators: dict[str, OperatorConfig] = field(default_factory=dict)
    # Bounds on one answer of a log (`ct/limits.py` has the real sizes they are drawn from): bytes
    # on the wire, and bytes once gunzipped. An answer past one is an error, retried like any.
    # At most 1 GiB: each request in flight may hold that much at once (4 per operator).
    max_response_bytes: int = field(
        default=DEFAULT_MAX_RESPONSE_BYTES, metadata=_m(min=MiB, max=1024 * MiB)
    )
    max_decompressed_bytes: int = field(
        default=DEFAULT_MAX_DECOMPRESSED_BYTES, metadata=_m(min=MiB, max=1024 * MiB)
    )
    # Check every entry against the log's signed tree heads (ct/verify.py). Off only to measure
    # what it costs.
    verify: bool = True


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Fan-out to clients (certlake only)."""

    # an hour without a sign of life and proxies have long closed the connection
    heartbeat_interval_secs: int = field(default=15, metadata=_m(min=1, max=_HOUR_SECS))
    # messages queued per client before dropping
    client_queue_size: int = field(default=10000, metadata=_m(min=1, max=_MILLION))
    # ... and at most this many megabytes of them (a full-stream message is ~5x a lite one)
    client_queue_megabytes: int = field(default=32, metadata=_m(min=1, max=_MILLION))
    # messages kept for `?since=`; 0 disables resume
    resume_ring_size: int = field(default=10000, metadata=_m(min=0, max=_MILLION))
    # ... and at most this many megabytes of their payloads (the ring is most of the memory)
    resume_ring_megabytes: int = field(default=48, metadata=_m(min=1, max=_MILLION))
    ping_interval_secs: int = field(default=30, metadata=_m(min=1, max=_HOUR_SECS))
    # no heartbeat delivered for this long
    slow_client_timeout_secs: int = field(default=300, metadata=_m(min=1, max=_DAY_SECS))
    # certificates remembered per `?dedupe=1` client
    dedupe_window: int = field(default=10000, metadata=_m(min=1, max=_MILLION))
    # processes building messages (certificate parsing, JSON) off the event loop; null: one per
    # core (up to 8) on a machine with two or more; 0: on the loop
    build_workers: int | None = field(default=None, metadata=_m(min=0, max=64))
    # NATS JetStream relay for fan-out edges (`stream/jetstream.py`); null: none
    nats_url: str | None = field(default=None, metadata=_m(check=_nats_url_problem))
    nats_stream: str = field(default="CERTLAKE", metadata=_m(check=_nats_name_problem))
    nats_subject: str = field(default="certlake.entries", metadata=_m(check=_nonempty_problem))
    # retention of the relay stream: what `?since=` on an edge can reach back to
    nats_max_age_secs: int = field(default=3600, metadata=_m(min=1, max=_WEEK_SECS))
    nats_max_megabytes: int = field(default=1024, metadata=_m(min=1, max=_MILLION))
    # entries waiting for NATS before the oldest are dropped (NATS never holds ingest up)
    nats_buffer: int = field(default=50_000, metadata=_m(min=1, max=_MILLION))


@dataclass(frozen=True, slots=True)
class ConnectionLimitConfig:
    enabled: bool = False
    # a million open sockets is past what one process's file descriptors allow
    max_connections: int = field(default=10000, metadata=_m(min=1, max=_MILLION))
    per_ip_limit: int | None = field(default=None, metadata=_m(min=1, max=_MILLION))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Token buckets per tier (free, or tokens listed in auth.standard/premium_tokens)."""

    enabled: bool = False
    # Requests (tokens) and requests per second: a million from one client is no limit at all.
    free_max_tokens: float = field(default=100.0, metadata=_m(gt=0, max=_MILLION))
    free_refill_rate: float = field(default=10.0, metadata=_m(gt=0, max=_MILLION))
    free_burst: float = field(default=20.0, metadata=_m(gt=0, max=_MILLION))
    standard_max_tokens: float = field(default=500.0, metadata=_m(gt=0, max=_MILLION))
    standard_refill_rate: float = field(default=50.0, metadata=_m(gt=0, max=_MILLION))
    standard_burst: float = field(default=100.0, metadata=_m(gt=0, max=_MILLION))
    premium_max_tokens: float = field(default=2000.0, metadata=_m(gt=0, max=_MILLION))
    premium_refill_rate: float = field(default=200.0, metadata=_m(gt=0, max=_MILLION))
    premium_burst: float = field(default=500.0, metadata=_m(gt=0, max=_MILLION))
    window_seconds: int = field(default=60, metadata=_m(min=1, max=_DAY_SECS))
    # over a window of up to a day: a thousand million is past any client's need
    window_max_requests: int = field(default=1000, metadata=_m(min=1, max=1_000_000_000))
    burst_window_seconds: int = field(default=10, metadata=_m(min=1, max=_DAY_SECS))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = False
    tokens: tuple[str, ...] = field(default=(), metadata=_m(check=_token_problem, secret=True))
    header_name: str = field(default="Authorization", metadata=_m(check=_header_problem))
    standard_tokens: tuple[str, ...] = field(
        default=(), metadata=_m(check=_token_problem, secret=True)
    )
    premium_tokens: tuple[str, ...] = field(
        default=(), metadata=_m(check=_token_problem, secret=True)
    )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    # entries kept for /api/cert lookups
    cache_capacity: int = field(default=10000, metadata=_m(min=1, max=_MILLION))


@dataclass(frozen=True, slots=True)
class DeltaSinkConfig:
    enabled: bool = False
    table_path: str = field(default=DEFAULT_TABLE_PATH, metadata=_m(check=table_path_problem))
    batch_size: int = field(default=10000, metadata=_m(min=1, max=_MILLION))
    flush_interval_secs: int = field(default=30, metadata=_m(min=1, max=_DAY_SECS))
    # zstd level 3 (zstd's own default): level 9 halves the sink's throughput for ~8% smaller
    # files (docs/benchmarks.md, "sink").
    compression_level: int = field(default=3, metadata=_m(min=1, max=22))
    # certlake additions: the bound on records held while writes fail, and background compaction.
    # ~6 KB a realistic row in memory: 200,000 rows is about 1.2 GB before entries are dropped
    # (and recorded for backfill); the bound, 10 million, is some 60 GB.
    max_buffer_records: int = field(default=200_000, metadata=_m(min=1, max=10 * _MILLION))
    # how often `serve` runs `certlake maintain` (compaction, the domain index, vacuum); 0: never
    compaction_interval_secs: int = field(default=3600, metadata=_m(min=0, max=_WEEK_SECS))
    # files a compaction replaced are deleted this long after (Delta's default, 7 days): query
    # cursors and readers of older versions keep working that long
    retention_hours: int = field(default=168, metadata=_m(min=0, max=24 * 365))


@dataclass(frozen=True, slots=True)
class QueryApiConfig:
    """`GET /api/query/certs`, certstream-server-rust's archive search (off by default, as
    there: a substring search reads much of the archive)."""

    enabled: bool = False
    # the archive searched; unset: delta_sink.table_path
    table_path: str | None = field(default=None, metadata=_m(check=table_path_problem))
    max_results_per_page: int = field(default=500, metadata=_m(min=1, max=100_000))
    default_results_per_page: int = field(default=100, metadata=_m(min=1, max=100_000))
    query_timeout_secs: int = field(default=30, metadata=_m(min=1, max=_HOUR_SECS))


@dataclass(frozen=True, slots=True)
class S3StorageConfig:
    """Options for `s3://` table paths; unset fields fall back to the usual AWS_* environment."""

    endpoint: str | None = field(default=None, metadata=_m(check=_http_url_problem))
    region: str | None = field(default=None, metadata=_m(check=_nonempty_problem))
    access_key_id: str | None = field(default=None, metadata=_m(check=_nonempty_problem))
    secret_access_key: str | None = field(
        default=None, metadata=_m(check=_nonempty_problem, secret=True)
    )
    session_token: str | None = field(
        default=None, metadata=_m(check=_nonempty_problem, secret=True)
    )
    allow_http: bool = False
    conditional_put: str | None = field(default=None, metadata=_m(choices=("etag",)))
    allow_unsafe_rename: bool = False


@dataclass(frozen=True, slots=True)
class StorageConfig:
    s3: S3StorageConfig = field(default_factory=S3StorageConfig)


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    """Batch backfill settings for `certlake backfill` (certlake only)."""

    # concurrent fetch tasks over all logs: 16 operators at the in-flight bound each
    workers: int = field(default=8, metadata=_m(min=1, max=16 * _MAX_IN_FLIGHT))
    # concurrent fetch tasks on one log
    per_log_workers: int = field(default=2, metadata=_m(min=1, max=_MAX_IN_FLIGHT))
    # work ranges larger than this are split; ten thousand million is beyond any log's size
    range_split_size: int = field(default=100_000, metadata=_m(min=1, max=10_000_000_000))
    retry_max_attempts: int = field(default=10, metadata=_m(min=1, max=1000))
    retry_max_delay_ms: int = field(default=60_000, metadata=_m(min=1, max=_HOUR_MS))


@dataclass(frozen=True, slots=True)
class Config:
    host: str = field(default="0.0.0.0", metadata=_m(check=_host_problem))
    # 0 = any free port (tests, demo)
    port: int = field(default=8080, metadata=_m(min=0, max=65535))
    log_level: str = field(default="info", metadata=_m(normalize=str.lower, choices=tuple(LEVELS)))
    log_format: str = field(default="text", metadata=_m(choices=FORMATS))
    # certstream-server-rust's broadcast buffer; certlake sizes its queues with `stream.*`
    buffer_size: int = field(default=1000, metadata=_m(min=1, max=_MILLION))
    ct_logs_url: str = field(default=DEFAULT_CT_LOGS_URL, metadata=_m(check=_list_url_problem))
    tls_cert: str | None = field(default=None, metadata=_m(check=_nonempty_problem))
    tls_key: str | None = field(default=None, metadata=_m(check=_nonempty_problem))
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_m(check=_network_problem))
    custom_logs: tuple[LogSpec, ...] = ()
    static_logs: tuple[LogSpec, ...] = ()
    protocols: ProtocolsConfig = field(default_factory=ProtocolsConfig)
    ct_log: CtLogConfig = field(default_factory=CtLogConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    connection_limit: ConnectionLimitConfig = field(default_factory=ConnectionLimitConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    delta_sink: DeltaSinkConfig = field(default_factory=DeltaSinkConfig)
    query_api: QueryApiConfig = field(default_factory=QueryApiConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)

    @property
    def query_table(self) -> str:
        """The archive searches read."""
        return self.query_api.table_path or self.delta_sink.table_path


# Sections of certstream-server-rust's config that certlake has no equivalent for. An existing
# config.yaml may carry them switched off; switched on, they would silently do nothing here.


@dataclass(frozen=True, slots=True)
class _HotReload:
    enabled: bool = False
    watch_path: str | None = None


@dataclass(frozen=True, slots=True)
class _ZerobusSink:
    enabled: bool = False
    endpoint: str | None = None
    unity_catalog_url: str | None = None
    table_name: str | None = None
    client_id: str | None = field(default=None, metadata=_m(secret=True))
    client_secret: str | None = field(default=None, metadata=_m(secret=True))
    max_inflight_records: int | None = None


@dataclass(frozen=True, slots=True)
class _RustOnly:
    hot_reload: _HotReload = field(default_factory=_HotReload)
    zerobus_sink: _ZerobusSink = field(default_factory=_ZerobusSink)


_RUST_ONLY_WHY: Final = {
    "hot_reload": "certlake reads its configuration at start; restart to apply changes",
    "zerobus_sink": "certlake archives only to Delta (delta_sink)",
}

# certstream-server-rust's own spellings for the protocol switches.
_ENV_ALIASES: Final = {
    "CERTSTREAM_WS_ENABLED": ("protocols", "websocket"),
    "CERTSTREAM_SSE_ENABLED": ("protocols", "sse"),
    "CERTSTREAM_METRICS_ENABLED": ("protocols", "metrics"),
    "CERTSTREAM_HEALTH_ENABLED": ("protocols", "health"),
    "CERTSTREAM_EXAMPLE_JSON_ENABLED": ("protocols", "example_json"),
    "CERTSTREAM_API_ENABLED": ("protocols", "api"),
}


# --- the validator -------------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]


class _Invalid:
    """Marker for a value that produced an error (and must not be used)."""


_INVALID: Final = _Invalid()


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _tuple_item(tp: Any) -> Any | None:
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0]
    return None


def _mapping_item(tp: Any) -> Any | None:
    """The value type of a `dict[str, X]` field (a mapping keyed by names, like operators)."""
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    return None


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def _env_paths(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of every value an environment variable can set (not lists of logs)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _env_paths(tp, (*prefix, f.name))
        elif not dataclasses.is_dataclass(_tuple_item(tp)) and _mapping_item(tp) is None:
            yield (*prefix, f.name)


def _build_env_map() -> dict[str, tuple[str, ...]]:
    env: dict[str, tuple[str, ...]] = {}
    for root in (Config, _RustOnly):
        for path in _env_paths(root):
            name = _env_name(path)
            if name in env:
                raise RuntimeError(f"{name} would name both {env[name]} and {path}")
            env[name] = path
    for name, path in _ENV_ALIASES.items():
        if name in env:
            raise RuntimeError(f"alias {name} collides with {env[name]}")
        env[name] = path
    return env


ENV_VARS: Final[Mapping[str, tuple[str, ...]]] = types.MappingProxyType(_build_env_map())


def _type_at(path: tuple[str, ...]) -> Any:
    tp: Any = Config if path[0] in {f.name for f in dataclasses.fields(Config)} else _RustOnly
    for name in path:
        tp = _hints(tp)[name]
    return tp


class _Ctx:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.bad: set[KeyPath] = set()
        self.from_env: dict[KeyPath, str] = {}

    def where(self, path: KeyPath) -> str:
        env = self.from_env.get(path)
        if env:
            return f"{env} ({_dotted(path)})"
        return _dotted(path) if path else "configuration"

    def error(self, path: KeyPath, message: str) -> None:
        self.errors.append(f"{self.where(path)}: {message}")
        for i in range(1, len(path) + 1):
            self.bad.add(path[:i])

    def bad_value(self, path: KeyPath, value: object, allowed: str, secret: bool = False) -> None:
        shown = "<redacted>" if secret else _show(value)
        self.error(path, f"{shown} is not allowed; expected {allowed}")


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _type_words(tp: Any, meta: Mapping[str, Any]) -> str:
    base, optional = _unwrap_optional(tp)
    item = _tuple_item(base)
    if item is not None:
        words = "a list of " + ("mappings with name and url" if item is LogSpec else "strings")
    elif base is bool:
        words = "true or false"
    elif base in (int, float):
        words = "an integer" if base is int else "a number"
        lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
        if lo is not None and hi is not None:
            words += f" from {_num(lo)} to {_num(hi)}"
        elif gt is not None and hi is not None:
            words += f" > {_num(gt)} and <= {_num(hi)}"
        elif lo is not None:
            words += f" >= {_num(lo)}"
        elif gt is not None:
            words += f" > {_num(gt)}"
    elif meta.get("choices"):
        words = "one of " + ", ".join(meta["choices"])
    else:
        words = "a string"
    return words + (", or null" if optional else "")


def _check_number(value: float, meta: Mapping[str, Any]) -> bool:
    """Within the field's bounds. NaN compares false with everything, so would pass every bound,
    and infinity means "no limit" where a limit was asked for: both are refused first. (An int is
    finite, and may be too large for the float that `math.isfinite` would make of it.)"""
    lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
    return (isinstance(value, int) or math.isfinite(value)) and not (
        (lo is not None and value < lo)
        or (hi is not None and value > hi)
        or (gt is not None and value <= gt)
    )


def _convert(tp: Any, value: object, path: KeyPath, meta: Mapping[str, Any], ctx: _Ctx) -> object:
    base, optional = _unwrap_optional(tp)
    secret = bool(meta.get("secret"))
    if value is None and optional:
        return None
    entry = _mapping_item(base)
    if entry is not None:
        return _convert_mapping(entry, value, path, ctx)
    item = _tuple_item(base)
    if item is not None:
        if value is None:
            return ()
        if not isinstance(value, list):
            ctx.bad_value(path, value, _type_words(tp, meta))
            return _INVALID
        items = [
            _build(item, v, (*path, i), ctx)
            if dataclasses.is_dataclass(item)
            else _convert(item, v, (*path, i), meta, ctx)
            for i, v in enumerate(value)
        ]
        return _INVALID if any(x is _INVALID for x in items) else tuple(items)
    if dataclasses.is_dataclass(base):
        return _build(base, value, path, ctx)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if _check_number(value, meta):
                return value
            ctx.bad_value(path, value, _type_words(tp, meta))
            return _INVALID
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # checked before float(): an int too large for a float would raise OverflowError
            if _check_number(value, meta):
                return float(value)
            ctx.bad_value(path, value, _type_words(tp, meta))
            return _INVALID
    elif base is str and isinstance(value, str):
        normalize = meta.get("normalize")
        try:
            text = normalize(value) if normalize else value
        except ValueError:
            text = value  # not normalizable: the check below says what is allowed
        choices, check = meta.get("choices"), meta.get("check")
        if choices and text not in choices:
            problem: str | None = "one of " + ", ".join(choices)
        else:
            problem = check(text) if check else None
        if problem is None:
            return text
        ctx.bad_value(path, value, problem, secret)
        return _INVALID
    ctx.bad_value(path, value, _type_words(tp, meta), secret)
    return _INVALID


def _convert_mapping(entry: Any, value: object, path: KeyPath, ctx: _Ctx) -> object:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        ctx.bad_value(path, value, f"a mapping of names to {entry.__name__} keys")
        return _INVALID
    out: dict[str, object] = {}
    bad = False
    for key, raw in value.items():
        if not isinstance(key, str) or not key.strip():
            ctx.error((*path, str(key)), "names here must be non-empty strings")
            bad = True
            continue
        built = _build(entry, raw, (*path, key), ctx)
        bad = bad or built is _INVALID
        out[key] = built
    return _INVALID if bad else out


def _unknown_key(ctx: _Ctx, path: KeyPath, key: object, known: list[str]) -> None:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    ctx.error((*path, str(key)), f"unknown key; {hint}(allowed here: {', '.join(known)})")


def _build(cls: Any, raw: object, path: KeyPath, ctx: _Ctx) -> object:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        if path:
            ctx.bad_value(path, raw, f"a mapping of {cls.__name__} keys")
        else:
            ctx.error(path, "the configuration file must be a YAML mapping of keys")
        return _INVALID
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    for key in raw:
        if key not in known:
            _unknown_key(ctx, path, key, known)
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    missing = False
    for f in fields:
        fpath = (*path, f.name)
        if f.name not in raw:
            if _required(f):
                ctx.error(fpath, "required key is missing")
                missing = True
            continue
        value = _convert(hints[f.name], raw[f.name], fpath, f.metadata, ctx)
        if value is not _INVALID:
            kwargs[f.name] = value
        elif _required(f):
            missing = True
    return _INVALID if missing else cls(**kwargs)


# --- environment overrides -----------------------------------------------------------------------

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_ENV_INT: Final = re.compile(r"[+-]?[0-9]+", re.ASCII)
_ENV_FLOAT: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def _parse_env(tp: Any, text: str) -> tuple[object, str | None]:
    """The typed value of an environment string, or (None, what is allowed)."""
    base, optional = _unwrap_optional(tp)
    stripped = text.strip()
    if optional and stripped.lower() in ("", "null", "none"):
        return None, None
    if _tuple_item(base) is not None:
        return [p.strip() for p in text.split(",") if p.strip()], None
    if base is bool:
        low = stripped.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE, None
        return None, "true or false (also 1/0, yes/no, on/off)"
    # int() and float() also take digits of other scripts (`８０８０`), `_` separators, `nan` and
    # `inf`; a number in the environment is plain ASCII digits, as in the YAML file.
    if base is int:
        if _ENV_INT.fullmatch(stripped):
            with contextlib.suppress(ValueError):  # past int()'s digit limit: not an integer here
                return int(stripped), None
        return None, "an integer"
    if base is float:
        if _ENV_FLOAT.fullmatch(stripped):
            return float(stripped), None  # `1e999` gives inf, which the bounds check refuses
        return None, "a number"
    return text, None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], ctx: _Ctx) -> None:
    not_settable = {
        _env_name((f.name,)): f.name
        for f in dataclasses.fields(Config)
        if _tuple_item(_hints(Config)[f.name]) is LogSpec
    }
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        text = environ[name]
        path = ENV_VARS.get(name)
        if path is None:
            if name in not_settable:
                ctx.errors.append(
                    f"{name}: {not_settable[name]} cannot be set from the environment; "
                    "list the logs in the config file"
                )
                continue
            close = difflib.get_close_matches(name, list(ENV_VARS), n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else ""
            ctx.errors.append(f"{name}: unknown certlake environment variable{hint}")
            continue
        value, problem = _parse_env(_type_at(path), text)
        if problem is not None:
            ctx.errors.append(f"{name}: {text!r} is not allowed; expected {problem}")
            continue
        ctx.from_env[path] = name
        node: Any = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                break  # the section itself is malformed; that error is reported by _build
            node = child
        else:
            node[path[-1]] = value


def _plain(value: object) -> Any:
    """A deep copy of the YAML document with mappings as dicts, so env values can be set in it."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- cross-field rules ---------------------------------------------------------------------------


def _cross_checks(cfg: Config, ctx: _Ctx) -> None:
    def ok(*paths: KeyPath) -> bool:
        return not any(p in ctx.bad for p in paths)

    ct = cfg.ct_log
    if ok(("ct_log", "retry_initial_delay_ms"), ("ct_log", "retry_max_delay_ms")) and (
        ct.retry_max_delay_ms < ct.retry_initial_delay_ms
    ):
        ctx.error(
            ("ct_log", "retry_max_delay_ms"),
            f"{ct.retry_max_delay_ms} is not allowed; expected a value >= "
            f"ct_log.retry_initial_delay_ms ({ct.retry_initial_delay_ms})",
        )
    if ok(("tls_cert",), ("tls_key",)) and (cfg.tls_cert is None) != (cfg.tls_key is None):
        missing = "tls_key" if cfg.tls_key is None else "tls_cert"
        ctx.error((missing,), "required when the other of tls_cert/tls_key is set")
    sink = cfg.delta_sink
    if ok(("delta_sink",)) and sink.max_buffer_records < sink.batch_size:
        ctx.error(
            ("delta_sink", "max_buffer_records"),
            f"{sink.max_buffer_records} is not allowed; expected a value >= "
            f"delta_sink.batch_size ({sink.batch_size})",
        )
    q = cfg.query_api
    if ok(("query_api",)) and q.default_results_per_page > q.max_results_per_page:
        ctx.error(
            ("query_api", "default_results_per_page"),
            f"{q.default_results_per_page} is not allowed; expected a value <= "
            f"query_api.max_results_per_page ({q.max_results_per_page})",
        )
    st = cfg.stream
    if ok(("stream",)) and st.slow_client_timeout_secs <= st.heartbeat_interval_secs:
        ctx.error(
            ("stream", "slow_client_timeout_secs"),
            f"{st.slow_client_timeout_secs} is not allowed; expected a value > "
            f"stream.heartbeat_interval_secs ({st.heartbeat_interval_secs})",
        )
    auth = cfg.auth
    if (
        ok(("auth",))
        and auth.enabled
        and not (auth.tokens or auth.standard_tokens or auth.premium_tokens)
    ):
        ctx.error(
            ("auth", "tokens"),
            "empty while auth.enabled is true; every client would be refused "
            "(list at least one token, or set auth.enabled: false)",
        )
    s3 = cfg.storage.s3
    if ok(("storage",)):
        if (s3.access_key_id is None) != (s3.secret_access_key is None):
            missing = "secret_access_key" if s3.secret_access_key is None else "access_key_id"
            ctx.error(
                ("storage", "s3", missing),
                "required when the other of access_key_id/secret_access_key is set",
            )
        if s3.endpoint is not None and s3.endpoint.startswith("http://") and not s3.allow_http:
            ctx.error(
                ("storage", "s3", "endpoint"),
                f"{s3.endpoint!r} uses plain http; set storage.s3.allow_http: true to allow it",
            )
    seen: dict[str, str] = {}
    for section in ("custom_logs", "static_logs"):
        if not ok((section,)):
            continue
        for i, spec in enumerate(getattr(cfg, section)):
            here = _dotted((section, i, "url"))
            if spec.url in seen:
                ctx.error(
                    (section, i, "url"),
                    f"{spec.url!r} is the same log as {seen[spec.url]} "
                    "(URLs are compared after adding https:// and removing a trailing /)",
                )
            else:
                seen[spec.url] = here


def _rust_only_checks(rust: object, ctx: _Ctx) -> None:
    if not isinstance(rust, _RustOnly):
        return
    for name, why in _RUST_ONLY_WHY.items():
        if getattr(rust, name).enabled:
            ctx.error(
                (name, "enabled"),
                f"true is not allowed; expected false — {name} is a certstream-server-rust "
                f"feature that certlake does not have ({why})",
            )


def parse_config(document: object, environ: Mapping[str, str], source: str | None = None) -> Config:
    """Validate a parsed YAML document plus `CERTSTREAM_*` overrides into a `Config`.

    `document` is what `yaml.safe_load` returned (None for an empty file or no file at all).
    Raises `ConfigError` listing every problem; never returns a partly-default config.
    """
    ctx = _Ctx()
    raw: Any = _plain(document) if document is not None else {}
    rust_keys = {f.name for f in dataclasses.fields(_RustOnly)}
    if isinstance(raw, dict):
        _apply_env(raw, environ, ctx)
        rust_raw = {k: v for k, v in raw.items() if k in rust_keys}
        raw = {k: v for k, v in raw.items() if k not in rust_keys}
        _rust_only_checks(_build(_RustOnly, rust_raw, (), ctx), ctx)
    cfg = _build(Config, raw, (), ctx)
    if isinstance(cfg, Config):
        _cross_checks(cfg, ctx)
    if ctx.errors or not isinstance(cfg, Config):
        raise ConfigError(ctx.errors, source)
    return cfg


def s3_storage_options(s3: S3StorageConfig) -> dict[str, str]:
    """`storage_options` for deltalake from `storage.s3`; unset fields are left to AWS_* env."""
    opts: dict[str, str] = {}
    for key, value in (
        ("AWS_ENDPOINT_URL", s3.endpoint),
        ("AWS_REGION", s3.region),
        ("AWS_ACCESS_KEY_ID", s3.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
        ("AWS_SESSION_TOKEN", s3.session_token),
        ("aws_conditional_put", s3.conditional_put),
    ):
        if value is not None:
            opts[key] = value
    if s3.allow_http:
        opts["AWS_ALLOW_HTTP"] = "true"
    if s3.allow_unsafe_rename:
        opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    return opts
