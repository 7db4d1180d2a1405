"""The live page in a real browser: headless Chromium opens `/` of a real `certlake serve` fed by
a real, growing `certlake testlog`, and the test reads what a person would see from the DOM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from support.browser import Page, chromium, ensure_chromium
from support.procs import Procs, server_config
from support.waiting import until

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ROW_LIMIT = 200  # the page keeps this many rows

ROWS = "[...document.querySelectorAll('#rows tr.cert')].map(r => ({...r.dataset}))"
LOGS = "[...document.querySelectorAll('#logs li.log')].map(l => ({...l.dataset}))"
STATE = "document.getElementById('conn').dataset.state"


def value_of(element_id: str) -> str:
    return f"Number(document.getElementById({orjson.dumps(element_id).decode()}).dataset.value)"


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    path, said = ensure_chromium()
    if path is None:
        pytest.skip(f"headless Chromium is not installed, and scripts/test-setup said: {said}")
    return path


@pytest.fixture
async def browser_page(chromium_binary: str, tmp_path: Path) -> AsyncIterator[Page]:
    async with chromium(chromium_binary, tmp_path / "browser") as browser:
        page = await browser.new_page()
        yield page
        assert page.errors == [], page.errors


async def rows_where(page: Page, condition: str, within: float = 15) -> list[dict[str, Any]]:
    """The rows, once `condition` (JS over `rows`) holds for them."""
    rows: list[dict[str, Any]] = await page.wait_for(
        f"(rows => ({condition}) && rows)({ROWS})", within=within
    )
    return rows


async def test_page_shows_the_live_stream_rates_logs_and_filters(
    procs: Procs, tmp_path: Path, browser_page: Page
) -> None:
    testlog = procs.testlog("--initial-size", "5", "--rate", "30", "--seed", "41")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    rfc6962, static = f"{testlog.url}/rfc6962", f"{testlog.url}/static/mon"
    page = browser_page

    await page.navigate(f"{server.url}/")
    assert await page.evaluate("document.title") == "certlake · live certificates"
    await page.wait_for(f"{STATE} === 'live'")

    # Certificates scroll in from both logs, each row with its names, issuer and log.
    rows = await rows_where(page, "new Set(rows.map(r => r.log)).size === 2 && rows.length >= 20")
    assert {r["log"] for r in rows} == {rfc6962, static}
    for r in rows:
        assert r["domains"] and "." in r["domains"].split()[0]
        assert r["issuer"]
        assert r["updateType"] in ("X509LogEntry", "PrecertLogEntry")
    assert await page.wait_for(f"{value_of('rate')} > 0")

    # Per-log health and lag, from /api/logs.
    logs = await page.wait_for(f"(ls => ls.length === 2 && ls)({LOGS})")
    assert {log["url"] for log in logs} == {rfc6962, static}
    assert all(log["health"] == "healthy" for log in logs), logs
    assert all(log["lag"].isdigit() for log in logs), logs
    # Each log verified: its entries reproduce the signed roots, and the page says up to where.
    await page.wait_for(f"{LOGS}.every(l => l.verification === 'ok')", within=20)
    facts = await page.evaluate(
        "[...document.querySelectorAll('#logs li.log .facts')].map(f => f.textContent)"
    )
    assert all("verified " in f for f in facts), facts
    assert await page.wait_for("document.getElementById('server-rate').textContent !== '–'")

    # The stream outgrows the table, which keeps only the newest rows.
    await page.wait_for(f"{value_of('total')} > {ROW_LIMIT + 20}", within=20)
    assert len(await page.evaluate(ROWS)) == ROW_LIMIT

    # A filter typed into the box reconnects with it as the stream's query string.
    await page.type_into("#filter", f"log={static}")
    await page.press_enter()
    # The address bar keeps the filter, so the filtered view can be bookmarked.
    search = "new URLSearchParams(location.search)"
    assert await page.wait_for(f"{search}.get('log')") == static
    assert static in await page.evaluate("document.getElementById('active-filter').textContent")
    await page.wait_for(f"{STATE} === 'live'")
    # The test log grows each log by 30 a second, in turn: unfiltered, 75 rows would hold at
    # least one whole second's worth from the other log.
    rows = await rows_where(page, "rows.length >= 75")
    assert {r["log"] for r in rows} == {static}
    await page.screenshot(tmp_path / "page.png", ARTIFACTS / "page.png")

    # A filter the server refuses is not retried, and the page says why.
    await page.type_into("#filter", "domain=re:(a+)+")
    await page.press_enter()
    await page.wait_for(f"{STATE} === 'rejected'")
    error = await page.wait_for("document.getElementById('filter-error').textContent")
    assert "domain=re:(a+)+" in error
    assert await page.evaluate("document.getElementById('filter-error').hidden") is False
    assert await page.evaluate(ROWS) == []
    assert page.network_errors and all("400" in e for e in page.network_errors)

    # Clearing the box brings back every certificate.
    await page.evaluate("document.getElementById('clear').click()")
    rows = await rows_where(page, "new Set(rows.map(r => r.log)).size === 2")
    assert await page.evaluate("location.search") == ""
    assert await page.evaluate("document.getElementById('filter-error').hidden") is True


async def test_page_works_with_a_token_and_holds_no_stream_slot(
    procs: Procs, tmp_path: Path, browser_page: Page
) -> None:
    testlog = procs.testlog("--initial-size", "5", "--rate", "10", "--seed", "42")
    config = server_config(
        tmp_path,
        f"{testlog.url}/log_list.json",
        auth={"enabled": True, "tokens": ["page-secret"]},
        connection_limit={"enabled": True, "per_ip_limit": 1},
    )
    server = procs.serve(config)
    ws_url = server.url.replace("http", "ws", 1)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/") as r:
            assert r.status == 401
        # With this client's one stream slot taken, the page still loads (a reload while its
        # own WebSocket is open), and a second stream is refused.
        async with s.ws_connect(f"{ws_url}/?token=page-secret"):
            async with s.get(f"{server.url}/?token=page-secret") as r:
                assert r.status == 200
                assert r.content_type == "text/html"
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(f"{ws_url}/?token=page-secret")
            assert refused.value.status == 429

    page = browser_page
    await page.navigate(f"{server.url}/?token=page-secret")
    await page.wait_for(f"{STATE} === 'live'")
    rows = await rows_where(page, "rows.length >= 5")
    assert {r["log"] for r in rows} <= {f"{testlog.url}/rfc6962", f"{testlog.url}/static/mon"}
    logs = await page.wait_for(f"(ls => ls.length === 2 && ls)({LOGS})")
    assert all(log["health"] == "healthy" for log in logs), logs
    assert await page.wait_for("document.getElementById('clients').textContent === '1'")

    # Everything the page asked for carried the token: the server refused only the test's probe.
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{server.url}/api/stats?token=page-secret") as r,
    ):
        stats = await r.json()
    assert stats["refused"]["unauthorized"] == 1
    assert stats["refused"]["client_full"] == 1
    assert page.network_errors == []


async def test_page_reconnects_by_itself_when_the_server_comes_back(
    procs: Procs, tmp_path: Path, browser_page: Page
) -> None:
    testlog = procs.testlog("--initial-size", "5", "--rate", "10", "--seed", "43")
    config = server_config(tmp_path, f"{testlog.url}/log_list.json")
    first = procs.serve(config)
    page = browser_page
    await page.navigate(f"{first.url}/")
    await page.wait_for(f"{STATE} === 'live'")
    await rows_where(page, "rows.length >= 5")

    first.stop()
    # One attempt fails while the server is down, and the page backs off further.
    await page.wait_for(
        "document.getElementById('conn').textContent === 'reconnecting in 2 s'", within=10
    )
    assert any("WebSocket" in e for e in page.network_errors), page.network_errors
    before = await page.evaluate(value_of("total"))
    procs.serve(config | {"port": int(first.url.rsplit(":", 1)[1])})
    await page.wait_for(f"{STATE} === 'live'", within=20)
    await page.wait_for(f"{value_of('total')} >= {before + 10}")


async def test_a_quiet_stream_still_shows_the_newest_certificates_then_continues_after_them(
    procs: Procs, tmp_path: Path, browser_page: Page
) -> None:
    testlog = procs.testlog("--seed", "44")  # it does not grow by itself
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    async with aiohttp.ClientSession() as s:
        await until(lambda: _at_tree_head(s, server.url), 30, "both watchers at the tree head")
        await _grow(s, testlog.url, 6)
        await until(lambda: _latest(s, server.url, 12), 30, "12 certificates in /latest.json")
        async with s.get(f"{server.url}/latest.json") as r:
            latest = [m["data"] for m in (await r.json())["messages"]]

        # Nothing arrives on the stream from now on, yet the page lists what /latest.json has.
        page = browser_page
        await page.navigate(f"{server.url}/")
        await page.wait_for(f"{STATE} === 'live'")
        rows = await rows_where(page, "rows.length === 12")
        assert [int(r["cursor"]) for r in rows] == [m["cursor"] for m in latest]
        assert [r["log"] for r in rows] == [m["source"]["url"] for m in latest]
        assert all(
            r["domains"] == " ".join(m["leaf_cert"]["all_domains"])
            for r, m in zip(rows, latest, strict=True)
        )
        assert await page.evaluate("document.getElementById('empty').hidden") is True
        assert await page.evaluate(value_of("total")) == 0  # history, not received live
        await page.screenshot(tmp_path / "page-quiet.png", ARTIFACTS / "page-quiet.png")

        # The stream joins right after them: each new certificate once, none of the old again.
        await _grow(s, testlog.url, 2)
        rows = await rows_where(page, "rows.length >= 16")
        await page.wait_for(f"{value_of('total')} === 4")
    cursors = [int(r["cursor"]) for r in rows]
    assert len(rows) == 16
    assert cursors == list(range(latest[0]["cursor"] + 4, latest[0]["cursor"] - 12, -1))


async def _at_tree_head(s: aiohttp.ClientSession, url: str) -> bool:
    async with s.get(f"{url}/api/logs") as r:
        logs = (await r.json())["logs"]
    return len(logs) == 2 and all(log["cursor"] is not None for log in logs)


async def _grow(s: aiohttp.ClientSession, testlog_url: str, n: int) -> None:
    async with s.post(f"{testlog_url}/admin/grow?n={n}") as r:
        assert r.status == 200


async def _latest(s: aiohttp.ClientSession, url: str, n: int) -> bool:
    async with s.get(f"{url}/latest.json") as r:
        return len((await r.json())["messages"]) == n


class CuttableProxy:
    """A TCP relay in front of the server whose connections can all be cut at once, as a network
    blip does; it keeps each request's head so a test can see what the browser sent."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.heads: list[bytes] = []
        self._open: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for pair in self._open:
            for writer in pair:
                writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._open.append((writer, up_writer))
        await asyncio.gather(
            self._requests(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The browser's side: bodiless GETs, one head after another on a kept-alive connection."""
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head)
                writer.write(head)
                await writer.drain()
        finally:
            writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


EVENT_SOURCE = """(() => {
  window.got = []; window.other = []; window.opened = 0;
  const es = new EventSource("/sse?stream=lite");
  es.onopen = () => { window.opened += 1; };
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.message_type === "certificate_update") window.got.push([e.lastEventId, m.data.cursor]);
    else window.other.push(m.message_type);
  };
  return true;
})()"""


async def test_an_event_source_resumes_by_itself_after_a_cut_without_loss_or_repeats(
    procs: Procs, tmp_path: Path, browser_page: Page
) -> None:
    testlog = procs.testlog("--rate", "20", "--seed", "45")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    proxy = CuttableProxy(int(server.url.rsplit(":", 1)[1]))
    async with proxy as port:
        page = browser_page
        await page.navigate(f"http://127.0.0.1:{port}/health")
        await page.evaluate(EVENT_SOURCE)
        await page.wait_for("window.got.length >= 20")
        proxy.cut()  # the stream keeps growing while the browser is away
        before = await page.evaluate("window.got.length")
        await page.wait_for("window.opened === 2", within=20)  # it reconnected by itself
        await page.wait_for(f"window.got.length >= {before} + 40", within=20)
        got = await page.evaluate("window.got")
        other = await page.evaluate("window.other")
    sse = [h for h in proxy.heads if h.startswith(b"GET /sse")]
    assert len(sse) == 2
    assert b"last-event-id" not in sse[0].lower()
    # The reconnect named the last event it had, and the server went on right after it.
    resumed = int(got[before - 1][1])
    assert f"Last-Event-ID: {resumed}\r\n".encode() in sse[1], sse[1]
    cursors = [cursor for _, cursor in got]
    assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))  # no gap, no repeat
    assert all(event_id == str(cursor) for event_id, cursor in got)
    assert "resume_gap" not in other
