"""Resume and de-duplication end to end: the built-in test log, the real server application, real
WebSocket clients.

- A client that disconnects while 1,000 entries flow and reconnects with `since` gets each of
  them exactly once, then the live stream (real `certlake testlog` and `certlake serve`).
- A cursor from before a restart, and one older than the ring, are answered with `resume_gap`.
- `dedupe=1`: a certificate logged to both test logs reaches the client once (twice without
  dedupe), and so does a precertificate followed by its final certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from certlake.config import parse_config
from certlake.ct.client.http import CTHttp
from certlake.ingest.fleet import Fleet
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import Pipeline
from certlake.server.app import build_app
from certlake.stream.fanout import Fanout
from certlake.stream.hub import HubConfig
from certlake.testlog.certs import CertFactory
from certlake.testlog.pool import logged
from certlake.testlog.server import TestLogServer
from support.procs import Procs, server_config
from support.waiting import until

pytestmark = pytest.mark.timeout(90)

Doc = dict[str, Any]


async def log_cursors(server: str) -> dict[str, int | None]:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{server}/api/logs") as r:
            doc = await r.json()
    except aiohttp.ClientError:
        return {}
    return {log["url"]: log["cursor"] for log in doc["logs"]}


def at(server: str, size: int) -> Callable[[], Awaitable[bool]]:
    """Both watchers have read their log up to `size` entries."""

    async def probe() -> bool:
        cursors = await log_cursors(server)
        return len(cursors) == 2 and all(c == size for c in cursors.values())

    return probe


async def grow(testlog: str, n: int) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{testlog}/admin/grow?n={n}") as r:
        assert r.status == 200, await r.text()


class Reader:
    """A WebSocket client that keeps every document it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.docs: list[Doc] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            self.docs.append(orjson.loads(msg.data))

    @property
    def certs(self) -> list[Doc]:
        return [d for d in self.docs if d["message_type"] == "certificate_update"]

    async def wait_for(self, n: int, limit: float = 30) -> None:
        async def enough() -> bool:
            return len(self.certs) >= n

        await until(enough, limit, f"{n} certificates (have {len(self.certs)})")

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def reader(session: aiohttp.ClientSession, url: str) -> AsyncIterator[Reader]:
    r = Reader(await session.ws_connect(url, heartbeat=None))
    try:
        yield r
    finally:
        await r.close()


async def test_reconnecting_with_since_delivers_every_missed_entry_once_then_live(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "10", "--seed", "31")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    await until(at(server.url, 10), 30, "watchers at the tree head")
    ws_url = server.url.replace("http", "ws", 1) + "/full-stream"
    async with aiohttp.ClientSession() as session:
        async with reader(session, ws_url) as first:
            await grow(testlog.url, 5)
            await first.wait_for(10)
        last = first.certs[-1]["data"]["cursor"]
        seen_before = {(d["data"]["source"]["url"], d["data"]["cert_index"]) for d in first.certs}

        # Disconnected while 1,000 entries flow: 500 in each of the two logs.
        for _ in range(4):
            await grow(testlog.url, 125)
        await until(at(server.url, 515), 60, "the server to stream the 1,000 entries")

        async with reader(session, f"{ws_url}?since={last}") as second:
            await grow(testlog.url, 20)  # live entries, logged while it is catching up
            await second.wait_for(1040, limit=60)
            await asyncio.sleep(0.5)  # a duplicate, if any, would arrive now

    docs = second.docs
    assert all(d["message_type"] in ("certificate_update", "heartbeat") for d in docs)
    cursors = [d["data"]["cursor"] for d in second.certs]
    # Every cursor after `since`, in order, each once: nothing lost and nothing twice, across
    # the seam between the replay and the live stream.
    assert cursors == list(range(last + 1, last + 1 + 1040))
    entries = Counter((d["data"]["source"]["url"], d["data"]["cert_index"]) for d in second.certs)
    assert max(entries.values()) == 1
    assert not set(entries) & seen_before
    for url in await log_cursors(server.url):
        assert sorted(i for u, i in entries if u == url) == list(range(15, 535))


async def test_a_cursor_from_before_a_restart_is_answered_with_an_uncountable_gap(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "4", "--seed", "32")
    config = server_config(tmp_path, f"{testlog.url}/log_list.json")
    server = procs.serve(config)
    await until(at(server.url, 4), 30, "watchers at the tree head")
    async with aiohttp.ClientSession() as session:
        async with reader(session, server.url.replace("http", "ws", 1) + "/") as before:
            await grow(testlog.url, 3)
            await before.wait_for(6)
        old = before.certs[-1]["data"]["cursor"]
        server.stop()

        server = procs.serve(config)
        await until(at(server.url, 7), 30, "the restarted watchers")
        url = server.url.replace("http", "ws", 1) + f"/?since={old}"
        async with reader(session, url) as after:
            await grow(testlog.url, 2)
            await after.wait_for(4)
    gap = after.docs[0]
    assert gap["message_type"] == "resume_gap"
    assert gap["since"] == old and gap["lost"] is None
    # Then what the new run's ring holds, and the live stream: contiguous cursors, all above
    # the old run's, so an old cursor never stands for a new message.
    cursors = [d["data"]["cursor"] for d in after.certs]
    assert cursors == list(range(gap["oldest_cursor"], gap["oldest_cursor"] + len(cursors)))
    assert gap["oldest_cursor"] > old


