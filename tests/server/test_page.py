"""The live page's document (assembly, CSP, self-containment) and the `/` dispatch between the
page and the WebSocket stream, over a real aiohttp server. The page in a real browser is
tests/e2e/test_page.py."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from importlib import resources

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from certlake.server.page import (
    SCRIPT_MARKER,
    STYLE_MARKER,
    PageTemplateError,
    build_page,
    load_page,
    wants_page,
    with_page,
)

TEMPLATE = f"<html><head>{STYLE_MARKER}</head><body>{SCRIPT_MARKER}</body></html>"


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def directives(policy: str) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in policy.split(";"))


@given(
    css=st.text(st.characters(blacklist_categories=["Cs"])).filter(lambda t: "</" not in t),
    js=st.text(st.characters(blacklist_categories=["Cs"])).filter(lambda t: "</" not in t),
)
def test_the_policy_allows_exactly_the_inlined_style_and_script(css: str, js: str) -> None:
    page = build_page(TEMPLATE, css, js)
    body = page.body.decode()
    inline_style = re.fullmatch(r"(?s).*<style>(.*)</style>.*", body)
    inline_script = re.fullmatch(r"(?s).*<script>(.*)</script>.*", body)
    assert inline_style is not None and inline_script is not None
    assert inline_style.group(1) == css
    assert inline_script.group(1) == js
    policy = directives(page.content_security_policy)
    assert policy["default-src"] == "'none'"
    assert policy["style-src"] == sha256_source(inline_style.group(1))
    assert policy["script-src"] == sha256_source(inline_script.group(1))
    assert policy["connect-src"] == "'self'"


@pytest.mark.parametrize(
    ("template", "css", "js"),
    [
        (TEMPLATE.replace(STYLE_MARKER, ""), "", ""),
        (TEMPLATE.replace(SCRIPT_MARKER, ""), "", ""),
        (TEMPLATE + SCRIPT_MARKER, "", ""),
        (TEMPLATE, "a::after { content: '</style>' }", ""),
        (TEMPLATE, "", "const s = '</SCRIPT>';"),
    ],
)
def test_a_document_that_would_break_is_refused(template: str, css: str, js: str) -> None:
    with pytest.raises(PageTemplateError):
        build_page(template, css, js)


@pytest.mark.parametrize(
    ("method", "upgrade", "page"),
    [
        ("GET", None, True),
        ("HEAD", None, True),
        ("GET", "h2c", True),
        ("GET", "websocket", False),
        ("GET", "WebSocket", False),
        ("GET", "foo, websocket", False),
        ("POST", None, False),
    ],
)
def test_which_requests_get_the_page(method: str, upgrade: str | None, page: bool) -> None:
    assert wants_page(method, upgrade) is page


def test_the_shipped_page_is_self_contained_and_its_ids_exist() -> None:
    files = resources.files("certlake.server.page")
    html = files.joinpath("index.html").read_text()
    js = files.joinpath("page.js").read_text()
    body = load_page().body.decode()
    # Nothing is fetched from anywhere: no external script, style, font or image.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", body)
    assert "@import" not in body and "url(" not in body
    assert STYLE_MARKER not in body and SCRIPT_MARKER not in body
    # Every element the script looks up is in the document.
    looked_up = set(re.findall(r"""\$\("([\w-]+)"\)""", js))
    assert len(looked_up) >= 15
    ids = set(re.findall(r'\bid="([\w-]+)"', html))
    assert looked_up <= ids, looked_up - ids


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def stream(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("from the stream")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", with_page(stream))
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_a_plain_get_is_the_page_and_an_upgrade_is_the_stream(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        assert r.charset == "utf-8"
        assert r.headers["Content-Security-Policy"] == load_page().content_security_policy
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert await r.read() == load_page().body
    async with client.head("/") as r:
        assert r.status == 200
    async with client.ws_connect("/") as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert msg.data == "from the stream"
