"""End to end with real processes: `certlake testlog` (with faults) → `certlake serve` → clients.

Every index the log publishes reaches a full-stream client exactly once, faults or not; a kill -9
and restart resumes from the state file without skipping an index.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

from certlake.lake.table import read_skipped
from support.live import full_stream, get_json, grow, heads_known, logs_at, set_faults
from support.procs import Procs, read_state, server_config
from support.waiting import until


async def test_every_index_reaches_a_full_stream_client_exactly_once_despite_faults(
    procs: Procs, tmp_path: Path
) -> None:
    # An operator limit as real logs have one (429 + Retry-After past 20 requests/s), a few
    # refusals on top of it, the first three data tiles refused with 503 (a chance of 0.3 each
    # left a run with few tile requests without any), and random short answers, gateway errors
    # and dropped connections.
    # (Refusals at random whatever the rate would teach the adaptive pacing a limit that is
    # not there; `tests/ct/test_pacing.py` covers how it copes with those.)
    testlog = procs.testlog(
        "--initial-size",
        "40",
        "--batch-cap",
        "40",
        "--seed",
        "11",
        "--rate-limit",
        "20",
        "--fault",
        "short:0.5",
        "--fault",
        "429:0.3,n=6,endpoint=get-entries",
        "--fault",
        "503:n=3,endpoint=data-tile",
        "--fault",
        "502:0.1",
        "--fault",
        "drop:0.05",
    )
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    await until(lambda: heads_known(server.url, 2), 30, "both watchers at the tree head")
    start = await logs_at(server.url)
    assert set(start.values()) == {40}  # a fresh start begins at the tree head

    async with full_stream(server.url) as seen:
        for _ in range(4):
            await grow(testlog.url, 150)
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
    stats = await get_json(f"{testlog.url}/admin/stats")
    injected = stats["faults"]
    assert injected.get("short", 0) > 0 and injected.get("429", 0) > 0
    assert injected.get("503", 0) > 0


async def test_kill_9_and_restart_resumes_from_the_state_file_without_a_gap(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "10", "--rate", "150", "--seed", "12")
    config = server_config(tmp_path, f"{testlog.url}/log_list.json")
    # The log answers nothing until the client is connected: a fresh start begins at the tree
    # head it reads, and whatever is streamed before the client subscribes never reaches it (on
    # a loaded machine the connection can take longer than the first fetch).
    await set_faults(testlog.url, ["503:1"])
    server = procs.serve(config)
    async with full_stream(server.url) as before:
        await set_faults(testlog.url, [])
        await until(lambda: heads_known(server.url, 2), 30, "watchers started")
        first_cursor = await logs_at(server.url)
        await asyncio.sleep(random.uniform(2.0, 4.0))
        server.kill9()
    saved = read_state(tmp_path)["logs"]

    await asyncio.sleep(1.0)  # the log keeps growing while the server is down
    # The log answers nothing until the new client is connected, so that the client sees the
    # very first entry the restarted server streams.
    await set_faults(testlog.url, ["503:1"])
    server = procs.serve(config)
    async with full_stream(server.url) as after:
        await until(lambda: heads_known(server.url, 2), 30, "watchers restarted")
        resumed = await logs_at(server.url)
        assert resumed == {u: s["current_index"] for u, s in saved.items()}
        await set_faults(testlog.url, [])
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


async def test_a_bad_element_costs_only_itself_on_the_stream_and_in_the_archive(
    procs: Procs, tmp_path: Path
) -> None:
    # 32-entry answers; in the live range, one element of an answer broken each way a log has
    # broken one (null, not base64, no extra_data, truncated) and, in the tiled log, one entry
    # claiming the wrong leaf_index.
    testlog = procs.testlog("--initial-size", "40", "--batch-cap", "32", "--seed", "5")
    table = tmp_path / "archive"
    config = server_config(
        tmp_path,
        f"{testlog.url}/log_list.json",
        delta_sink={"enabled": True, "table_path": str(table), "batch_size": 50,
                    "flush_interval_secs": 1, "compaction_interval_secs": 0},
    )  # fmt: skip
    server = procs.serve(config)
    await until(lambda: heads_known(server.url, 2), 30, "both watchers at the tree head")
    urls = sorted(await logs_at(server.url))
    bad = {"rfc6962": {40: "null", 73: "base64", 127: "no-extra", 160: "framing"},
           "static": {300: "leaf-index"}}  # fmt: skip
    await set_faults(
        testlog.url,
        [f"corrupt:at={i},mode={m},log={name}" for name, at in bad.items() for i, m in at.items()],
    )
    final = 40 + 400
    async with full_stream(server.url) as seen:
        await grow(testlog.url, 400)

        async def all_there() -> bool:
            return len(seen) >= 2 * 400 - 5

        await until(all_there, 60, "every good entry on the stream")
        await asyncio.sleep(0.5)
    counts = Counter(seen)
    assert max(counts.values()) == 1
    by_url = {u: sorted(i for v, i in seen if v == u) for u in urls}
    rfc = next(u for u in urls if "rfc6962" in u)
    static = next(u for u in urls if u != rfc)
    assert by_url[rfc] == sorted(set(range(40, final)) - set(bad["rfc6962"]))
    assert by_url[static] == sorted(set(range(40, final)) - set(bad["static"]))
    assert server.stop() == 0, server.log.read_text()[-3000:]
    skipped = read_skipped(str(table))
    recorded = {(r.source_url, i) for r in skipped for i in range(r.start, r.end + 1)}
    expected = {(rfc, i) for i in bad["rfc6962"]} | {(static, i) for i in bad["static"]}
    assert expected <= recorded
    assert read_state(tmp_path)["logs"][rfc]["current_index"] == final
