"""Test stand-ins around the stream: messages, a connection, a live server, a frame reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from certlake.stream.fanout import Fanout
from certlake.stream.hub import HubConfig
from certlake.stream.web import SocketOptions, add_stream_routes

TEXT = 0x1  # the WebSocket opcode of a text frame


@dataclass(frozen=True)
class Msg:
    """A published message: only the three payloads the hub sends."""

    full: bytes
    lite: bytes
    domains: bytes


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked WebSocket server frames as (opcode, payload)."""
    frames = []
    pos = 0
    while pos < len(data):
        opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        frames.append((opcode, data[pos : pos + size]))
        pos += size
    return frames


def text_payloads(data: bytes) -> list[bytes]:
    """The payloads of the text frames in `data`."""
    return [payload for opcode, payload in split_frames(data) if opcode == TEXT]


def sse_events(data: bytes) -> list[tuple[int | None, bytes]]:
    """Complete SSE events in `data` as (id, data): the id a message's cursor, None for
    heartbeats and notices."""
    events = []
    for event in data.split(b"\n\n")[:-1]:
        fields = dict(line.split(b": ", 1) for line in event.split(b"\n"))
        assert set(fields) <= {b"id", b"data"}, event
        events.append((int(fields[b"id"]) if b"id" in fields else None, fields[b"data"]))
    return events


@dataclass
class MemorySink:
    """A connection whose kernel side is simulated by `held`: bytes not yet taken."""

    writes: list[bytes] = field(default_factory=list)
    held: int = 0
    aborted: bool = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def buffered(self) -> int:
        return self.held

    def abort(self) -> None:
        self.aborted = True


@asynccontextmanager
async def live_server(
    config: HubConfig | None = None, options: SocketOptions | None = None
) -> AsyncIterator[tuple[Fanout, int]]:
    """The stream routes of a running fan-out on a loopback port; yields the fan-out and port."""
    fanout = Fanout(config or HubConfig())
    fanout.start()
    app = web.Application()
    add_stream_routes(app, fanout, options)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield fanout, runner.addresses[0][1]
    finally:
        fanout.stop()
        await runner.cleanup()
