"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.procs import Procs
from support.s3 import S3Server

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    # CI clones the repo with shared/ beside it; CERTLAKE_SHARED overrides for other layouts.
    env = os.environ.get("CERTLAKE_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`shared/data/`: real CT data (log list, entries, proofs, checkpoints)."""
    path = _shared_dir() / "data"
    if not path.is_dir():
        pytest.fail(f"real CT test data not found at {path} (set CERTLAKE_SHARED)")
    return path


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
