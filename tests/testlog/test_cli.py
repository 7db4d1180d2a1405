"""`certlake testlog` as a real process: ready file, serving, faults from flags, clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.timeout(60)

CERTLAKE = str(Path(sys.executable).with_name("certlake"))


async def _wait_for_ready(path: Path, proc: asyncio.subprocess.Process) -> str:
    for _ in range(600):
        if os.path.exists(path):  # noqa: ASYNC240 - a stat per 50 ms poll
            with open(path) as f:  # noqa: ASYNC230 - one tiny file
                return f.read().strip()
        if proc.returncode is not None:
            pytest.fail(f"certlake testlog exited early: {await proc.communicate()}")
        await asyncio.sleep(0.05)
    pytest.fail("certlake testlog never wrote its ready file")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_certlake_testlog_serves_until_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    ready = tmp_path / "ready"
    args = ["--port", "0", "--ready-file", str(ready), "--initial-size", "300"]
    args += ["--batch-cap", "50", "--seed", "9", "--fault", "503:n=1,endpoint=get-sth"]
    proc = await asyncio.create_subprocess_exec(
        CERTLAKE, "testlog", *args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        base = await _wait_for_ready(ready, proc)
        assert base.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/rfc6962/ct/v1/get-sth") as resp:
                assert resp.status == 503  # the --fault, once
            async with http.get(f"{base}/rfc6962/ct/v1/get-sth") as resp:
                assert (await resp.json())["tree_size"] == 300
            async with http.get(f"{base}/rfc6962/ct/v1/get-entries?start=0&end=299") as resp:
                assert len((await resp.json())["entries"]) == 50
            async with http.get(f"{base}/log_list.json") as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert f"listening on {base}" in out.decode()
    assert b"Traceback" not in err


async def test_bad_fault_flag_is_a_usage_error(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        CERTLAKE, "testlog", "--fault", "teapot:0.5", cwd=tmp_path, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"unknown fault kind 'teapot'" in err
