"""aiohttp transport adapters: WebSocket and SSE endpoints feeding connections from the hub.

aiohttp does the HTTP side (routing, the upgrade handshake, answering client pings, the close
handshake). The hub writes its pre-built frames straight to the connection's transport, whole
frames per `write`, so they never interleave with aiohttp's own control frames.

Every stream endpoint takes the same query parameters:

    domain, issuer, log, update_type   filters (`filters.py`)
    since=<cursor>                     resume after that cursor (`resume.py`)
    dedupe=1                           cross-log de-duplication (`dedupe.py`); also true/0/false
    token                              read by the guard (auth), ignored here
    stream=lite|full|domains           `/sse` only

Anything else, or a malformed value, is refused with 400 and `{"error": "..."}` before the
connection is upgraded or the event stream starts. On `/sse`, a `Last-Event-ID` header (what a
browser's `EventSource` sends when it reconnects: the cursor of the last event it got) resumes
like `since=` and takes its place. A plain GET of a WebSocket endpoint (a browser opening the
URL) gets 426 and a few lines on how to connect instead of a failed handshake.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from certlake.config import StreamConfig
from certlake.stream.dedupe import Deduper
from certlake.stream.fanout import Fanout
from certlake.stream.filters import FILTER_KEYS, FactsCache, FilterError, compile_filter
from certlake.stream.hub import Predicate, StreamKind, StreamMessage, Wire

# Cap on client frames: clients only send control frames and the odd small text message.
_MAX_CLIENT_MESSAGE = 4096

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Kernel-side settings for each accepted client socket.

    A dead peer is the kernel's to detect: keep-alive probes catch a silent, idle one and
    `user_timeout_ms` aborts a connection whose sent data stays unacknowledged. A live client
    that never pings is left alone as long as its TCP connection is healthy.
    """

    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 6
    user_timeout_ms: int = 120_000
    # Per-connection kernel send buffer; None keeps the kernel's auto-tuning (up to ~4 MB).
    send_buffer: int | None = None


def tune_socket(transport: asyncio.BaseTransport, options: SocketOptions) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, options.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, options.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, options.keepalive_count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, options.user_timeout_ms)
    if options.send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.send_buffer)


class TransportSink:
    """Hub sink over the transport of an aiohttp connection.

    `chunked` wraps each coalesced write in one HTTP/1.1 chunk (SSE); `closed` lets aiohttp's
    WebSocket say it has sent its close frame, after which no data frame may follow.
    """

    __slots__ = ("_chunked", "_closed", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        chunked: bool = False,
        closed: Callable[[], bool] | None = None,
    ) -> None:
        self._transport = transport
        self._chunked = chunked
        self._closed = closed

    def write(self, data: bytes) -> None:
        if self._transport.is_closing() or (self._closed is not None and self._closed()):
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def abort(self) -> None:
        self._transport.abort()


class _LossWatcher(asyncio.Protocol):
    """Passes every event on to aiohttp's protocol and also reports the connection's end.

    aiohttp tells a plain GET handler nothing when its peer leaves (unless the whole server
    cancels handlers), and an SSE handler otherwise never reads; this is the notification.
    """

    def __init__(self, inner: asyncio.Protocol, lost: asyncio.Event) -> None:
        self._inner = inner
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()
        self._inner.connection_lost(exc)


def _transport(request: web.Request) -> asyncio.Transport:
    transport = request.transport
    # uvloop's transports are not asyncio.Transport subclasses: test for None, not the type.
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away before the stream started")
    return transport


DEFAULT_DEDUPE_WINDOW = StreamConfig().dedupe_window
_MAX_CURSOR_DIGITS = 20
_FLAGS = {"1": True, "true": True, "yes": True, "on": True}
_FLAGS |= {"0": False, "false": False, "no": False, "off": False}
# Read by the guard before the handler runs (`?token=` for browsers).
_GUARD_KEYS = frozenset({"token"})
SSE_KEYS = frozenset({"stream"})


class QueryError(ValueError):
    """A stream request's query string cannot be honoured; the client gets 400 and why."""


SSE_KINDS = {"lite": StreamKind.LITE, "full": StreamKind.FULL, "domains": StreamKind.DOMAINS}


