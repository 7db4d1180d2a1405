"""`certlake serve --edge`: one ingest node relays to a real `nats-server -js`, edges serve
WebSocket clients from it; real processes, real clients decoding every frame. Cursors are the
relay's sequence on every edge: a client cut from one edge resumes on another and misses
nothing; an edge killed and restarted, or NATS restarted, loses and repeats nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from support.nats import NatsServer
from support.procs import Proc, Procs, server_config

pytestmark = pytest.mark.cluster

Got = list[tuple[int, str, int]]  # (cursor, log URL, cert_index) per certificate message


def _cluster(
    procs: Procs, tmp_path: Path, nats: NatsServer, edges: int, **stream: Any
) -> tuple[Proc, list[Proc]]:
    nats.start()
    log = procs.testlog("--rate", "30", "--initial-size", "20", "--seed", "9")
    config = server_config(
        tmp_path,
        f"{log.url}/log_list.json",
        stream={"nats_url": nats.url, "build_workers": 0, **stream},
    )
    ingest = procs.serve(config)
    return ingest, [procs.serve(config, "--edge") for _ in range(edges)]


async def _frames(url: str, seconds: float) -> AsyncIterator[dict[str, Any]]:
    """Every message of the WebSocket at `url` for `seconds`, decoded."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            yield orjson.loads(msg.data)


async def _read(
    base: str, seconds: float, since: int | None = None, notices: list[dict[str, Any]] | None = None
) -> Got:
    """The certificate messages read from `base` over `seconds`; other messages than heartbeats
    go to `notices` (none are allowed without it)."""
    url = base.replace("http", "ws", 1) + "/" + ("" if since is None else f"?since={since}")
    got: Got = []
    async for doc in _frames(url, seconds):
        if doc.get("message_type") == "certificate_update":
            data = doc["data"]
            got.append((data["cursor"], data["source"]["url"], data["cert_index"]))
        elif notices is not None and doc.get("message_type") != "heartbeat":
            notices.append(doc)
        else:
            assert doc.get("message_type") == "heartbeat", doc
    return got


def read(
    base: str, seconds: float, since: int | None = None, notices: list[dict[str, Any]] | None = None
) -> Got:
    return asyncio.run(_read(base, seconds, since, notices))


def _assert_whole(got: Got) -> None:
    """Cursors consecutive (nothing lost or repeated); each log's indices consecutive too."""
    cursors = [c for c, _, _ in got]
    assert cursors and cursors == list(range(cursors[0], cursors[0] + len(cursors))), cursors
    by_log: dict[str, list[int]] = defaultdict(list)
    for _, url, index in got:
        by_log[url].append(index)
    for url, indices in by_log.items():
        assert indices == list(range(indices[0], indices[0] + len(indices))), (url, indices)


