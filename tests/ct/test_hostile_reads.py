"""Hostile answers over real loopback HTTP: every read from a log is bounded in bytes on the wire,
bytes once decompressed, entries and time, and a bound passed is a typed error, not a memory
blow-up. The test log serves the gzip bombs and huge bodies; answers it never gives (more entries
than asked, a huge error page) come from a few lines of aiohttp server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.http import CTHttp
from certlake.ct.client.reader import FetchedEntry, settle
from certlake.ct.client.rfc6962 import Rfc6962Log
from certlake.ct.client.static import StaticLog
from certlake.ct.entry import LogKind, LogSource
from certlake.ct.errors import AnswerTooLarge, FetchError, Limit
from certlake.ct.limits import MiB, ReadLimits
from certlake.testlog.faults import Fault
from certlake.testlog.server import TestLogServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def srv() -> AsyncIterator[TestLogServer]:
    async with TestLogServer(seed=5, initial_size=300, pool_size=40) as server:
        yield server


def _faults(srv: TestLogServer, *specs: str) -> None:
    srv.faults.replace([Fault.from_spec(s) for s in specs])


def _rfc6962(http: CTHttp, url: str) -> Rfc6962Log:
    return Rfc6962Log(http, LogSource(url, "test rfc6962", LogKind.RFC6962))


def _static(http: CTHttp, srv: TestLogServer) -> StaticLog:
    return StaticLog(http, LogSource(srv.static_url, "test static", LogKind.STATIC))


@pytest.mark.parametrize("kind", [LogKind.RFC6962, LogKind.STATIC])
async def test_a_gzip_bomb_stops_at_the_decompressed_bound_then_the_log_reads_on(
    srv: TestLogServer, kind: LogKind
) -> None:
    endpoint = "get-entries" if kind is LogKind.RFC6962 else "data-tile"
    _faults(srv, f"gzip-bomb:endpoint={endpoint}")
    async with CTHttp(timeout=20) as http:
        reader = _rfc6962(http, srv.rfc6962_url) if kind is LogKind.RFC6962 else _static(http, srv)
        with pytest.raises(AnswerTooLarge) as e:
            await reader.read(0, 9, 300)
        assert e.value.limit is Limit.DECOMPRESSED and e.value.bound == 32 * MiB
        message = str(e.value)
        assert "over 32 MiB once decompressed (ct_log.max_decompressed_bytes)" in message
        assert srv.base_url in message
        _faults(srv)
        assert [item.index for item in await reader.read(0, 9, 300)] == list(range(10))


async def test_a_huge_body_stops_at_the_wire_bound_and_an_announced_one_is_not_read(
    srv: TestLogServer,
) -> None:
    _faults(srv, "huge-body:n=1,endpoint=get-entries", "huge-body:n=1,mode=length")
    async with CTHttp(timeout=20) as http:
        reader = _rfc6962(http, srv.rfc6962_url)
        with pytest.raises(AnswerTooLarge) as e:
            await reader.read(0, 9, 300)
        assert e.value.limit is Limit.BODY
        assert "over 16 MiB on the wire (ct_log.max_response_bytes)" in str(e.value)
        with pytest.raises(AnswerTooLarge, match="announces 512 MiB, over 16 MiB on the wire"):
            await reader.read(0, 9, 300)


async def test_the_configured_bounds_are_the_ones_applied(srv: TestLogServer) -> None:
    # A padded answer of 3 MiB is within the defaults, and over bounds of 2 MiB.
    _faults(srv, "huge-body:size=3M,endpoint=get-entries")
    async with CTHttp(timeout=20) as http:
        assert len(await _rfc6962(http, srv.rfc6962_url).read(0, 9, 300)) == 10
    async with CTHttp(timeout=20, limits=ReadLimits.configured(2 * MiB, 64 * MiB)) as http:
        with pytest.raises(AnswerTooLarge, match="over 2 MiB on the wire"):
            await _rfc6962(http, srv.rfc6962_url).read(0, 9, 300)


@pytest.mark.parametrize(
    ("endpoint", "read"),
    [
        ("get-sth", lambda http, srv: _rfc6962(http, srv.rfc6962_url).get_sth()),
        ("checkpoint", lambda http, srv: _static(http, srv).checkpoint()),
        ("data-tile", lambda http, srv: _static(http, srv).read(0, 0, 300)),  # via its issuers
    ],
)
async def test_tree_heads_and_issuers_are_bounded_tighter(
    srv: TestLogServer,
    endpoint: str,
    read: Callable[[CTHttp, TestLogServer], Awaitable[object]],
) -> None:
    target = "issuer" if endpoint == "data-tile" else endpoint
    _faults(srv, f"huge-body:size=2M,endpoint={target}")
    async with CTHttp(timeout=20) as http:
        with pytest.raises(AnswerTooLarge, match="the bound on tree heads and issuer certificates"):
            await read(http, srv)


async def test_a_body_slower_than_the_deadline_is_given_up_at_the_deadline(
    srv: TestLogServer,
) -> None:
    _faults(srv, "huge-body:size=1M,rate=100K,endpoint=get-entries")  # 10 s to send
    async with CTHttp(timeout=1) as http:
        started = time.monotonic()
        with pytest.raises(FetchError) as e:
            await _rfc6962(http, srv.rfc6962_url).read(0, 9, 300)
        elapsed = time.monotonic() - started
    assert e.value.timed_out
    assert "no whole answer within 1 s (ct_log.request_timeout_secs)" in str(e.value)
    assert 0.9 < elapsed < 3


async def test_fetch_range_retries_past_a_bomb_and_reports_it(srv: TestLogServer) -> None:
    _faults(srv, "gzip-bomb:n=1,endpoint=get-entries")
    errors: list[FetchError] = []
    async with CTHttp(timeout=20) as http:
        items = fetch_range(
            _rfc6962(http, srv.rfc6962_url), 0, 99, on_error=lambda e, _n: errors.append(e)
        )
        raw = [item async for item in items]
    got = [i if isinstance(i, GaveUp) else settle(i, srv.rfc6962_url) for i in raw]
    assert [i.index for i in got] == list(range(100))
    assert all(isinstance(i, FetchedEntry) for i in got)
    assert [type(e) for e in errors] == [AnswerTooLarge]


# --- answers the test log never gives -----------------------------------------------------------


@pytest.fixture
async def hostile(srv: TestLogServer) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A server of bad answers; returns its URL and how many bytes each route sent."""
    sent: dict[str, int] = {}
    async with CTHttp(timeout=20) as http:
        two = await http.get(srv.rfc6962_url + "/ct/v1/get-entries", {"start": 0, "end": 1})

    async def two_entries(request: web.Request) -> web.Response:
        return web.Response(body=two)

    async def tiny_values(request: web.Request) -> web.Response:
        # 6 MiB that a parser would turn into 2 million dicts
        return web.Response(body=b'{"entries":[' + b"{}," * 2_000_000 + b"{}]}")

    async def error_page(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=500, headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent["error"] = 0
        try:
            for _ in range(100):
                await resp.write(b"server trouble\n" + b"." * (MiB - 15))
                sent["error"] += MiB
        except ConnectionError:
            pass
        return resp

    app = web.Application()
    app.router.add_get("/many/ct/v1/get-entries", tiny_values)
    app.router.add_get("/error/ct/v1/get-entries", error_page)
    app.router.add_get("/two/ct/v1/get-entries", two_entries)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", sent
    finally:
        await runner.cleanup()


async def test_more_entries_than_asked_are_refused_before_parsing(
    hostile: tuple[str, dict[str, int]],
) -> None:
    base, _ = hostile
    async with CTHttp(timeout=20) as http:
        with pytest.raises(AnswerTooLarge) as e:
            await _rfc6962(http, base + "/many").get_entries(0, 255)
    assert e.value.limit is Limit.ENTRIES and e.value.bound == 256
    assert "more than the 256 entries asked can hold" in str(e.value)


async def test_more_real_entries_than_asked_are_refused(
    hostile: tuple[str, dict[str, int]],
) -> None:
    base, _ = hostile
    async with CTHttp(timeout=20) as http:
        with pytest.raises(AnswerTooLarge, match="returned 2 entries, more than asked") as e:
            await _rfc6962(http, base + "/two").get_entries(7, 7)
    assert e.value.limit is Limit.ENTRIES and e.value.bound == 1


async def test_an_error_answer_is_quoted_not_read_whole(
    hostile: tuple[str, dict[str, int]],
) -> None:
    base, sent = hostile
    async with CTHttp(timeout=20) as http:
        with pytest.raises(FetchError) as e:
            await _rfc6962(http, base + "/error").get_entries(0, 0)
    assert e.value.status == 500
    assert str(e.value).endswith(": server trouble\n" + "." * 105)
    await asyncio.sleep(0.2)  # the server finds out that the reader hung up
    assert sent["error"] < 100 * MiB
