"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.procs import Procs
from support.s3 import S3Server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`tests/data/`: real CT data (log list, entries, proofs, checkpoints; sources in its
    README) and, in `seeds/`, the design documents whose acceptance criteria the suite maps."""
    return REPO / "tests" / "data"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start real certlake processes; all are stopped at the end of the test."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


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
