"""`certlake serve` as a real process, stopped with a real SIGTERM: what it says it flushed."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import aiohttp
import orjson

from support.procs import Procs, read_state, server_config
from support.waiting import until


async def test_shutdown_says_what_was_flushed_saved_and_disconnected(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "20", "--seed", "9")
    table = tmp_path / "archive"
    # Nothing is flushed before the shutdown: no batch fills, the timer is an hour away.
    sink = {"enabled": True, "table_path": str(table), "flush_interval_secs": 3600,
            "compaction_interval_secs": 0}  # fmt: skip
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json", delta_sink=sink))

    async with aiohttp.ClientSession() as session:

        async def watching() -> bool:
            async with session.get(f"{server.url}/api/logs") as r:
                logs = (await r.json())["logs"]
            return len(logs) == 2 and all(log["cursor"] is not None for log in logs)

        await until(watching, 30, "both watchers at the tree head")
        ws_url = server.url.replace("http", "ws", 1) + "/full-stream"
        async with session.ws_connect(ws_url, heartbeat=None) as ws:
            async with session.post(f"{testlog.url}/admin/grow?n=5") as r:
                assert r.status == 200, await r.text()
            streamed: set[tuple[str, int]] = set()
            while len(streamed) < 10:
                msg = orjson.loads(await ws.receive_str(timeout=30))
                if msg["message_type"] == "certificate_update":  # not a heartbeat
                    streamed.add((msg["data"]["source"]["url"], msg["data"]["cert_index"]))
            # Stopped while the client is still connected.
            assert server.stop(signal.SIGTERM) == 0
    urls = sorted({u for u, _ in streamed})
    out = server.log.read_text()
    assert "shutting down" in out
    assert re.search(r" archive flushed table=\S+ final_flush=10 records_committed=10 unwritten=0$",
                     out, re.M), out[-3000:]  # fmt: skip
    saved = re.search(r" state file saved path=(\S+) cursors=\"(.*)\"$", out, re.M)
    assert saved is not None, out[-3000:]
    assert saved[1] == str(tmp_path / "state.json")
    assert saved[2] == str({url: 25 for url in urls})
    assert {u: s["current_index"] for u, s in read_state(tmp_path)["logs"].items()} == {
        url: 25 for url in urls
    }
    assert re.search(r" clients disconnected; stopped clients=1$", out, re.M), out[-3000:]
    # In that order: the archive first, then the state file that claims it, then the clients.
    assert out.index("archive flushed") < saved.start() < out.index("clients disconnected")
