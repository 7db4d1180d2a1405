"""Byte-level shape of the three payloads: Go's key order, trailing newlines, escaping, floats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certlake.certs.gojson import go_escape, go_float, go_text, html_escape
from certlake.certs.message import CertMessage, build_message, build_record
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.testlog.certs import CertFactory, LeafSpec
from support.leaf_cert import leaf_cert

LEAF_KEYS = [
    "all_domains",
    "as_der",
    "extensions",
    "fingerprint",
    "sha1",
    "sha256",
    "not_after",
    "not_before",
    "serial_number",
    "signature_algorithm",
    "subject",
    "issuer",
    "is_ca",
]
NAME_KEYS = ["C", "CN", "L", "O", "OU", "ST", "aggregated", "email_address"]
EXTENSION_ORDER = [
    "authorityInfoAccess",
    "authorityKeyIdentifier",
    "basicConstraints",
    "certificatePolicies",
    "keyUsage",
    "subjectAltName",
    "subjectKeyIdentifier",
    "ctlPoisonByte",
]


def ordered(payload: bytes) -> Any:
    """Parse keeping key order: every object becomes a list of (key, value) pairs."""
    return json.loads(payload, object_pairs_hook=list)


def keys(pairs: list[tuple[str, Any]]) -> list[str]:
    return [k for k, _ in pairs]


def spec(factory: CertFactory, **overrides: Any) -> LeafSpec:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "dns_names": ("env.example.com",),
        "serial": 12345,
        "not_before": start,
        "not_after": start + timedelta(days=90),
        "common_name": "env.example.com",
    }
    fields.update(overrides)
    return LeafSpec(**fields)


@pytest.fixture(scope="module")
def precert_message(factory: CertFactory, entry_of: Any, source: LogSource) -> CertMessage:
    issued = factory.issue_precert(spec(factory, organization="Env Org"))
    return build_message(entry_of(issued, index=1234), source, 1_700_000_000.25, "https://l/x")


def test_full_key_order_and_newline(precert_message: CertMessage) -> None:
    full = precert_message.full
    assert full.endswith(b"}\n") and full.count(b"\n") == 1
    top = ordered(full)
    assert keys(top) == ["data", "message_type"]
    assert top[1] == ("message_type", "certificate_update")
    data = dict(top[0][1])
    assert keys(top[0][1]) == [
        "cert_index",
        "cert_link",
        "chain",
        "leaf_cert",
        "seen",
        "source",
        "update_type",
    ]
    assert keys(data["source"]) == ["name", "url", "timestamp", "type"]
    for cert in [data["leaf_cert"], *data["chain"]]:
        assert keys(cert) == LEAF_KEYS
        obj = dict(cert)
        assert keys(obj["subject"]) == NAME_KEYS
        assert keys(obj["issuer"]) == NAME_KEYS
        present = keys(obj["extensions"])
        assert present == [k for k in EXTENSION_ORDER if k in present]
    assert keys(dict(data["leaf_cert"])["extensions"]) == EXTENSION_ORDER
    assert full.startswith(b'{"data":{"cert_index":1234,"cert_link":"https://l/x","chain":[{')


def test_lite_is_full_minus_chain_and_leaf_der(precert_message: CertMessage) -> None:
    m = precert_message
    chain = b',"chain":[' + b",".join(doc.encode() for doc in m.chain) + b"]"
    as_der = b',"as_der":"' + m.as_der.encode() + b'"'
    assert m.full.count(chain) == 1 and m.full.count(as_der) == 1
    assert m.lite == m.full.replace(chain, b"").replace(as_der, b"")
    assert m.lite.endswith(b"}\n")


def test_domains_only(precert_message: CertMessage) -> None:
    m = precert_message
    expected = b'{"data":' + json.dumps(m.all_domains).encode() + b',"message_type":"dns_entries"}'
    assert m.domains == expected
    assert not m.domains.endswith(b"\n")


def test_chain_key_omitted_when_empty(
    factory: CertFactory, entry_of: Any, source: LogSource
) -> None:
    issued = factory.issue(spec(factory))
    entry = LogEntry(1, 1_700_000_000_000, EntryType.X509, issued.der, ())
    m = build_message(entry, source, 1_700_000_000.0, "")
    assert b'"chain"' not in m.full
    assert m.chain == []
    assert m.full.startswith(b'{"data":{"cert_index":1,"cert_link":"","leaf_cert":{')
    assert m.lite == m.full.replace(b',"as_der":"' + m.as_der.encode() + b'"', b"")


def test_go_floats_in_the_envelope(factory: CertFactory, source: LogSource) -> None:
    issued = factory.issue(spec(factory))
    entry = LogEntry(1, 1_700_000_000_000, EntryType.X509, issued.der, issued.chain)
    whole = build_message(entry, source, 1_700_000_001.0, "")
    assert b',"seen":1700000001,"source":' in whole.full
    assert b'"timestamp":1700000000,"type":"rfc6962"}' in whole.full
    entry = LogEntry(1, 1_700_000_000_007, EntryType.X509, issued.der, issued.chain)
    fraction = build_message(entry, source, 1_700_000_001.123, "")
    assert b',"seen":1700000001.123,' in fraction.lite
    assert b'"timestamp":1700000000.007,' in fraction.lite


@pytest.mark.parametrize(
    ("value", "go"),
    [
        (1_700_000_000.0, b"1700000000"),
        (1_700_000_000.123, b"1700000000.123"),
        (0.0, b"0"),
        (-0.0, b"-0"),
        (0.1, b"0.1"),
        (1e20, b"100000000000000000000"),
        (1e21, b"1e+21"),
        (1.5e22, b"1.5e+22"),
        (1e-6, b"0.000001"),
        (1e-7, b"1e-7"),
        (1.25e-10, b"1.25e-10"),
        (5e-324, b"5e-324"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        (123456789012345678.0, b"123456789012345680"),
    ],
)
def test_go_float(value: float, go: bytes) -> None:
    # Expected strings are what Go's encoding/json writes for these float64 values.
    assert go_float(value) == go


def test_go_float_rejects_non_finite() -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            go_float(value)


def test_string_escapes_in_all_three_payloads(factory: CertFactory, entry_of: Any) -> None:
    # HTML characters stay raw in full/lite and are escaped in domains-only; U+2028/2029 and
    # control characters are escaped everywhere, other non-ASCII stays raw.
    source = LogSource("https://ct.example/log", "Log\u2028<&>", LogKind.RFC6962)
    issued = factory.issue(
        spec(
            factory,
            dns_names=("a<b>&c.example",),
            common_name="a<b>&c.example",
            organization="Line\u2028Para\u2029Ctl\x01\tTab 中文",
        )
    )
    m = build_message(entry_of(issued), source, 1.5, "https://ct.example/log?a=1&b=<2>")
    for payload in (m.full, m.lite):
        assert b'"name":"Log\\u2028<&>"' in payload
        assert b'"cert_link":"https://ct.example/log?a=1&b=<2>"' in payload
        assert b'"O":"Line\\u2028Para\\u2029Ctl\\u0001\\tTab \xe4\xb8\xad\xe6\x96\x87"' in payload
        assert b'"all_domains":["a<b>&c.example"]' in payload
        assert b"\xe2\x80\xa8" not in payload and b"\xe2\x80\xa9" not in payload
        assert json.loads(payload)["data"]["leaf_cert"]["subject"]["O"] == (
            "Line\u2028Para\u2029Ctl\x01\tTab 中文"
        )
    escaped = b'"a\\u003cb\\u003e\\u0026c.example"'
    assert m.domains == b'{"data":[' + escaped + b'],"message_type":"dns_entries"}'


def test_invalid_utf8_is_written_as_escaped_replacement(factory: CertFactory) -> None:
    # Go holds certificate strings as raw bytes and its encoder writes each invalid byte as
    # the six characters \ufffd. Patch a same-length invalid sequence into a real certificate.
    issued = factory.issue(spec(factory, organization="Org XYZ!"))
    der = issued.der.replace(b"Org XYZ!", b"Org \xe2\x82Z\xff", 1)
    assert der != issued.der
    entry = LogEntry(5, 1_700_000_000_000, EntryType.X509, der, ())
    m = build_message(entry, LogSource("https://l", "l", LogKind.RFC6962), 1.0, "")
    assert b'"O":"Org \\ufffd\\ufffdZ\\ufffd"' in m.full
    assert leaf_cert(m)["subject"]["O"] == "Org \ufffd\ufffdZ\ufffd"


def test_helpers() -> None:
    assert go_text(b"ok \xc3\xa9") == "ok é"
    assert go_text(b"\xed\xa0\x80") == "\ufffd\ufffd\ufffd"  # a UTF-8 surrogate: 3 bad bytes
    assert go_escape(b'"plain ascii"') == b'"plain ascii"'
    assert go_escape('"\u2028\u2029\ufffd é"'.encode()) == b'"\\u2028\\u2029\\ufffd \xc3\xa9"'
    assert html_escape(b'["<a>&"]') == b'["\\u003ca\\u003e\\u0026"]'


def test_build_record_has_exactly_the_messages_row_fields(
    factory: CertFactory, entry_of: Any, source: LogSource
) -> None:
    """Backfill's rows come from `build_record`, the live sink's from `build_message`."""
    for issued in (factory.issue(spec(factory)), factory.issue_precert(spec(factory))):
        entry = entry_of(issued)
        msg = build_message(entry, source, 1_700_000_000.5, "https://l/x")
        rec = build_record(entry, source, 1_700_000_000.5, "https://l/x")
        assert (rec.full, rec.lite, rec.domains) == (b"", b"", b"")
        assert rec._replace(full=msg.full, lite=msg.lite, domains=msg.domains) == msg
