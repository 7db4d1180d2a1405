"""A real S3-compatible server for `s3://` tests: `scripts/s3-server` (moto) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


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
