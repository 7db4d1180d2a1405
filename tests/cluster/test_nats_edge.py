"""`certlake serve --edge`: one ingest node relays to a real `nats-server -js`, edges serve
WebSocket clients from it; real processes, real clients decoding every frame. Cursors are the
relay's sequence on every edge: a client cut from one edge resumes on another and misses
nothing; an edge killed and restarted, or NATS restarted, loses and repeats nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
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


async def _read(
    base: str, seconds: float, since: int | None = None, notices: list[dict[str, Any]] | None = None
) -> Got:
    """The certificate messages read from `base` over `seconds`; other messages than heartbeats
    go to `notices` (none are allowed without it)."""
    url = base.replace("http", "ws", 1) + "/" + ("" if since is None else f"?since={since}")
    got: Got = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            doc: dict[str, Any] = orjson.loads(msg.data)
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
    told exactly how many it lost, then gets everything from the oldest still held."""
    _, (a,) = _cluster(procs, tmp_path, nats, edges=1, resume_ring_size=20, nats_max_age_secs=1)
    first = read(a.url, 1)
    since = first[-1][0]
    time.sleep(4)
    notices: list[dict[str, Any]] = []
    second = read(a.url, 2, since=since, notices=notices)
    assert len(notices) == 1, notices
    gap = notices[0]
    assert gap["message_type"] == "resume_gap" and gap["since"] == since
    assert second[0][0] == gap["oldest_cursor"] and gap["lost"] == gap["oldest_cursor"] - since - 1
    assert gap["lost"] > 60  # about 3 of the 4 seconds away
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
