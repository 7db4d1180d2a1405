"""Fixtures of the cluster tests: a real `nats-server -js` on loopback (installed by the
project's setup script when missing; the tests skip with its reason when it cannot be)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.nats import NatsServer, ensure_nats_server, free_port


@pytest.fixture(scope="session")
def nats_binary() -> str:
    binary, why = ensure_nats_server()
    if binary is None:
        pytest.skip(f"nats-server could not be installed: {why}")
    return binary


@pytest.fixture
def nats(nats_binary: str, tmp_path: Path) -> Iterator[NatsServer]:
    """A server with its own store under tmp_path, not started: the test starts it."""
    server = NatsServer(nats_binary, tmp_path / "jetstream", free_port())
    try:
        yield server
    finally:
        server.stop()
