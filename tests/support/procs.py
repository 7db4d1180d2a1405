"""Real processes on loopback: `certlake testlog` and `certlake serve`, started and stopped by
the tests, with their output kept in tmp_path for post-mortems."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

CERTLAKE = str(Path(sys.executable).with_name("certlake"))
SERVING = re.compile(rb"certlake serving on (https?://\S+)")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Procs:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.started: list[Proc] = []

    def _spawn(self, args: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}-{len(self.started)}.log"
        out = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        return popen, log

    def testlog(self, *args: str) -> Proc:
        ready = self.tmp / f"testlog-ready-{len(self.started)}"
        popen, log = self._spawn(
            [CERTLAKE, "testlog", "--port", "0", "--ready-file", str(ready), *args], "testlog"
        )
        url = _wait_for(lambda: ready.read_text().strip() if ready.exists() else None, popen, log)
        proc = Proc(popen, url, log)
        self.started.append(proc)
        return proc

    def serve(self, config: dict[str, Any], *args: str) -> Proc:
        cfg = self.tmp / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        popen, log = self._spawn([CERTLAKE, "serve", "--config", str(cfg), *args], "serve")

        def url() -> str | None:
            m = SERVING.search(log.read_bytes())
            return m.group(1).decode() if m else None

        proc = Proc(popen, _wait_for(url, popen, log), log)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for p in self.started:
            p.stop()


def _wait_for(probe: Any, popen: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return str(value)
        if popen.poll() is not None:
            raise AssertionError(f"process exited {popen.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"process not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def server_config(tmp_path: Path, log_list_url: str, **overrides: Any) -> dict[str, Any]:
    """A config that watches the test log's list, reacts fast and keeps its state in tmp_path."""
    cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "ct_logs_url": log_list_url,
        "ct_log": {
            "state_file": str(tmp_path / "state.json"),
            "poll_interval_ms": 100,
            "retry_initial_delay_ms": 20,
            "retry_max_delay_ms": 300,
            "default_operator_rate_limit_ms": 0,
            "batch_size": 64,
        },
        "stream": {"heartbeat_interval_secs": 1},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def read_state(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((tmp_path / "state.json").read_bytes())
    return doc
