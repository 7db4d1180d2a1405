"""Realistic archive messages for the lake tests: real certificates from the test CA, turned into
messages by the same `build_message` the server uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from certlake.certs.message import CertMessage, build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.testlog.certs import CertFactory

REPO = Path(__file__).resolve().parents[2]

LOG_A = "https://ct.example.test/2025h2"
LOG_B = "https://tiles.example.test/2026h1"

MakeMessages = Callable[..., list[CertMessage]]


@cache
def _pool() -> tuple[CertMessage, ...]:
    """Twelve distinct entries (certificates and precertificates with chains), built once."""
    factory = CertFactory(seed=7)
    source = LogSource(LOG_A, "Example 2025h2", LogKind.RFC6962)
    out = []
    for i in range(12):
        if i % 3 == 0:
            p = factory.issue_precert()
            entry = LogEntry(
                i, 1_750_000_000_000, EntryType.PRECERT, p.precert_der, p.chain,
                tbs=p.tbs, issuer_key_hash=p.issuer_key_hash,
            )  # fmt: skip
        else:
            c = factory.issue()
            entry = LogEntry(i, 1_750_000_000_000, EntryType.X509, c.der, c.chain)
        out.append(build_message(entry, source, time.time(), f"{LOG_A}/ct/v1/get-entries"))
    return tuple(out)


def make_message(
    index: int, url: str = LOG_A, seen: float | None = None, name: str | None = None
) -> CertMessage:
    base = _pool()[index % len(_pool())]
    return base._replace(
        cert_index=index,
        source_url=url,
        source_name=name or f"log {url}",
        seen=time.time() if seen is None else seen,
        cert_link=f"{url}/ct/v1/get-entries?start={index}&end={index}",
    )


@pytest.fixture
def messages() -> MakeMessages:
    def make(
        start: int, stop: int, url: str = LOG_A, seen: float | None = None
    ) -> list[CertMessage]:
        return [make_message(i, url, seen) for i in range(start, stop)]

    return make


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
