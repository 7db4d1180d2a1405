"""A real Dask cluster on loopback for the cluster tests: `dask scheduler` and `dask worker`
processes from the project's environment, each worker on its own loopback address (127.0.0.x)
and reading the logs from it, as workers on separate machines would from theirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from certlake.backfill.on_worker import SOURCE_ADDRESS_ENV
from support.procs import _wait_for

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class DaskCluster:
    tmp: Path
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # by host

    def start(self, hosts: list[str], nthreads: int = 2) -> DaskCluster:
        file = self.tmp / "scheduler.json"
        args = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        args += ["--scheduler-file", str(file)]
        self.scheduler = self._spawn("scheduler", args, {})
        log = self.tmp / "dask-scheduler.log"
        self.address = _wait_for(lambda: _scheduler_address(file), self.scheduler, log)
        for host in hosts:
            self.add_worker(host, nthreads)
        self.wait_for_workers(len(hosts))
        return self

    def add_worker(self, host: str, nthreads: int = 2) -> None:
        # No nanny: the worker is this process, so a SIGKILL loses it for good (a lost machine).
        args = [DASK, "worker", self.address, "--host", host, "--nthreads", str(nthreads)]
        args += ["--no-nanny", "--no-dashboard", "--name", f"w-{host}"]
        self.workers[host] = self._spawn(f"worker-{host}", args, {SOURCE_ADDRESS_ENV: host})

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, host: str) -> None:
        popen = self.workers.pop(host)
        popen.send_signal(signal.SIGKILL)
        popen.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.tmp / f"dask-{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for popen in [*self.workers.values(), self.scheduler]:
            if popen is not None and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in [*self.workers.values(), self.scheduler]:
            if popen is None:
                continue
            try:
                popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out = (self.tmp / f"dask-{name}.log").open("wb")
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env={**os.environ, **env}
        )


def _scheduler_address(file: Path) -> str | None:
    try:
        address: str = json.loads(file.read_text())["address"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    return address