def sse_kind(values: Sequence[str]) -> StreamKind:
    """The stream `/sse?stream=` names (lite when absent); raises `QueryError`."""
    if not values:
        return StreamKind.LITE
    if len(values) > 1:
        raise QueryError("stream= may be given only once")
    kind = SSE_KINDS.get(values[0])
    if kind is None:
        raise QueryError(f"stream={values[0]!r}: expected one of {', '.join(SSE_KINDS)}")
    return kind


def is_websocket_upgrade(upgrade: str | None) -> bool:
    """Whether an `Upgrade` header asks for a WebSocket (a token list, any case)."""
    return "websocket" in {t.strip().lower() for t in (upgrade or "").split(",")}


def _cursor(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_CURSOR_DIGITS):
        raise QueryError(f"{name}={value!r}: expected a cursor, a non-negative integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one connection asked for: which messages (filters, de-duplication; see
    `hub.Hub.add` for `keys` and `accepts`) and from where (`since`)."""

    keys: frozenset[str] | None
    accepts: Predicate | None
    since: int | None


def _both(first: Predicate, second: Predicate) -> Predicate:
    def accepts(message: StreamMessage) -> bool:
        return first(message) and second(message)

    return accepts


def parse_subscription(
    pairs: Iterable[tuple[str, str]],
    *,
    facts: FactsCache,
    dedupe_window: int,
    extra_keys: frozenset[str] = frozenset(),
    last_event_id: str | None = None,
) -> Subscription:
    """The subscription a query string asks for; raises `QueryError` or `FilterError`.

    `extra_keys` are further parameters the endpoint reads itself (`stream` on `/sse`).
    `last_event_id` (an SSE reconnect's header; empty counts as absent) overrides `since=`: the
    URL says where the connection first started, the header how far it has got since."""
    filters: list[tuple[str, str]] = []
    since: int | None = None
    dedupe = False
    for key, value in pairs:
        if key in FILTER_KEYS:
            filters.append((key, value))
        elif key == "since":
            if since is not None:
                raise QueryError("since= may be given only once")
            since = _cursor("since", value)
        elif key == "dedupe":
            flag = _FLAGS.get(value.lower())
            if flag is None:
                raise QueryError(f"dedupe={value!r}: expected 1 or 0 (or true/false)")
            dedupe = flag
        elif key not in _GUARD_KEYS and key not in extra_keys:
            known = sorted(FILTER_KEYS | {"since", "dedupe"} | _GUARD_KEYS | extra_keys)
            raise QueryError(f"unknown parameter {key!r}; a stream takes {', '.join(known)}")
    if last_event_id:
        since = _cursor("Last-Event-ID", last_event_id)
    selection = compile_filter(filters, facts)
    keys = None if selection is None else selection.keys
    accepts: Predicate | None = None if selection is None else selection.accepts
    if dedupe:
        deduper = Deduper(dedupe_window)
        accepts = deduper if accepts is None else _both(accepts, deduper)
    return Subscription(keys, accepts, since)


@dataclass(frozen=True, slots=True)
class Streams:
    """What every stream endpoint of one server shares."""

    fanout: Fanout
    options: SocketOptions = field(default_factory=SocketOptions)
    dedupe_window: int = DEFAULT_DEDUPE_WINDOW

    def subscription(
        self,
        request: web.Request,
        extra_keys: frozenset[str] = frozenset(),
        last_event_id: str | None = None,
    ) -> Subscription | web.Response:
        """The request's subscription, or the 400 response refusing it."""
        try:
            return parse_subscription(
                request.query.items(),
                # The hub's: what filters derive from a message is computed once for all.
                facts=self.fanout.hub.facts,
                dedupe_window=self.dedupe_window,
                extra_keys=extra_keys,
                last_event_id=last_event_id,
            )
        except (QueryError, FilterError) as e:
            return _refused(str(e))


def _refused(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


def upgrade_required(request: web.Request, kind: StreamKind) -> web.Response:
    """The answer to a plain GET of a WebSocket endpoint: how to read that stream instead."""
    http = "https" if request.secure else "http"
    ws = "wss" if request.secure else "ws"
    host = request.host
    text = (
        f"This is certlake's {kind.value} stream, a WebSocket endpoint: a plain HTTP request "
        "cannot read it.\n"
        f"Connect with a WebSocket client:  websocat {ws}://{host}{request.path}\n"
        f"or read it as Server-Sent Events: curl -N '{http}://{host}/sse?stream={kind.value}'\n"
        f"The live page is at {http}://{host}/\n"
    )
    # RFC 9110 §15.5.22: a 426 names the protocol to switch to.
    return web.Response(status=426, text=text, headers={hdrs.UPGRADE: "websocket"})


def websocket_handler(streams: Streams, kind: StreamKind) -> Handler:
    """An aiohttp handler streaming `kind` to WebSocket clients."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not is_websocket_upgrade(request.headers.get(hdrs.UPGRADE)):
            return upgrade_required(request, kind)
        # aiohttp 3.14 turns a key that is not base64 into a 400, but one that is not even ASCII
        # into a ValueError out of prepare(): a 500 and a traceback for any client to cause.
        if not request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "").isascii():
            return _refused("Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.2.1)")
        sub = streams.subscription(request)
        if isinstance(sub, web.Response):
            return sub
        # No compression: a frame is built once for all clients, compression is per connection.
        # No aiohttp heartbeat: the hub pings, and a missing pong must not cut a client.
        ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_CLIENT_MESSAGE)
        await ws.prepare(request)
        transport = _transport(request)
        tune_socket(transport, streams.options)
        sink = TransportSink(transport, closed=lambda: ws.closed)
        client = streams.fanout.connect(
            kind, Wire.WEBSOCKET, sink, sub.accepts, since=sub.since, keys=sub.keys
        )
        try:
            # Client messages carry nothing for us; reading answers pings and sees the close.
            async for _ in ws:
                pass
        finally:
            streams.fanout.disconnect(client)
        return ws

    return handle


def sse_handler(streams: Streams) -> Handler:
    """An aiohttp handler for `/sse?stream=lite|full|domains` (lite without `stream=`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            kind = sse_kind(request.query.getall("stream", []))
        except QueryError as e:
            return _refused(str(e))
        sub = streams.subscription(request, SSE_KEYS, request.headers.get("Last-Event-ID"))
        if isinstance(sub, web.Response):
            return sub
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # stops nginx from holding events back
            }
        )
        chunked = request.version >= (1, 1)
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.force_close()  # HTTP/1.0: the body ends when the connection does
        await response.prepare(request)
        transport = _transport(request)
        tune_socket(transport, streams.options)
        lost = asyncio.Event()
        inner = transport.get_protocol()
        assert isinstance(inner, asyncio.Protocol)
        transport.set_protocol(_LossWatcher(inner, lost))
        sink = TransportSink(transport, chunked=chunked)
        client = streams.fanout.connect(
            kind, Wire.SSE, sink, sub.accepts, since=sub.since, keys=sub.keys
        )
        try:
            await lost.wait()
        finally:
            streams.fanout.disconnect(client)
        return response

    return handle


def add_stream_routes(
    app: web.Application,
    fanout: Fanout,
    options: SocketOptions | None = None,
    *,
    websocket: bool = True,
    sse: bool = True,
    dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
    wrap_root: Callable[[Handler], Handler] | None = None,
) -> list[web.AbstractResource]:
    """Route `/`, `/full-stream`, `/domains-only` (WebSocket, when `websocket`) and `/sse` (when
    `sse`) to `fanout`; returns the routes' resources. `wrap_root` wraps the handler of `/`
    (the live page answers plain GETs there)."""
    streams = Streams(fanout, options or SocketOptions(), dedupe_window)
    routes: list[tuple[str, Handler]] = []
    if websocket:
        root = websocket_handler(streams, StreamKind.LITE)
        routes += [
            ("/", root if wrap_root is None else wrap_root(root)),
            ("/full-stream", websocket_handler(streams, StreamKind.FULL)),
            ("/domains-only", websocket_handler(streams, StreamKind.DOMAINS)),
        ]
    if sse:
        routes.append(("/sse", sse_handler(streams)))
    resources = [app.router.add_get(path, handler).resource for path, handler in routes]
    return [r for r in resources if r is not None]
