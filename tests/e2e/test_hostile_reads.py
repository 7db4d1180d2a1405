"""Hostile logs against real processes: `certlake testlog` serving gzip bombs, huge bodies and
storms of 4xx/5xx, read by a real `certlake fetch` and a real `certlake serve`.

The promises: the certlake process stays small (peak RSS under 300 MB, read from the kernel),
the error names the bound that was passed, the log is read on normally once the fault ends, and
no error of any kind moves a watcher's cursor: every index arrives exactly once, in order.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from support.live import full_stream, get_json, grow, heads_known, logs_at, set_faults
from support.procs import CERTLAKE, Procs, server_config
from support.waiting import until

MAXRSS = Path(__file__).resolve().parents[1] / "support" / "maxrss.py"

PEAK_RSS_MB = 300
# Unpaced, fast retries, and a failing log tried again within a second: give-ups come quickly.
FAST = {
    "default_operator_rate_limit_ms": 0,
    "retry_max_attempts": 2,
    "retry_initial_delay_ms": 10,
    "retry_max_delay_ms": 50,
    "health_check_interval_secs": 1,
}
BOMB_LIMIT = "ct_log.max_decompressed_bytes"
HUGE_LIMIT = "ct_log.max_response_bytes"


@dataclass
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    peak_rss_mb: float


def _fetch(tmp_path: Path, *args: str) -> Finished:
    """`certlake fetch` run to the end, with its own peak RSS (`support/maxrss.py` says why it
    is started from a launcher)."""
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(orjson.dumps({"ct_log": FAST}))  # JSON is YAML
    out, err, rss = tmp_path / "fetch.out", tmp_path / "fetch.err", tmp_path / "fetch.rss"
    with out.open("wb") as o, err.open("wb") as e:
        done = subprocess.run(
            [sys.executable, str(MAXRSS), str(rss), CERTLAKE, "fetch", "--config", str(cfg), *args],
            stdout=o, stderr=e, cwd=tmp_path, timeout=120, check=False,
        )  # fmt: skip
    return Finished(done.returncode, out.read_bytes(), err.read_bytes(), float(rss.read_text()))


def _peak_rss_mb(pid: int) -> float:
    """The high-water mark of a running process's resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def _faults_fired(testlog: str) -> Counter[str]:
    return Counter(asyncio.run(get_json(f"{testlog}/admin/stats"))["faults"])


@pytest.mark.parametrize(("fault", "limit"), [("gzip-bomb", BOMB_LIMIT), ("huge-body", HUGE_LIMIT)])
@pytest.mark.parametrize("tiled", [False, True], ids=["get-entries", "data-tile"])
def test_fetch_stays_small_names_the_bound_and_reads_on_after_the_fault(
    procs: Procs, tmp_path: Path, fault: str, limit: str, tiled: bool
) -> None:
    testlog = procs.testlog("--initial-size", "300", "--seed", "8")
    endpoint = "data-tile" if tiled else "get-entries"
    url = f"{testlog.url}/static/mon" if tiled else f"{testlog.url}/rfc6962"
    args = [*(["--tiled"] if tiled else []), url, "5", "260"]

    asyncio.run(set_faults(testlog.url, [f"{fault}:endpoint={endpoint}"]))
    failed = _fetch(tmp_path, *args)
    assert failed.returncode == 1, failed.stderr.decode()
    assert failed.stdout == b""
    # (the other lines of stderr are the log's warnings)
    errors = [e for e in failed.stderr.decode().splitlines() if e.startswith("Error: ")]
    assert len(errors) == 2, errors
    for error, index in zip(errors, (5, 260), strict=True):
        assert error.startswith(f"Error: could not fetch [{index}, {index}] of {url}: ")
        assert f"({limit})" in error
    assert failed.peak_rss_mb < PEAK_RSS_MB
    assert _faults_fired(testlog.url)[fault] == 4  # two attempts at each of two reads

    # The fault ends after one answer: the retry reads the log as if nothing had happened.
    asyncio.run(set_faults(testlog.url, [f"{fault}:n=1,endpoint={endpoint}"]))
    recovered = _fetch(tmp_path, *args)
    assert recovered.returncode == 0, recovered.stderr.decode()
    indices = [orjson.loads(line)["data"]["cert_index"] for line in recovered.stdout.splitlines()]
    assert indices == [5, 260]
    assert recovered.peak_rss_mb < PEAK_RSS_MB
    assert _faults_fired(testlog.url)[fault] == 5


