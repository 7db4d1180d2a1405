"""End to end with real processes: `certlake testlog` (with faults) → `certlake serve` → clients.

Every index the log publishes reaches a full-stream client exactly once, faults or not; a kill -9
and restart resumes from the state file without skipping an index.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson

from support.procs import Procs, read_state, server_config
from support.waiting import until

Seen = list[tuple[str, int]]


@contextlib.asynccontextmanager
async def full_stream(base: str) -> AsyncIterator[Seen]:
    """Collect (log url, index) of every certificate on /full-stream while the block runs."""
    seen: Seen = []
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(base.replace("http", "ws", 1) + "/full-stream", heartbeat=None)

    async def reader() -> None:
        async for msg in ws:
            doc = orjson.loads(msg.data)
            if doc["message_type"] == "certificate_update":
                seen.append((doc["data"]["source"]["url"], doc["data"]["cert_index"]))

    task = asyncio.create_task(reader())
    try:
        yield seen
    finally:
        # Frames already received are read to the end (the server may be dead by now: what
        # it sent before dying must still count), then the reader is stopped.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await task
        await ws.close()
        await session.close()


async def _json(url: str) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()  # type: ignore[no-any-return]


async def _grow(testlog: str, n: int) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{testlog}/admin/grow?n={n}") as r:
        assert r.status == 200, await r.text()


async def _set_faults(testlog: str, faults: list[str]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{testlog}/admin/faults", json={"faults": faults}) as r,
    ):
        assert r.status == 200, await r.text()


async def _logs_at(server: str) -> dict[str, int | None]:
    doc = await _json(f"{server}/api/logs")
    return {log["url"]: log["cursor"] for log in doc["logs"]}


async def test_every_index_reaches_a_full_stream_client_exactly_once_despite_faults(
    procs: Procs, tmp_path: Path
) -> None:
    # An operator limit as real logs have one (429 + Retry-After past 20 requests/s), a few
    # refusals on top of it, and random short answers, gateway errors and dropped connections.
    # (Refusals at random whatever the rate would teach the adaptive pacing a limit that is
    # not there; `tests/ct/test_pacing.py` covers how it copes with those.)
    testlog = procs.testlog(
        "--initial-size", "40", "--batch-cap", "40", "--seed", "11", "--rate-limit", "20",
        "--fault", "short:0.5", "--fault", "429:0.3,n=6,endpoint=get-entries",
        "--fault", "503:0.3,n=6,endpoint=data-tile",
        "--fault", "502:0.1", "--fault", "drop:0.05",
    )
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    await until(lambda: _heads_known(server.url, 2), 30, "both watchers at the tree head")
    start = await _logs_at(server.url)
    assert set(start.values()) == {40}  # a fresh start begins at the tree head

    async with full_stream(server.url) as seen:
        for _ in range(4):
            await _grow(testlog.url, 150)
            await asyncio.sleep(random.uniform(0.1, 0.5))
        final = 40 + 4 * 150

        async def all_there() -> bool:
            return len(seen) >= 2 * (final - 40)

        await until(all_there, 90, "every entry on the stream")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive now

    counts = Counter(seen)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
    for url in start:
        assert sorted(i for u, i in seen if u == url) == list(range(40, final))
    stats = await _json(f"{testlog.url}/admin/stats")
    injected = stats["faults"]
    assert injected.get("short", 0) > 0 and injected.get("429", 0) > 0
    assert injected.get("503", 0) > 0


async def _heads_known(server: str, n: int) -> bool:
    try:
        cursors = await _logs_at(server)
    except aiohttp.ClientError:
        return False
    return len(cursors) == n and all(c is not None for c in cursors.values())


async def test_kill_9_and_restart_resumes_from_the_state_file_without_a_gap(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "10", "--rate", "150", "--seed", "12")
    config = server_config(tmp_path, f"{testlog.url}/log_list.json")
    # The log answers nothing until the client is connected: a fresh start begins at the tree
    # head it reads, and whatever is streamed before the client subscribes never reaches it (on
    # a loaded machine the connection can take longer than the first fetch).
    await _set_faults(testlog.url, ["503:1"])
    server = procs.serve(config)
    async with full_stream(server.url) as before:
        await _set_faults(testlog.url, [])
        await until(lambda: _heads_known(server.url, 2), 30, "watchers started")
        first_cursor = await _logs_at(server.url)
        await asyncio.sleep(random.uniform(2.0, 4.0))
        server.kill9()
    saved = read_state(tmp_path)["logs"]

    await asyncio.sleep(1.0)  # the log keeps growing while the server is down
    # The log answers nothing until the new client is connected, so that the client sees the
    # very first entry the restarted server streams.
    await _set_faults(testlog.url, ["503:1"])
    server = procs.serve(config)
    async with full_stream(server.url) as after:
        await until(lambda: _heads_known(server.url, 2), 30, "watchers restarted")
        resumed = await _logs_at(server.url)
        assert resumed == {u: s["current_index"] for u, s in saved.items()}
        await _set_faults(testlog.url, [])
        target = {u: max(c or 0, saved[u]["current_index"]) + 300 for u, c in resumed.items()}

        async def caught_up() -> bool:
            got = {u: max((i for v, i in after if v == u), default=-1) for u in target}
            return all(got[u] >= target[u] for u in target)

        await until(caught_up, 60, "the restarted server to catch up")

    for url, start in first_cursor.items():
        assert start is not None
        got = {i for u, i in before if u == url} | {i for u, i in after if u == url}
        top = target[url]
        # Every index from the first start to the target arrived, across the crash.
        assert got >= set(range(start, top)), sorted(set(range(start, top)) - got)[:10]
        # The restart began at the saved cursor (not at the tree head).
        first_after = min(i for u, i in after if u == url)
        assert first_after == saved[url]["current_index"]
