"""Cross-log de-duplication for one client: the same certificate from two logs, a precertificate
and its final certificate, and the bound on what is remembered."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.certs.message import CertMessage, build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.stream.dedupe import DedupeConfigError, Deduper
from certlake.testlog.certs import CertFactory, IssuedCert, IssuedPrecert

LOGS = (
    LogSource("https://one.example/log", "One", LogKind.RFC6962),
    LogSource("https://two.example/log", "Two", LogKind.STATIC),
)


@dataclass(frozen=True)
class Cert:
    sha256: str
    serial_number: str
    issuer_aggregated: str = "/CN=CA"


def message(issued: IssuedCert | IssuedPrecert, source: LogSource, index: int) -> CertMessage:
    if isinstance(issued, IssuedPrecert):
        entry = LogEntry(
            index,
            1_750_000_000_000,
            EntryType.PRECERT,
            issued.precert_der,
            issued.chain,
            issued.tbs,
            issued.issuer_key_hash,
        )
    else:
        entry = LogEntry(index, 1_750_000_000_000, EntryType.X509, issued.der, issued.chain)
    return build_message(entry, source, 1_750_000_000.5, f"{source.url}/ct/v1/get-entries")


@pytest.fixture(scope="module")
def factory() -> CertFactory:
    return CertFactory(seed=77)


def test_the_same_certificate_from_another_log_is_sent_once(factory: CertFactory) -> None:
    issued = factory.issue()
    first, second = (message(issued, log, i) for i, log in enumerate(LOGS))
    assert first.sha256 == second.sha256 and first.source_url != second.source_url
    dedupe = Deduper(10)
    assert dedupe(first) is True
    assert dedupe(second) is False
    assert dedupe(message(factory.issue(), LOGS[0], 5)) is True  # another certificate passes


@pytest.mark.parametrize("precert_first", [True, False])
def test_a_precertificate_and_its_final_certificate_are_sent_once(
    factory: CertFactory, precert_first: bool
) -> None:
    spec = factory.random_spec()
    pre = message(factory.issue_precert(spec), LOGS[0], 1)
    final = message(factory.issue(spec), LOGS[1], 2)
    # Different bytes and hashes, the same identity: serial under issuer.
    assert pre.sha256 != final.sha256 and pre.update_type != final.update_type
    assert (pre.serial_number, pre.issuer_aggregated) == (
        final.serial_number,
        final.issuer_aggregated,
    )
    dedupe = Deduper(10)
    order = (pre, final) if precert_first else (final, pre)
    assert [dedupe(m) for m in order] == [True, False]


def test_the_same_serial_under_another_issuer_is_another_certificate() -> None:
    dedupe = Deduper(10)
    assert dedupe(Cert("aa", "01", "/CN=CA one")) is True
    assert dedupe(Cert("bb", "01", "/CN=CA two")) is True
    assert dedupe(Cert("cc", "01", "/CN=CA two")) is False


def test_memory_is_the_last_window_certificates() -> None:
    dedupe = Deduper(3)
    certs = [Cert(f"sha{i}", f"serial{i}") for i in range(5)]
    assert all(dedupe(c) for c in certs)
    assert len(dedupe) == 3
    # The two oldest were forgotten, the three newest are remembered (by hash and by serial).
    assert dedupe(certs[0]) is True
    assert dedupe(Cert("other", "serial4")) is False
    assert dedupe(certs[3]) is False


@given(
    window=st.integers(1, 8),
    stream=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=80),
)
def test_a_duplicate_within_the_window_is_never_sent_and_memory_stays_bounded(
    window: int, stream: list[tuple[int, int]]
) -> None:
    dedupe = Deduper(window)
    sent: list[Cert] = []
    for sha, serial in stream:
        cert = Cert(f"h{sha}", f"s{serial}")
        recent = sent[-window:]
        expected = not any(c.sha256 == cert.sha256 or c.serial_number == cert.serial_number
                           for c in recent)  # fmt: skip
        assert dedupe(cert) is expected
        if expected:
            sent.append(cert)
        assert len(dedupe) == min(window, len(sent))


def test_window_must_be_positive() -> None:
    with pytest.raises(DedupeConfigError, match="window"):
        Deduper(0)