FAST_CT = {
    "poll_interval_ms": 20,
    "retry_initial_delay_ms": 10,
    "retry_max_delay_ms": 50,
    "default_operator_rate_limit_ms": 0,
    "state_file": None,
}


async def test_a_cursor_older_than_the_ring_is_told_what_was_lost() -> None:
    # The server application in process, so that the ring can be small.
    async with TestLogServer(seed=33, sequence_interval=0) as ctlog:
        config = parse_config({"ct_logs_url": ctlog.log_list_url, "ct_log": FAST_CT}, {})
        metrics = IngestMetrics(CollectorRegistry())
        fanout = Fanout(HubConfig(resume_ring=30))
        pipeline = Pipeline(metrics, fanout.publish, None)
        async with CTHttp(timeout=2) as http:
            fleet = Fleet(config, http, pipeline.consumer, metrics, None)
            app = build_app(config, pipeline, fleet, fanout, metrics)
            async with TestServer(app) as web_server, aiohttp.ClientSession() as session:
                fanout.start()
                try:
                    await fleet.refresh()
                    watched = list(fleet.watched.values())
                    assert len(watched) == 2
                    await until(
                        lambda: all(w.watcher.status.cursor is not None for w in watched),
                        10,
                        "watchers at the tree head",
                    )
                    base = str(web_server.make_url("/")).replace("http", "ws", 1)
                    async with reader(session, base) as first:
                        ctlog.grow(2)
                        await first.wait_for(4)
                    since = first.certs[-1]["data"]["cursor"]
                    ctlog.grow(25)  # 50 messages: the oldest 20 fall out of the ring of 30
                    await until(lambda: pipeline.processed == 54, 20, "50 more messages")
                    async with reader(session, f"{base}?since={since}") as second:
                        await second.wait_for(30)
                        await asyncio.sleep(0.2)
                finally:
                    fanout.stop()
                    await fleet.stop()
    assert second.docs[0] == {
        "message_type": "resume_gap",
        "since": since,
        "oldest_cursor": since + 21,
        "lost": 20,
    }
    assert [d["data"]["cursor"] for d in second.certs] == list(range(since + 21, since + 51))


async def test_dedupe_sends_a_certificate_once_across_logs_and_precert_then_final(
    procs: Procs, tmp_path: Path
) -> None:
    factory = CertFactory(seed=34)
    spec = factory.random_spec(sans=2)
    pair = [logged(factory.issue_precert(spec)), logged(factory.issue(spec))]
    async with TestLogServer(seed=35, sequence_interval=0) as ctlog:
        server = await asyncio.to_thread(procs.serve, server_config(tmp_path, ctlog.log_list_url))
        await until(at(server.url, 0), 30, "watchers at the tree head")
        ws = server.url.replace("http", "ws", 1)
        async with (
            aiohttp.ClientSession() as session,
            reader(session, f"{ws}/") as plain,
            reader(session, f"{ws}/?dedupe=1") as dedupe,
            reader(session, f"{ws}/?dedupe=1&domain=*.{spec.dns_names[0]}") as narrow,
        ):
            ctlog.grow(5)  # five certificates, each in both logs
            ctlog.add(pair[:1])  # the precertificate, in both logs
            ctlog.add(pair[1:])  # then its final certificate, in both logs
            await plain.wait_for(14)
            await dedupe.wait_for(6)
            await narrow.wait_for(1)
            await asyncio.sleep(0.5)  # a duplicate, if any, would arrive now

            # Filters are checked before the upgrade by the real server too.
            async with session.get(
                f"{server.url}/?domain=re:(a%2B)%2B$",
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            ) as refused:
                assert refused.status == 400
                assert "refused" in (await refused.json())["error"]

    def identity(d: Doc) -> tuple[str, str]:
        leaf = d["data"]["leaf_cert"]
        return leaf["serial_number"], leaf["issuer"]["aggregated"]

    assert len(plain.certs) == 14
    hashes = Counter(d["data"]["leaf_cert"]["sha256"] for d in plain.certs)
    assert sorted(hashes.values()) == [2] * 7  # each certificate from each of the two logs
    assert len(dedupe.certs) == 6
    assert len({identity(d) for d in dedupe.certs}) == 6
    assert {d["data"]["leaf_cert"]["sha256"] for d in dedupe.certs} < set(hashes)
    # Of the pair, the precertificate came first and the final certificate was dropped.
    assert dedupe.certs[-1]["data"]["update_type"] == "PrecertLogEntry"
    assert [d["data"]["update_type"] for d in narrow.certs] == ["PrecertLogEntry"]
    assert identity(narrow.certs[0]) == identity(dedupe.certs[-1])
