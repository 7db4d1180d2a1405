"""Realistic archive messages for the lake tests: real certificates from the test CA, turned into
messages by the same `build_message` the server uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

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


# --- S3: a real S3-compatible server (moto) on loopback ------------------------------------------


class S3Server:
    """`scripts/s3-server` (moto) in its own process on 127.0.0.1 — its own process, so that a
    delta-rs call that holds the GIL while it does I/O (`DeltaTable.history`) cannot stall it.
    `pause()` / `resume()` (SIGSTOP / SIGCONT) make an outage that loses nothing."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [str(REPO / "scripts" / "s3-server"), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().split()
        if first[:1] != ["endpoint"]:
            self._proc.kill()
            raise RuntimeError(f"scripts/s3-server did not start: {first}")
        self.endpoint = first[1]
        while self._proc.stdout.readline().strip() != "ready":
            pass

    def pause(self) -> None:
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self._proc.terminate()
        self._proc.wait(timeout=10)

    def options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "certlake-test",
            "AWS_SECRET_ACCESS_KEY": "certlake-test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            # Fail fast during an outage; the sink does its own retrying.
            "timeout": "2s",
            "max_retries": "1",
            "retry_timeout": "2s",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="certlake-test",
            aws_secret_access_key="certlake-test",
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.close()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket; returns its name."""
    name = f"certlake-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
