"""aiohttp transport adapters: WebSocket and SSE endpoints feeding connections from the hub.

aiohttp does the HTTP side (routing, the upgrade handshake, answering client pings, the close
handshake). The hub writes its pre-built frames straight to the connection's transport, whole
frames per `write`, so they never interleave with aiohttp's own control frames.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from certlake.stream.fanout import Fanout
from certlake.stream.hub import StreamKind, Wire

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
    if not isinstance(transport, asyncio.Transport):
        raise ConnectionResetError("client went away before the stream started")
    return transport


def websocket_handler(fanout: Fanout, kind: StreamKind, options: SocketOptions) -> Handler:
    """An aiohttp handler streaming `kind` to WebSocket clients."""

    async def handle(request: web.Request) -> web.StreamResponse:
        # No compression: a frame is built once for all clients, compression is per connection.
        # No aiohttp heartbeat: the hub pings, and a missing pong must not cut a client.
        ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_CLIENT_MESSAGE)
        await ws.prepare(request)
        transport = _transport(request)
        tune_socket(transport, options)
        sink = TransportSink(transport, closed=lambda: ws.closed)
        client = fanout.connect(kind, Wire.WEBSOCKET, sink)
        try:
            # Client messages carry nothing for us; reading answers pings and sees the close.
            async for _ in ws:
                pass
        finally:
            fanout.disconnect(client)
        return ws

    return handle


def sse_handler(fanout: Fanout, options: SocketOptions) -> Handler:
    """An aiohttp handler for `/sse?stream=lite|full|domains`; anything else gives lite."""

    kinds = {"full": StreamKind.FULL, "domains": StreamKind.DOMAINS, "lite": StreamKind.LITE}

    async def handle(request: web.Request) -> web.StreamResponse:
        kind = kinds.get(request.query.get("stream", "lite"), StreamKind.LITE)
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
        tune_socket(transport, options)
        lost = asyncio.Event()
        inner = transport.get_protocol()
        assert isinstance(inner, asyncio.Protocol)
        transport.set_protocol(_LossWatcher(inner, lost))
        client = fanout.connect(kind, Wire.SSE, TransportSink(transport, chunked=chunked))
        try:
            await lost.wait()
        finally:
            fanout.disconnect(client)
        return response

    return handle


def add_stream_routes(
    app: web.Application, fanout: Fanout, options: SocketOptions | None = None
) -> None:
    """Route `/`, `/full-stream`, `/domains-only` (WebSocket) and `/sse` to `fanout`."""
    opts = options or SocketOptions()
    app.router.add_get("/", websocket_handler(fanout, StreamKind.LITE, opts))
    app.router.add_get("/full-stream", websocket_handler(fanout, StreamKind.FULL, opts))
    app.router.add_get("/domains-only", websocket_handler(fanout, StreamKind.DOMAINS, opts))
    app.router.add_get("/sse", sse_handler(fanout, opts))
