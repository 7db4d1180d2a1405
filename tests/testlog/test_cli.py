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

from certlake.ct.entry import LogKind
from certlake.ct.loglist import parse_log_list

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
    args += ["--fault", "lie:n=1,log=static"]
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
            checkpoints = []
            for _ in range(2):
                async with http.get(f"{base}/static/mon/checkpoint") as resp:
                    checkpoints.append((await resp.read()).split(b"\n")[1:3])
            lie, honest = checkpoints
            assert lie[0] == honest[0] == b"300" and lie[1] != honest[1]  # the --fault lie, once
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


def test_help_lists_the_ecosystem_flags() -> None:
    out = subprocess.run(
        [CERTLAKE, "testlog", "--help"], capture_output=True, check=True, timeout=30
    ).stdout.decode()
    for flag in [
        "--logs",
        "--operators",
        "--static-share",
        "--max-entries",
        "--rate-limit",
        "--total-rate",
        "--sequence-interval",
    ]:
        assert flag in out


async def test_an_ecosystem_from_flags(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    args = ["--ready-file", str(ready), "--initial-size", "100", "--logs", "6"]
    args += ["--operators", "3", "--max-entries", "32", "--rate-limit", "1000"]
    args += ["--total-rate", "600", "--sequence-interval", "0.5"]
    proc = await asyncio.create_subprocess_exec(
        CERTLAKE, "testlog", *args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        base = await _wait_for_ready(ready, proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/log_list.json") as resp:
                logs = parse_log_list(await resp.read()).logs
            assert len(logs) == 6
            assert len({info.operator for info in logs}) == 3
            async with http.get(f"{base}/log_list.json") as resp:
                emails = {op["email"][0] for op in (await resp.json())["operators"]}
            assert len(emails) == 3
            assert {info.kind for info in logs} == {LogKind.RFC6962, LogKind.STATIC}
            rfc = next(info.url for info in logs if info.kind is LogKind.RFC6962)
            async with http.get(f"{rfc}/ct/v1/get-entries?start=30&end=99") as resp:
                assert len((await resp.json())["entries"]) == 2  # aligned to 32
            await asyncio.sleep(1.2)
            async with http.get(f"{base}/admin/stats") as resp:
                stats = await resp.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert set(stats["rate_limits"].values()) == {1000}
    grown = sum(log["published_size"] for log in stats["logs"].values()) - 6 * 100
    assert 0 < grown <= 600 * 3  # at most 600/s in total since the start
    assert sum(op["requests"] for op in stats["operators"].values()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--operators", "3"], b"--operators and --static-share need --logs"),
        (["--logs", "2", "--operators", "3"], b"need 1 <= operators <= logs"),
        (["--batch-cap", "5", "--max-entries", "32"], b"exclude each other"),
    ],
)
async def test_flags_that_make_no_ecosystem_are_usage_errors(
    tmp_path: Path, args: list[str], message: bytes
) -> None:
    proc = await asyncio.create_subprocess_exec(
        CERTLAKE, "testlog", *args, cwd=tmp_path, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert message in err
