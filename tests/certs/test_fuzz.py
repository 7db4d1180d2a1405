"""Malformed certificates: whatever the bytes, the builder returns a message or raises
CertificateParseError — never another exception — and what it returns is valid JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlake.certs.certificate import certificate_object
from certlake.certs.errors import CertificateParseError
from certlake.certs.message import build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.ct.leaf import decode_rfc6962_entry
from certlake.testlog.certs import CertFactory

SOURCE = LogSource("https://fuzz.example/log", "fuzz", LogKind.RFC6962)
FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[bytes]:
    """Real certificates to mutate: factory leaves, a precert, a root, and the Argon entry."""
    factory = CertFactory(seed=99)
    doc = json.loads((shared_data / "rfc6962/argon2025h2-get-entries-912557348.json").read_text())
    (raw,) = doc["entries"]
    argon = decode_rfc6962_entry(
        1, base64.b64decode(raw["leaf_input"]), base64.b64decode(raw["extra_data"])
    )
    return [
        factory.issue(factory.random_spec(sans=5)).der,
        factory.issue_precert(factory.random_spec(sans=1), signer="rsa").precert_der,
        factory.root_der,
        argon.cert_der,
        *argon.chain,
    ]


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out)


def mutations(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    real = st.sampled_from(samples)
    position = st.integers(0, 8000)
    return st.one_of(
        st.binary(max_size=600),
        st.builds(lambda der, cut: der[:cut], real, position),
        st.builds(
            flip, real, st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=4)
        ),
        st.builds(
            lambda der, at, junk: der[:at] + junk + der[at:],
            real,
            position,
            st.binary(min_size=1, max_size=8),
        ),
    )


def outcome(samples: list[bytes], der: bytes, *, in_chain: bool) -> CertificateParseError | None:
    """Build a message with `der` as the leaf or as the second chain certificate."""
    entry = LogEntry(
        index=3,
        timestamp_ms=1_700_000_000_000,
        entry_type=EntryType.PRECERT,
        cert_der=samples[0] if in_chain else der,
        chain=(samples[2], der) if in_chain else (samples[2],),
    )
    try:
        message = build_message(entry, SOURCE, 1.5, "")
    except CertificateParseError as exc:
        return exc
    for payload in (message.full, message.lite, message.domains):
        json.loads(payload)
    return None


@FUZZ
@given(data=st.data())
def test_leaf_bytes_only_raise_parse_errors(samples: list[bytes], data: st.DataObject) -> None:
    error = outcome(samples, data.draw(mutations(samples)), in_chain=False)
    assert error is None or error.part == "leaf"


@FUZZ
@given(data=st.data())
def test_chain_bytes_only_raise_parse_errors(samples: list[bytes], data: st.DataObject) -> None:
    error = outcome(samples, data.draw(mutations(samples)), in_chain=True)
    assert error is None or error.part == "chain[1]"


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 100, -1])
def test_truncations_are_reported(samples: list[bytes], cut: int) -> None:
    der = samples[0]
    with pytest.raises(CertificateParseError) as info:
        certificate_object(der[:cut])
    assert isinstance(info.value, ValueError)
    assert info.value.part == "leaf"
    assert "leaf:" in str(info.value)


def test_trailing_bytes_are_rejected(samples: list[bytes]) -> None:
    with pytest.raises(CertificateParseError, match="trailing"):
        certificate_object(samples[0] + b"\x00")


def test_chain_error_names_its_position(samples: list[bytes]) -> None:
    error = outcome(samples, samples[1][:50], in_chain=True)
    assert error is not None and error.part == "chain[1]"
    assert str(error).startswith("chain[1]: ")