def test_two_edges_serve_the_same_stream_with_the_same_cursors(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    _, (a, b) = _cluster(procs, tmp_path, nats, edges=2)

    async def both() -> tuple[Got, Got]:
        return await asyncio.gather(_read(a.url, 4), _read(b.url, 4))

    got_a, got_b = asyncio.run(both())
    _assert_whole(got_a)
    _assert_whole(got_b)
    common = {c for c, _, _ in got_a} & {c for c, _, _ in got_b}
    assert len(common) > 50
    assert {g for g in got_a if g[0] in common} == {g for g in got_b if g[0] in common}


def test_a_client_cut_from_one_edge_resumes_on_another_missing_nothing(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    _, (a, b) = _cluster(procs, tmp_path, nats, edges=2)
    first = read(a.url, 2)
    time.sleep(2)  # the client is away; the stream goes on
    second = read(b.url, 2, since=first[-1][0])
    _assert_whole(first + second)
    assert len(second) > 40  # what it missed while away came first


def test_a_cursor_older_than_the_edges_ring_is_served_from_the_streams_retention(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    """Edges keep 20 messages (under a second at 30/s); the stream keeps an hour."""
    _, (a, b) = _cluster(procs, tmp_path, nats, edges=2, resume_ring_size=20)
    first = read(a.url, 1)
    time.sleep(3)
    notices: list[dict[str, Any]] = []
    second = read(b.url, 2, since=first[-1][0], notices=notices)
    assert notices == []
    _assert_whole(first + second)
    assert len(second) > 80  # three seconds' worth, well past the ring, came first


def test_a_cursor_past_the_streams_retention_is_told_its_exact_loss(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    """The stream keeps a second of messages, the edge's ring 20: a client away for 4 s is
    told exactly how many it lost, then gets everything from the oldest still held. (Retention
    goes on while the edge reads it for the client: what expires between finding the oldest and
    reading it is a second notice, following on from the first.)"""
    _, (a,) = _cluster(procs, tmp_path, nats, edges=1, resume_ring_size=20, nats_max_age_secs=1)
    first = read(a.url, 1)
    since = first[-1][0]
    time.sleep(4)
    notices: list[dict[str, Any]] = []
    second = read(a.url, 2, since=since, notices=notices)
    assert notices and all(n["message_type"] == "resume_gap" for n in notices), notices
    for before, gap in zip([{"oldest_cursor": since + 1}, *notices], notices, strict=False):
        assert gap["since"] == before["oldest_cursor"] - 1, notices
        assert gap["lost"] == gap["oldest_cursor"] - gap["since"] - 1, notices
    assert second[0][0] == notices[-1]["oldest_cursor"]
    assert sum(n["lost"] for n in notices) > 60  # about 3 of the 4 seconds away
    cursors = [c for c, _, _ in second]
    assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))


def test_a_client_moving_to_an_edge_that_lags_waits_for_it_no_duplicates(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    """Edge B is frozen (SIGSTOP) for 2 s while the client reads A; the client moves to B the
    moment it thaws, with a cursor B has not read yet: it gets what follows, not a
    `resume_ahead` and a replay of what it had."""
    _, (a, b) = _cluster(procs, tmp_path, nats, edges=2)
    b.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.5)
        first = read(a.url, 1.5)
    finally:
        b.popen.send_signal(signal.SIGCONT)
    notices: list[dict[str, Any]] = []
    second = read(b.url, 2, since=first[-1][0], notices=notices)
    assert notices == []
    _assert_whole(first + second)


def test_an_edge_killed_and_nats_restarted_lose_and_repeat_nothing(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    ingest, (a,) = _cluster(procs, tmp_path, nats, edges=1)
    first = read(a.url, 2)
    a.kill9()
    config = server_config(
        tmp_path, ingest_list(ingest), stream={"nats_url": nats.url, "build_workers": 0}
    )
    a = procs.serve(config, "--edge")
    second = read(a.url, 2, since=first[-1][0])
    nats.stop()
    time.sleep(2)  # the ingest node buffers, the edge waits
    nats.start()
    third = read(a.url, 4, since=second[-1][0])
    _assert_whole(first + second + third)
    assert len(third) > 60


def ingest_list(ingest: Proc) -> str:
    """The log list the ingest node was started with (its config file)."""
    config: dict[str, Any] = yaml.safe_load((ingest.log.parent / "config.yaml").read_text())
    return str(config["ct_logs_url"])


def _no_cursor(doc: dict[str, Any]) -> dict[str, Any]:
    """A message without its cursor (the ingest node's own hub numbers its clients' messages;
    edges number by the stream's sequence), everything else as it was built."""
    doc = {k: v for k, v in doc.items() if k != "cursor"}
    if isinstance(doc.get("data"), dict):
        doc["data"] = {k: v for k, v in doc["data"].items() if k != "cursor"}
    return doc


async def _messages(base: str, path: str, seconds: float) -> dict[Any, Any]:
    """The certificate messages of `base` + `path` over `seconds`, by (log URL, index); on
    domains-only, which carries neither, by its names and their count so far."""
    out: dict[Any, Any] = {}
    async for doc in _frames(base.replace("http", "ws", 1) + path, seconds):
        if doc["message_type"] == "heartbeat":
            continue
        data = doc["data"]
        if isinstance(data, dict):  # lite and full
            key: Any = (data["source"]["url"], data["cert_index"])
            assert key not in out, key
        else:  # the same names come from several logs (a certificate and its precert)
            key = (tuple(data), sum(1 for k in out if k[0] == tuple(data)))
        out[key] = doc
    return out


def test_an_edge_serves_every_stream_filters_and_http_as_the_ingest_node_does(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    """The same seconds read from the ingest node and from an edge, on every stream and with
    filters: each message the two both sent is byte for byte the same but for its cursor, and
    the edge sent nearly all of the ingest node's; SSE, /latest.json and the page on the edge."""
    ingest, (edge,) = _cluster(procs, tmp_path, nats, edges=1)
    paths = ["/", "/full-stream", "/domains-only", "/?update_type=PrecertLogEntry"]

    async def both() -> list[dict[tuple[str, int], Any]]:
        return await asyncio.gather(
            *(_messages(base, p, 4) for p in paths for base in (ingest.url, edge.url))
        )

    got = asyncio.run(both())
    for i, path in enumerate(paths):
        on_ingest, on_edge = got[2 * i], got[2 * i + 1]
        common = on_ingest.keys() & on_edge.keys()
        assert len(common) > 60 and len(common) >= 0.8 * len(on_ingest), (path, len(common))
        for key in common:
            assert _no_cursor(on_edge[key]) == _no_cursor(on_ingest[key]), (path, key)
    precerts = got[7].values()
    assert precerts and all(m["data"]["update_type"] == "PrecertLogEntry" for m in precerts)
    assert len(got[7]) < len(got[1])  # the filter held something back

    async def http() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(edge.url + "/latest.json") as resp:
                latest = (await resp.json())["messages"]
            assert len(latest) == 25
            cursors = [m["data"]["cursor"] for m in latest]
            assert cursors == list(range(cursors[0], cursors[0] - 25, -1))
            async with session.get(edge.url + "/sse?stream=full") as resp:
                assert resp.content_type == "text/event-stream"
                event: dict[str, str] = {}
                while "data" not in event or "id" not in event:
                    line = (await resp.content.readline()).decode().rstrip("\n")
                    if line and not line.startswith(":"):
                        field, _, value = line.partition(": ")
                        event[field] = value
                doc = orjson.loads(event["data"])
                if doc["message_type"] == "certificate_update":
                    assert int(event["id"]) == doc["data"]["cursor"] >= cursors[0] - 25
                    assert "as_der" in doc["data"]["leaf_cert"]
            async with session.get(edge.url + "/", headers={"Accept": "text/html"}) as resp:
                assert resp.status == 200 and resp.content_type == "text/html"

    asyncio.run(http())
