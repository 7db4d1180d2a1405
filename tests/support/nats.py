"""A real `nats-server -js` on loopback for the NATS relay tests, installed by the project's own
setup script (scripts/test-setup) when missing; the tests skip with its reason when it cannot."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.browser import run_test_setup


def find_nats_server() -> str | None:
    found = shutil.which("nats-server")
    if found is None and Path("/usr/sbin/nats-server").exists():
        found = "/usr/sbin/nats-server"
    return found


def ensure_nats_server() -> tuple[str | None, str]:
    """nats-server's path, installing it with the setup script when missing; else None and
    why not."""
    found = find_nats_server()
    if found:
        return found, ""
    said = run_test_setup()
    return find_nats_server(), said


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    binary: str
    store: Path  # JetStream's files: kept across restarts, as a real deployment keeps them
    port: int
    popen: subprocess.Popen[bytes] | None = None
    monitor_port: int | None = None  # nats-server's HTTP monitoring (/varz), when wanted

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        log = (self.store.parent / f"nats-{self.port}.log").open("ab")
        monitor = [] if self.monitor_port is None else ["-m", str(self.monitor_port)]
        self.popen = subprocess.Popen(
            [
                self.binary,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store),
                *monitor,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, "nats-server exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError("nats-server did not listen within 30 s")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout=30)
        self.popen = None