async def _log_errors(server: str) -> dict[str, str | None]:
    doc = await get_json(f"{server}/api/logs")
    return {log["url"]: log["last_error"] for log in doc["logs"]}


async def _over_limit_counts(server: str) -> dict[tuple[str, str], float]:
    """`certlake_answers_over_limit_total` by (log, limit)."""
    async with aiohttp.ClientSession() as s, s.get(f"{server}/metrics") as r:
        text = await r.text()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("certlake_answers_over_limit_total{"):
            labels, value = line[line.index("{") + 1 :].split("} ")
            pairs = dict(p.split("=", 1) for p in labels.split(","))
            out[pairs["log"].strip('"'), pairs["limit"].strip('"')] = float(value)
    return out


async def test_serve_stays_small_against_bombs_and_huge_bodies_then_reads_every_entry(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "40", "--seed", "21")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json", ct_log=FAST))
    await until(lambda: heads_known(server.url, 2), 30, "both watchers at the tree head")
    start = await logs_at(server.url)
    assert set(start.values()) == {40}
    targets = ["endpoint=get-entries", "endpoint=data-tile"]

    async with full_stream(server.url) as seen:
        for fault, limit in (("gzip-bomb", BOMB_LIMIT), ("huge-body", HUGE_LIMIT)):
            await set_faults(testlog.url, [f"{fault}:{','.join(targets)}"])
            if fault == "gzip-bomb":
                # Five data tiles behind: as many bombs in flight as the operator allows.
                await grow(testlog.url, 1200)

            async def reported(limit: str = limit) -> bool:
                errors = await _log_errors(server.url)
                return all(e is not None and f"({limit})" in e for e in errors.values())

            await until(reported, 60, f"both logs reporting {limit}")
            assert await logs_at(server.url) == start  # nothing was taken from a bad answer
            assert seen == []
        await set_faults(testlog.url, [])
        final = 40 + 1200

        async def all_there() -> bool:
            return len(seen) >= 2 * (final - 40)

        await until(all_there, 90, "every entry on the stream")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive now

    for url in start:
        assert [i for u, i in seen if u == url] == list(range(40, final))
    counts = await _over_limit_counts(server.url)
    for url in start:
        assert counts[url, "decompressed"] > 0 and counts[url, "body"] > 0
    peak = _peak_rss_mb(server.popen.pid)
    assert peak < PEAK_RSS_MB, f"certlake serve peaked at {peak:.0f} MB"


async def test_error_storms_never_move_the_cursor_and_every_index_arrives_once_in_order(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "40", "--seed", "22")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json", ct_log=FAST))
    await until(lambda: heads_known(server.url, 2), 30, "both watchers at the tree head")
    start = await logs_at(server.url)
    assert set(start.values()) == {40}
    reads = "endpoint=get-entries,endpoint=data-tile"
    # Every read of entries fails, with a 400, a 404 or a 500 (a third each); tree heads are
    # answered, so a watcher that jumped to the head on giving up would have where to jump.
    storm = [f"400:p=0.34,{reads}", f"404:p=0.5,{reads}", f"500:{reads}"]

    async with full_stream(server.url) as seen:
        await set_faults(testlog.url, storm)
        await grow(testlog.url, 200)

        failures = dict.fromkeys(start, 0)

        async def gave_up_twice_more() -> bool:
            doc = await get_json(f"{server.url}/api/logs")
            assert {log["url"]: log["cursor"] for log in doc["logs"]} == start
            return all(log["total_failures"] >= failures[log["url"]] + 2 for log in doc["logs"])

        await until(gave_up_twice_more, 60, "both watchers giving up twice")
        doc = await get_json(f"{server.url}/api/logs")
        failures = {log["url"]: log["total_failures"] for log in doc["logs"]}
        await grow(testlog.url, 100)  # the head moves on during the storm
        await until(gave_up_twice_more, 60, "both watchers giving up twice more")
        assert seen == []
        await set_faults(testlog.url, [])
        final = 40 + 300

        async def all_there() -> bool:
            return len(seen) >= 2 * (final - 40)

        await until(all_there, 60, "every entry on the stream")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive now

    for url in start:
        assert [i for u, i in seen if u == url] == list(range(40, final))
    fired = (await get_json(f"{testlog.url}/admin/stats"))["faults"]
    assert all(fired.get(code, 0) > 0 for code in ("400", "404", "500")), fired
