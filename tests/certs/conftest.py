"""Fixtures for the certificate → message tests: a seeded factory and entry builders."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.testlog.certs import CertFactory, IssuedCert, IssuedPrecert

SOURCE = LogSource("https://ct.certlake.test/logs/one", "certlake 'One' log", LogKind.RFC6962)
TIMESTAMP_MS = 1_750_000_000_123

EntryOf = Callable[[IssuedCert | IssuedPrecert], LogEntry]


@pytest.fixture(scope="session")
def factory() -> CertFactory:
    return CertFactory(seed=20250601)


@pytest.fixture(scope="session")
def source() -> LogSource:
    return SOURCE


@pytest.fixture(scope="session")
def entry_of() -> EntryOf:
    """The LogEntry a log would hold for an issued certificate or precertificate."""

    def make(issued: IssuedCert | IssuedPrecert, index: int = 42) -> LogEntry:
        if isinstance(issued, IssuedPrecert):
            return LogEntry(
                index=index,
                timestamp_ms=TIMESTAMP_MS,
                entry_type=EntryType.PRECERT,
                cert_der=issued.precert_der,
                chain=issued.chain,
                tbs=issued.tbs,
                issuer_key_hash=issued.issuer_key_hash,
            )
        return LogEntry(
            index=index,
            timestamp_ms=TIMESTAMP_MS,
            entry_type=EntryType.X509,
            cert_der=issued.der,
            chain=issued.chain,
        )

    return make
