"""The live server's HTTP side over real loopback sockets: a real Fleet watching the built-in test
log feeds a real Pipeline, and aiohttp's test server serves `build_app` to a real client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.compute as pc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from certlake.certs.certificate import colon_hex
from certlake.certs.message import CertMessage
from certlake.config import Config, parse_config
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.http import CTHttp
from certlake.ct.health import Health
from certlake.ingest.fleet import Fleet
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import LATEST, Pipeline
from certlake.lake.sink import DeltaSink
from certlake.query.spec import Cursor, DomainFilter, Query
from certlake.rates import RateMeter
from certlake.server.app import (
    GUARD,
    build_app,
    is_cert_key,
    latest_document,
    overall_health,
)
from certlake.server.archive_api import ArchiveApi
from certlake.server.guard import ConnectionLimiter
from certlake.stream.fanout import Fanout
from certlake.stream.hub import HubConfig, StreamKind
from certlake.stream.resume import stamp_cursor
from certlake.testlog.server import TestLogServer
from support.waiting import until

pytestmark = pytest.mark.timeout(60)

FAST_CT = {
    "poll_interval_ms": 20,
    "retry_max_attempts": 1,
    "retry_initial_delay_ms": 10,
    "retry_max_delay_ms": 10,
    "request_timeout_secs": 2,
    "unhealthy_threshold": 1,
    "health_check_interval_secs": 1,
    "default_operator_rate_limit_ms": 0,
    "state_file": None,
}


@pytest.fixture
async def ctlog() -> AsyncIterator[TestLogServer]:
    async with TestLogServer(seed=11, pool_size=40, sequence_interval=0) as srv:
        yield srv


def make_config(ct_logs_url: str, **sections: Any) -> Config:
    """A config validated the way `certlake serve` validates one."""
    doc: dict[str, Any] = {"ct_logs_url": ct_logs_url, "ct_log": FAST_CT}
    doc.update(sections)
    return parse_config(doc, {})


@dataclass
class Live:
    config: Config
    pipeline: Pipeline
    fleet: Fleet
    fanout: Fanout
    app: web.Application
    client: TestClient[Any, Any]

    async def get_json(self, path: str, status: int = 200, **kw: Any) -> Any:
        async with self.client.get(path, **kw) as resp:
            assert resp.status == status, await resp.text()
            assert resp.content_type == "application/json"
            return await resp.json()


@contextlib.asynccontextmanager
async def live(config: Config, sink: DeltaSink | None = None) -> AsyncIterator[Live]:
    metrics = IngestMetrics(CollectorRegistry())
    # Short heartbeats so an SSE client's departure is noticed (and its slot freed) quickly.
    fanout = Fanout(HubConfig(heartbeat_interval=0.1, tick=0.02))

    def publish(msg: CertMessage) -> int:
        return fanout.publish(msg)

    pipeline = Pipeline(metrics, publish, sink, config.api.cache_capacity)
    async with CTHttp(timeout=2) as http:
        fleet = Fleet(config, http, pipeline.consumer, metrics, None)
        app = build_app(
            config, pipeline, fleet, fanout, metrics, sink=sink, rate_sample_interval=0.02
        )
        async with TestClient(TestServer(app)) as client:
            fanout.start()
            try:
                yield Live(config, pipeline, fleet, fanout, app, client)
            finally:
                fanout.stop()
                await fleet.stop()


async def watching(lv: Live, ctlog: TestLogServer, grow: int) -> None:
    """Start the fleet on the test log's list, then log `grow` new certificates in each log and
    wait until the pipeline has them all."""
    await lv.fleet.refresh()
    assert len(lv.fleet.watched) == 2
    await until(lambda: all(w.watcher.status.cursor is not None for w in _watched(lv)))
    ctlog.grow(grow)
    await until(lambda: lv.pipeline.processed == 2 * grow)


def _watched(lv: Live) -> list[Any]:
    return list(lv.fleet.watched.values())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- pure helpers ---------------------------------------------------------------------------


def test_rate_meter() -> None:
    meter = RateMeter(window=10.0)
    assert meter.rate() == 0.0
    meter.observe(100.0, 0)
    assert meter.rate() == 0.0  # one sample is no rate
    for t in range(1, 31):
        meter.observe(100.0 + t, 50 * t if t <= 20 else 1000)  # 50/s for 20 s, then nothing
    # The window is the last 10 s, all of them idle.
    assert meter.rate() == 0.0
    meter.observe(135.0, 1100)
    assert meter.rate() == pytest.approx(100 / 10)  # samples at 125 and 135


@settings(deadline=None)  # the machine is shared: wall-clock deadlines flake
@given(st.lists(st.sampled_from(list(Health)), max_size=12))
def test_overall_health(states: list[Health]) -> None:
    verdict = overall_health(states)
    unhealthy = states.count(Health.UNHEALTHY)
    assert (verdict is Health.UNHEALTHY) == (not states or unhealthy > len(states) / 2)
    assert (verdict is Health.HEALTHY) == (bool(states) and set(states) == {Health.HEALTHY})
    # A failing archive makes it degraded at worst: never unhealthy by itself, never healthy.
    failing = overall_health(states, archive_failing=True)
    assert failing is (Health.UNHEALTHY if verdict is Health.UNHEALTHY else Health.DEGRADED)


def test_latest_document_keeps_the_bytes() -> None:
    msgs = [b'{"a":1.50}\n', b'{"b":"\\u003c"}\n']
    doc = latest_document(msgs)
    assert doc == b'{"messages":[{"a":1.50},{"b":"\\u003c"}]}'
    assert json.loads(doc) == {"messages": [{"a": 1.5}, {"b": "<"}]}
    assert json.loads(latest_document([])) == {"messages": []}


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("ab" * 32, True),
        ("AB" * 20, True),
        (":".join(["0F"] * 32), True),
        ("ab" * 31, False),
        ("zz" * 32, False),
        ("", False),
    ],
)
def test_is_cert_key(key: str, ok: bool) -> None:
    assert is_cert_key(key) is ok


# --- messages -------------------------------------------------------------------------------


async def test_before_the_first_message(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        body = await lv.get_json("/example.json", 503)
        assert "error" in body
        assert await lv.get_json("/latest.json") == {"messages": []}


async def test_example_latest_and_cert_lookup(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        await watching(lv, ctlog, 30)
        newest = lv.pipeline.latest[-1]
        assert newest.cursor == lv.fanout.hub.seq

        async with lv.client.get("/example.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            # The stream's own bytes, its cursor included.
            assert await resp.read() == stamp_cursor(newest.message.lite, newest.cursor)
        example = json.loads(newest.message.lite)
        assert example["message_type"] == "certificate_update"
        assert "chain" not in example["data"] and "as_der" not in example["data"]["leaf_cert"]

        latest = await lv.get_json("/latest.json")
        messages = latest["messages"]
        assert len(messages) == LATEST
        assert messages[0] == {**example, "data": {"cursor": newest.cursor, **example["data"]}}
        # Newest first, each with the cursor it had on the stream: `since=` the first one
        # continues right after them.
        cursors = [m["data"]["cursor"] for m in messages]
        assert cursors == list(range(lv.fanout.hub.seq, lv.fanout.hub.seq - LATEST, -1))
        seen = [m["data"]["seen"] for m in messages]
        assert seen == sorted(seen, reverse=True)
        assert all("chain" not in m["data"] for m in messages)

        # Look up the newest entry of the RFC 6962 log by hashes computed here from its DER.
        log = ctlog.logs["rfc6962"]
        der = log.cert_at(log.size - 1).cert_der
        sha256 = hashlib.sha256(der).hexdigest()
        sha1 = hashlib.sha1(der).hexdigest()
        colons = ":".join(sha1[i : i + 2] for i in range(0, 40, 2)).upper()
        for key in (sha256, sha256.upper(), sha1, colons):
            async with lv.client.get(f"/api/cert/{key}") as resp:
                assert resp.status == 200, key
                full = json.loads(await resp.read())
            assert base64.b64decode(full["data"]["leaf_cert"]["as_der"]) == der
            assert full["data"]["chain"]  # the full message, chain included

        missing = await lv.get_json("/api/cert/" + "ab" * 32, 404)
        assert "error" in missing
        bad = await lv.get_json("/api/cert/not-a-hash", 400)
        assert "error" in bad


# --- health ---------------------------------------------------------------------------------


async def test_health_is_plain_ok(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv, lv.client.get("/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        assert await resp.text() == "OK"


async def test_deep_health_of_healthy_logs(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        await watching(lv, ctlog, 3)
        body = await lv.get_json("/health/deep")
        assert body["status"] == "healthy"
        assert body["log_list_error"] is None
        by_url = {row["url"]: row for row in body["logs"]}
        assert set(by_url) == {ctlog.rfc6962_url, ctlog.static_url}
        for row in by_url.values():
            assert row["health"] == "healthy"
            assert row["lag"] == 0
            assert row["last_error"] is None
            assert row["last_success"] <= time.time()
            assert row["name"].startswith("certlake test log")
        assert body["archive"] == {"enabled": False}


async def test_deep_health_of_a_failing_archive(ctlog: TestLogServer, tmp_path: Path) -> None:
    (tmp_path / "file").touch()  # a table "under" a regular file cannot be created
    sink = DeltaSink(
        str(tmp_path / "file" / "archive"),
        registry=CollectorRegistry(),
        flush_interval=0.05,
        retry=RetryPolicy(initial_delay=0.05, max_delay=0.1),
        close_timeout=0.2,
    )
    await sink.start()
    try:
        async with live(make_config(ctlog.log_list_url), sink) as lv:
            await watching(lv, ctlog, 3)
            await until(lambda: sink.stats.failing, what="a failed archive write")
            body = await lv.get_json("/health/deep")
    finally:
        await sink.close()
    # The stream goes on and the rows are kept: degraded, not unhealthy.
    assert body["status"] == "degraded"
    archive = body["archive"]
    assert archive["enabled"] is True and archive["failing"] is True
    assert "Not a directory" in archive["last_error"]
    assert archive["last_commit"] is None
    assert archive["buffered_records"] == 6  # three new certificates in each log
    assert archive["records_written"] == 0 and archive["write_errors"] >= 1


@pytest.mark.parametrize(("dead", "status", "http"), [(1, "degraded", 200), (2, "degraded", 200)])
async def test_deep_health_with_some_dead_logs(
    ctlog: TestLogServer, dead: int, status: str, http: int
) -> None:
    """Two live logs plus `dead` unreachable ones: up to half unhealthy is still served 200."""
    await _deep_health_with_dead_logs(ctlog, dead, status, http)


async def test_deep_health_503_when_most_logs_are_dead(ctlog: TestLogServer) -> None:
    await _deep_health_with_dead_logs(ctlog, 3, "unhealthy", 503)


async def _deep_health_with_dead_logs(
    ctlog: TestLogServer, dead: int, status: str, http: int
) -> None:
    port = closed_port()
    custom = [{"name": f"dead {i}", "url": f"http://127.0.0.1:{port}/dead{i}"} for i in range(dead)]
    async with live(make_config(ctlog.log_list_url, custom_logs=custom)) as lv:
        await lv.fleet.refresh()
        assert len(lv.fleet.watched) == 2 + dead
        await until(
            lambda: all(
                w.watcher.health.state.value == ("unhealthy" if "dead" in w.info.url else "healthy")
                and (w.watcher.status.last_success or w.watcher.health.total_failures)
                for w in _watched(lv)
            )
        )
        body = await lv.get_json("/health/deep", http)
        assert body["status"] == status
        rows = {row["url"]: row for row in body["logs"]}
        for i in range(dead):
            row = rows[f"http://127.0.0.1:{port}/dead{i}"]
            assert row["health"] == "unhealthy"
            assert row["last_error"]
            assert row["last_success"] is None


async def test_deep_health_503_when_nothing_is_watched(tmp_path: Any) -> None:
    missing = (tmp_path / "no-such-list.json").as_uri()
    async with live(make_config(missing)) as lv:
        await lv.fleet.refresh()
        body = await lv.get_json("/health/deep", 503)
        assert body["status"] == "unhealthy"
        assert body["logs"] == []
        assert body["log_list_error"]


# --- metrics, stats, logs -------------------------------------------------------------------


async def test_metrics(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        await watching(lv, ctlog, 5)
        ws = await lv.client.ws_connect("/full-stream")
        await until(lambda: lv.fanout.hub.stats.clients[StreamKind.FULL] == 1)
        async with lv.client.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = await resp.text()
        await ws.close()
        lines = set(text.splitlines())
        assert "certlake_messages_published_total 10.0" in lines
        assert f'certlake_log_entries_total{{log="{ctlog.rfc6962_url}"}} 5.0' in lines
        assert f'certlake_log_lag_entries{{log="{ctlog.static_url}"}} 0.0' in lines
        assert 'certlake_stream_clients{stream="full"} 1.0' in lines
        assert 'certlake_stream_clients{stream="lite"} 0.0' in lines
        assert 'certlake_requests_refused_total{reason="unauthorized"} 0.0' in lines
        assert f'certlake_log_lag_seconds{{log="{ctlog.static_url}"}} 0.0' in lines
        assert f'certlake_log_answer_cap{{log="{ctlog.static_url}"}} 256.0' in lines
        operator = next(iter(lv.fleet.budgets))
        assert f'certlake_operator_refused_total{{operator="{operator}"}} 0.0' in lines
        assert any(
            line.startswith(f'certlake_operator_requests_per_second{{operator="{operator}"}}')
            for line in lines
        )


async def test_stats(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        ws = await lv.client.ws_connect("/")
        await watching(lv, ctlog, 20)
        await until(lambda: lv.fanout.hub.stats.published == 40)
        stats = await lv.get_json("/api/stats")
        while stats["messages_per_second"] == 0:  # until the meter's next sample
            await asyncio.sleep(0.02)
            stats = await lv.get_json("/api/stats")
        await ws.close()
        assert stats["entries_processed"] == 40
        assert stats["messages_published"] == 40
        assert stats["messages_dropped"] == 0
        assert 0 < stats["uptime_seconds"] < 60
        assert stats["messages_per_second"] > 0
        assert stats["clients"] == {"full": 0, "lite": 1, "domains": 0, "total": 1}
        assert stats["logs"] == {
            "watched": 2,
            "healthy": 2,
            "degraded": 0,
            "unhealthy": 0,
            "behind": 0,
        }
        assert stats["limited_connections"] is None  # connection limits are off
        assert stats["refused"] == {
            "unauthorized": 0,
            "rate_limited": 0,
            "server_full": 0,
            "client_full": 0,
        }


async def test_logs(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url)) as lv:
        await watching(lv, ctlog, 7)
        body = await lv.get_json("/api/logs")
        assert body["log_list"]["url"] == ctlog.log_list_url
        assert body["log_list"]["error"] is None
        assert body["log_list"]["fetched_at"] <= time.time()
        rows = {row["kind"]: row for row in body["logs"]}
        assert set(rows) == {"rfc6962", "tiled"}
        for kind, url, name in (
            ("rfc6962", ctlog.rfc6962_url, "rfc6962"),
            ("tiled", ctlog.static_url, "static"),
        ):
            row = rows[kind]
            size = ctlog.logs[name].size
            assert row["url"] == url
            assert (row["tree_size"], row["cursor"], row["lag"]) == (size, size, 0)
            assert (row["entries"], row["unparseable"]) == (7, 0)
            assert row["health"] == "healthy"
            assert row["operator"]
            assert (row["last_error"], row["total_failures"]) == (None, 0)
            assert (row["lag_entries"], row["lag_seconds"], row["behind"]) == (0, 0.0, False)
            assert row["cannot_keep_up"] is False
            # Tiles hold 256; the RFC 6962 log serves more than the 256 asked (batch_size).
            assert row["answer_cap"] == 256
            pacing = row["pacing"]
            assert pacing["requests"] > 0 and pacing["refused"] == 0
            assert 1 <= pacing["max_in_flight"] <= 8
        operators = body["operators"]
        assert set(operators) == {row["operator"] for row in body["logs"]}
        assert all(o["requests_per_second"] > 0 for o in operators.values())


# --- auth -----------------------------------------------------------------------------------


async def test_auth(ctlog: TestLogServer) -> None:
    auth = {"enabled": True, "tokens": ["s3cret"], "premium_tokens": ["gold"]}
    async with live(make_config(ctlog.log_list_url, auth=auth)) as lv:
        c = lv.client
        async with c.get("/health") as resp:
            assert resp.status == 200  # open for probes
        for path in ("/api/stats", "/health/deep", "/example.json", "/metrics"):
            async with c.get(path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert "error" in await resp.json()
        for headers, query in (
            ({"Authorization": "Bearer s3cret"}, ""),
            ({"Authorization": "s3cret"}, ""),
            ({"Authorization": "Bearer gold"}, ""),
            ({}, "?token=s3cret"),
        ):
            async with c.get("/api/stats" + query, headers=headers) as resp:
                assert resp.status == 200, (headers, query)
        for headers, query in (
            ({"Authorization": "Bearer s3cre"}, ""),
            ({"Authorization": "Basic s3cret"}, ""),
            ({}, "?token=S3CRET"),
        ):
            async with c.get("/api/stats" + query, headers=headers) as resp:
                assert resp.status == 401, (headers, query)
        # The WebSocket handshake is refused before the upgrade, and accepted with ?token=.
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await c.ws_connect("/")
        assert err.value.status == 401
        ws = await c.ws_connect("/?token=gold")
        await until(lambda: lv.fanout.hub.stats.clients[StreamKind.LITE] == 1)
        await ws.close()
        assert (await lv.get_json("/api/stats?token=gold"))["refused"]["unauthorized"] == 8


async def raw_get(lv: Live, target: bytes, headers: bytes) -> int:
    """The status of a GET written byte for byte: aiohttp's client will not send header bytes
    that are not UTF-8."""
    server = lv.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (target, headers)
        )
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    version, status, _ = answer.split(b" ", 2)
    assert version == b"HTTP/1.1", answer
    return int(status)


@pytest.mark.parametrize(
    "headers",
    [
        b"Authorization: Bearer \xff\xfe\r\n",
        b"Authorization: \xc3(\r\n",  # a bare token, and a broken UTF-8 sequence
        b"Authorization: Bearer s3cret\xff\r\n",  # a good token with a byte more
        b"X-Api-Key: \xff\r\n",
    ],
)
async def test_auth_undecodable_token_is_refused_without_a_traceback(
    ctlog: TestLogServer, caplog: pytest.LogCaptureFixture, headers: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    header_name = "X-Api-Key" if headers.startswith(b"X-Api-Key") else "Authorization"
    auth = {"enabled": True, "tokens": ["s3cret"], "header_name": header_name}
    async with live(make_config(ctlog.log_list_url, auth=auth)) as lv:
        assert await raw_get(lv, b"/api/stats", headers) == 401
        # the same path over the same raw socket is let in with the token
        token = f"{header_name}: s3cret\r\n".encode()
        assert await raw_get(lv, b"/api/stats", token) == 200
        assert lv.app[GUARD].stats.unauthorized == 1
    logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert logged == [], [r.getMessage() for r in logged]


async def test_auth_custom_header(ctlog: TestLogServer) -> None:
    auth = {"enabled": True, "tokens": ["s3cret"], "header_name": "X-Api-Key"}
    async with live(make_config(ctlog.log_list_url, auth=auth)) as lv:
        async with lv.client.get("/api/logs", headers={"X-Api-Key": "s3cret"}) as resp:
            assert resp.status == 200
        async with lv.client.get("/api/logs", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 401


async def test_auth_off_needs_no_token(ctlog: TestLogServer) -> None:
    async with live(make_config(ctlog.log_list_url, auth={"tokens": ["s3cret"]})) as lv:
        await lv.get_json("/api/stats")


# --- connection limits ----------------------------------------------------------------------


def _from(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def test_connection_limits(ctlog: TestLogServer) -> None:
    config = make_config(
        ctlog.log_list_url,
        trusted_proxies=["127.0.0.1/32"],  # the test client plays a proxy for several clients
        connection_limit={"enabled": True, "max_connections": 2, "per_ip_limit": 1},
    )
    async with live(config) as lv:
        c, hub, limiter = lv.client, lv.fanout.hub.stats, connection_limiter(lv)
        first = await c.ws_connect("/", headers=_from("198.51.100.1"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await c.ws_connect("/full-stream", headers=_from("198.51.100.1"))
        assert err.value.status == 429
        second = await c.ws_connect("/domains-only", headers=_from("198.51.100.2"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await c.ws_connect("/", headers=_from("198.51.100.3"))
        assert err.value.status == 503
        # Refused before the upgrade: the hub never saw the refused ones.
        assert sum(hub.clients.values()) == 2
        # Plain HTTP requests are not streaming connections and still get through.
        stats = await lv.get_json("/api/stats", headers=_from("198.51.100.1"))
        assert stats["limited_connections"] == 2
        assert stats["refused"]["client_full"] == 1 and stats["refused"]["server_full"] == 1

        await first.close()
        await until(lambda: limiter.total == 1)
        again = await c.ws_connect("/", headers=_from("198.51.100.1"))
        await again.close()
        await second.close()
        await until(lambda: limiter.total == 0 and sum(hub.clients.values()) == 0)


async def test_sse_counts_against_connection_limits(ctlog: TestLogServer) -> None:
    config = make_config(
        ctlog.log_list_url,
        trusted_proxies=["127.0.0.1/32"],
        connection_limit={"enabled": True, "per_ip_limit": 1},
    )
    async with live(config) as lv:
        limiter = connection_limiter(lv)
        sse = await lv.client.get("/sse?stream=domains", headers=_from("198.51.100.9"))
        assert sse.status == 200
        assert sse.headers["Content-Type"] == "text/event-stream"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await lv.client.ws_connect("/", headers=_from("198.51.100.9"))
        assert err.value.status == 429
        async with lv.client.get("/sse", headers=_from("198.51.100.9")) as resp:
            assert resp.status == 429
        sse.close()
        await until(lambda: limiter.total == 0)
        ws = await lv.client.ws_connect("/", headers=_from("198.51.100.9"))
        await ws.close()


def connection_limiter(lv: Live) -> ConnectionLimiter:
    limiter = lv.app[GUARD].connections
    assert limiter is not None
    return limiter


# --- rate limits ----------------------------------------------------------------------------


async def test_rate_limit(ctlog: TestLogServer) -> None:
    config = make_config(
        ctlog.log_list_url,
        trusted_proxies=["127.0.0.1/32"],
        auth={"premium_tokens": ["gold"]},
        rate_limit={"enabled": True, "free_max_tokens": 3, "free_refill_rate": 0.5},
    )
    async with live(config) as lv:
        c = lv.client
        for _ in range(3):
            await lv.get_json("/api/logs")
        async with c.get("/api/logs") as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
            assert "error" in await resp.json()
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await c.ws_connect("/")
        assert err.value.status == 429
        # Probes are never limited; other clients and other tiers have their own buckets.
        async with c.get("/health") as resp:
            assert resp.status == 200
        await lv.get_json("/api/logs", headers=_from("198.51.100.4"))
        for _ in range(10):
            await lv.get_json("/api/logs", headers={"Authorization": "Bearer gold"})
        assert (await lv.get_json("/api/stats?token=gold"))["refused"]["rate_limited"] == 2


# --- protocol switches ----------------------------------------------------------------------

ALL_PATHS = (
    "/",
    "/full-stream",
    "/domains-only",
    "/sse",
    "/example.json",
    "/latest.json",
    "/health",
    "/health/deep",
    "/metrics",
    "/api/stats",
    "/api/logs",
    "/api/cert/" + "ab" * 32,
)


async def test_everything_switched_off(ctlog: TestLogServer) -> None:
    off = dict.fromkeys(("websocket", "sse", "metrics", "health", "example_json", "api"), False)
    async with live(make_config(ctlog.log_list_url, protocols=off)) as lv:
        for path in ALL_PATHS:
            async with lv.client.get(path) as resp:
                assert resp.status == 404, path


async def test_streams_switched_separately(ctlog: TestLogServer) -> None:
    protocols = {"websocket": False, "api": False}
    async with live(make_config(ctlog.log_list_url, protocols=protocols)) as lv:
        for path in ("/", "/full-stream", "/domains-only", "/api/stats"):
            async with lv.client.get(path) as resp:
                assert resp.status == 404, path
        async with lv.client.get("/sse") as resp:
            assert resp.status == 200
        async with lv.client.get("/health") as resp:
            assert resp.status == 200
    async with live(make_config(ctlog.log_list_url, protocols={"sse": False})) as lv:
        async with lv.client.get("/sse") as resp:
            assert resp.status == 404
        ws = await lv.client.ws_connect("/domains-only")
        await ws.close()


# --- the archive: /api/query/certs and /api/cert from the archive ---------------------------


@contextlib.asynccontextmanager
async def archived(
    ctlog: TestLogServer, tmp_path: Path, grow: int, **sections: Any
) -> AsyncIterator[tuple[Live, str]]:
    """A live server whose sink archived `grow` new certificates of each test log, with the
    archive searchable."""
    table = str(tmp_path / "archive")
    sink = DeltaSink(table, registry=CollectorRegistry(), flush_interval=0.05)
    await sink.start()
    sections.setdefault("query_api", {"enabled": True, "table_path": table})
    config = make_config(ctlog.log_list_url, **sections)
    try:
        async with live(config, sink) as lv:
            await watching(lv, ctlog, grow)
            await sink.flush()
            await until(lambda: sink.stats.rows_written == 2 * grow, what="all rows archived")
            yield lv, table
    finally:
        await sink.close()


def naive_keys(table: str, query: Query) -> list[list[Any]]:
    rows = DeltaTable(table).to_pyarrow_table().to_pylist()
    keys = [
        [r["cert_index"], r["source_url"]]
        for r in rows
        if query.matches(r["all_domains"], r["issuer_aggregated"], r["seen_date"])
    ]
    return sorted(keys)


async def all_pages(lv: Live, params: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    results: list[dict[str, Any]] = []
    pages = 0
    version = None
    while True:
        body = await lv.get_json("/api/query/certs", params=params)
        pages += 1
        version = body["version"] if version is None else version
        assert body["version"] == version
        results.extend(body["results"])
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return results, pages
        params = {**params, "cursor": body["next_cursor"]}


async def test_query_api_answers_the_naive_scan_across_pages_and_logs(
    ctlog: TestLogServer, tmp_path: Path
) -> None:
    async with archived(ctlog, tmp_path, 12) as (lv, table):
        rows = DeltaTable(table).to_pyarrow_table().to_pylist()
        name = rows[0]["all_domains"][0]
        registered = name.split(".", 1)[1] if name.startswith("*.") else name
        for domain in (registered, "*." + registered, registered.split("-")[0], "*.com"):
            query = Query(domain=DomainFilter.parse(domain))
            results, pages = await all_pages(lv, {"domain": domain, "limit": "5"})
            keys = [[r["cert_index"], r["source_url"]] for r in results]
            assert keys == naive_keys(table, query), domain
        # Both logs' rows start at index 0: page order is (cert_index, source_url).
        everything, pages = await all_pages(lv, {"from": "2000-01-01", "limit": "3"})
        assert len(everything) == 24 and pages == 8
        assert {r["source_url"] for r in everything} == {ctlog.rfc6962_url, ctlog.static_url}
        first = everything[0]
        row = next(
            r
            for r in rows
            if (r["cert_index"], r["source_url"]) == (first["cert_index"], first["source_url"])
        )
        assert set(first) == {
            "cert_index", "fingerprint", "sha256", "serial_number", "subject", "issuer",
            "not_before", "not_after", "all_domains", "source_name", "seen", "is_ca",
            "source_url",
        }  # fmt: skip
        assert first["subject"] == row["subject_aggregated"]
        assert first["issuer"] == row["issuer_aggregated"]
        assert first["all_domains"] == row["all_domains"]
        assert first["seen"].endswith("+00:00")
        issuer = row["issuer_aggregated"].split("CN=")[-1].lower()
        by_issuer, _ = await all_pages(lv, {"issuer": issuer, "limit": "500"})
        assert [[r["cert_index"], r["source_url"]] for r in by_issuer] == naive_keys(
            table, Query(issuer=issuer)
        )


async def test_query_api_refuses_what_it_cannot_answer(
    ctlog: TestLogServer, tmp_path: Path
) -> None:
    async with archived(ctlog, tmp_path, 2) as (lv, _):
        for params in ({}, {"from": "2026-02-30"}, {"domain": "x.com", "cursor": "nope"}):
            body = await lv.get_json("/api/query/certs", 400, params=params)
            assert set(body) == {"error"}
        gone = Cursor(99_999, (0, None)).encode()
        body = await lv.get_json(
            "/api/query/certs", 410, params={"to": "2100-01-01", "cursor": gone}
        )
        assert "99999" in body["error"]
        capped = await lv.get_json("/api/query/certs", params={"from": "2000-01-01", "limit": "9"})
        assert len(capped["results"]) == 4 and not capped["has_more"]
    nothing = make_config(
        ctlog.log_list_url, query_api={"enabled": True, "table_path": str(tmp_path / "none")}
    )
    async with live(nothing) as lv:
        body = await lv.get_json("/api/query/certs", 503, params={"domain": "x.com"})
        assert "no table" in body["error"]
    async with (
        live(make_config(ctlog.log_list_url)) as lv,
        lv.client.get("/api/query/certs?domain=x.com") as resp,
    ):
        assert resp.status == 404  # off unless query_api.enabled, as in certstream-server-rust


async def test_query_api_is_behind_auth(ctlog: TestLogServer, tmp_path: Path) -> None:
    auth = {"enabled": True, "tokens": ["s3cret"]}
    async with archived(ctlog, tmp_path, 2, auth=auth) as (lv, _):
        await lv.get_json("/api/query/certs", 401, params={"domain": "x.com"})
        body = await lv.get_json(
            "/api/query/certs", params={"from": "2000-01-01", "token": "s3cret"}
        )
        assert len(body["results"]) == 4


async def test_query_api_times_out_with_a_504() -> None:
    config = parse_config({"query_api": {"enabled": True, "query_timeout_secs": 1}}, {})
    api = ArchiveApi(config)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as raised:
            await api._run(time.monotonic(), lambda left: time.sleep(left + 3))
    finally:
        api.close()
    assert raised.value.response.status == 504  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2.5


async def test_cert_lookup_falls_back_to_the_archive(ctlog: TestLogServer, tmp_path: Path) -> None:
    async with archived(ctlog, tmp_path, 6, api={"cache_capacity": 1}) as (lv, table):
        log = ctlog.logs["rfc6962"]
        entry = log.cert_at(log.size - 6)  # long gone from the one-entry cache
        der = entry.cert_der
        for key in (hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest().upper()):
            async with lv.client.get(f"/api/cert/{key}") as resp:
                assert resp.status == 200, await resp.text()
                full = json.loads(await resp.read())
            assert full["archived"] is True
            assert base64.b64decode(full["data"]["leaf_cert"]["as_der"]) == der
            # The test logs share certificates: the entry found is one of this certificate's.
            data = full["data"]
            found = (
                DeltaTable(table)
                .to_pyarrow_dataset()
                .to_table(
                    filter=(pc.field("source_url") == data["source"]["url"])
                    & (pc.field("cert_index") == data["cert_index"])
                )
            )
            assert found["sha256"].to_pylist() == [colon_hex(hashlib.sha256(der).digest())]
            assert data["cert_link"] == found["cert_link"][0].as_py()
            assert data["chain"]
        missing = await lv.get_json("/api/cert/" + "ab" * 32, 404)
        assert "archive" in missing["error"]
