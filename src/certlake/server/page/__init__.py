"""The live page a browser gets from a plain GET of `/` (no upgrade): the stream scrolling,
certificates per second, per-log health and lag, the connection's state, and a filter box
speaking the stream endpoints' query syntax.

It is one self-contained document: `index.html` with `page.css` and `page.js` inlined when the
server starts. No build step and nothing from another origin, so it works offline; and one
request, so `?token=` on the page's URL is all auth needs (the script passes it on to the
WebSocket and the /api calls). A Content-Security-Policy allows exactly the inlined style and
script, by hash, and connections to the page's own origin.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web

from certlake.stream.web import Handler, is_websocket_upgrade

STYLE_MARKER = "<!-- certlake:style -->"
SCRIPT_MARKER = "<!-- certlake:script -->"


class PageTemplateError(ValueError):
    """The page's template or assets cannot be assembled into a document."""


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    content_security_policy: str


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def build_page(template: str, css: str, js: str) -> Page:
    """The document with `css` and `js` inlined at the template's markers, and its CSP."""
    for marker in (STYLE_MARKER, SCRIPT_MARKER):
        if template.count(marker) != 1:
            raise PageTemplateError(f"the template needs {marker} exactly once")
    # An inlined asset must not end its own element early.
    if "</style" in css.lower():
        raise PageTemplateError("the stylesheet contains '</style'")
    if "</script" in js.lower():
        raise PageTemplateError("the script contains '</script'")
    body = template.replace(STYLE_MARKER, f"<style>{css}</style>").replace(
        SCRIPT_MARKER, f"<script>{js}</script>"
    )
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_csp_hash(js)}",
            f"style-src {_csp_hash(css)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return Page(body.encode(), policy)


def load_page() -> Page:
    """The page from the package's data files."""
    files = resources.files(__package__)
    template, css, js = (
        files.joinpath(name).read_text(encoding="utf-8")
        for name in ("index.html", "page.css", "page.js")
    )
    return build_page(template, css, js)


def wants_page(method: str, upgrade: str | None) -> bool:
    """A GET (or HEAD) that does not ask for a WebSocket upgrade: a browser opening `/`."""
    return method in (hdrs.METH_GET, hdrs.METH_HEAD) and not is_websocket_upgrade(upgrade)


def is_page_request(request: web.BaseRequest) -> bool:
    return wants_page(request.method, request.headers.get(hdrs.UPGRADE))


def with_page(stream: Handler, page: Page | None = None) -> Handler:
    """A handler giving the page to plain GETs and passing WebSocket upgrades to `stream`."""
    doc = page or load_page()
    headers = {
        "Content-Security-Policy": doc.content_security_policy,
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",  # the page's URL may hold a token
        "X-Content-Type-Options": "nosniff",
    }

    async def handle(request: web.Request) -> web.StreamResponse:
        if not is_page_request(request):
            return await stream(request)
        return web.Response(
            body=doc.body, content_type="text/html", charset="utf-8", headers=headers
        )

    return handle
