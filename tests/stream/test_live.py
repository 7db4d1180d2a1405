"""The live stream over real loopback sockets: aiohttp server, real WebSocket and HTTP clients.

Most checks use aiohttp's WebSocket client. Clients that misbehave on purpose (never read, never
answer a ping, vanish) are raw sockets speaking just enough RFC 6455 to do so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import struct
import time

import aiohttp
import pytest

from certlake.stream.fanout import Fanout
from certlake.stream.hub import HubConfig, StreamKind
from certlake.stream.web import SocketOptions
from support.stream import Msg, live_server, sse_events
from support.waiting import until

pytestmark = pytest.mark.timeout(60)


def msg(i: int, size: int = 1500) -> Msg:
    """Certstream-shaped payloads of about `size` bytes; full and lite end in a newline."""
    pad = "x" * max(0, size - 60)
    lite = json.dumps({"data": {"seq": i, "pad": pad}, "message_type": "certificate_update"})
    full = json.dumps({"data": {"seq": i, "pad": pad, "chain": []}, "message_type": "x"})
    domains = json.dumps({"data": [f"d{i}.example"], "message_type": "dns_entries"})
    return Msg(full.encode() + b"\n", lite.encode() + b"\n", domains.encode())


def clients(fanout: Fanout) -> int:
    return len(fanout.hub.clients())


class RawClient:
    """A WebSocket client that reads only when told to and never sends a frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str = "/", rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small stream buffer: asyncio stops reading the socket at twice this, so a client
        # that does not call frame() really leaves the data in the kernel.
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        assert second & 0x80 == 0, "server frames must not be masked"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert first & 0x80, "every frame is final"
        return first & 0x0F, await self.reader.readexactly(size)

    def reset(self) -> None:
        """Vanish: RST instead of a close handshake, as a killed process or a dropped NAT."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def test_messages_arrive_in_order_as_text_frames_on_each_stream() -> None:
    sizes = [10, 125, 126, 1500, 65535, 70_000, 3, 1500]  # every frame-length encoding
    messages = [msg(i, size) for i, size in enumerate(sizes)]
    async with live_server(HubConfig()) as (fanout, port), aiohttp.ClientSession() as session:
        sockets = {
            kind: await session.ws_connect(f"ws://127.0.0.1:{port}{path}", autoping=False)
            for kind, path in [
                (StreamKind.LITE, "/"),
                (StreamKind.FULL, "/full-stream"),
                (StreamKind.DOMAINS, "/domains-only"),
            ]
        }
        await until(lambda: clients(fanout) == 3)
        for m in messages:
            fanout.publish(m)
        for kind, ws in sockets.items():
            for m in messages:
                frame = await ws.receive(timeout=5)
                assert frame.type is aiohttp.WSMsgType.TEXT
                assert frame.data.encode() == getattr(m, kind.value)
            await ws.close()
        await until(lambda: clients(fanout) == 0)


async def test_sse_carries_the_same_payloads_as_events() -> None:
    async with live_server(HubConfig()) as (fanout, port), aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/sse?stream=domains") as domains, \
                session.get(f"http://127.0.0.1:{port}/sse") as lite:  # fmt: skip
            assert domains.headers["Content-Type"] == "text/event-stream"
            await until(lambda: clients(fanout) == 2)
            for i in range(3):
                fanout.publish(msg(i, 200))
            for response, kind in [(domains, "domains"), (lite, "lite")]:
                for i in range(3):
                    event = await response.content.readuntil(b"\n\n")
                    cursor = fanout.hub.seq - 2 + i
                    data = getattr(msg(i, 200), kind).rstrip(b"\n")
                    assert event == b"id: %d\ndata: %b\n\n" % (cursor, data)
        await until(lambda: clients(fanout) == 0)


async def test_a_client_that_reads_nothing_costs_bounded_memory_and_learns_what_it_missed() -> None:
    config = HubConfig(backlog=50, high_water=8 * 1024, tick=0.02)
    total = 3000
    async with live_server(config, SocketOptions(send_buffer=16 * 1024)) as (fanout, port), \
            aiohttp.ClientSession() as session:  # fmt: skip
        stuck = await RawClient.connect(port, rcvbuf=4096)
        fast = await session.ws_connect(f"ws://127.0.0.1:{port}/")
        await until(lambda: clients(fanout) == 2)
        fast_received: list[int] = []

        async def read_fast() -> None:
            while len(fast_received) < total:
                document = json.loads((await fast.receive(timeout=10)).data)
                assert document["message_type"] != "heartbeat" or "skipped" not in document
                if document["message_type"] != "heartbeat":
                    fast_received.append(document["data"]["seq"])

        reader = asyncio.create_task(read_fast())
        frame_size = len(msg(0).lite) + 4
        peak_backlog = peak_buffered = 0
        # The producer goes at the pace of the client that reads; the one that does not read
        # must not hold it back (a batch smaller than the backlog: the reader never overflows).
        for batch in range(0, total, 25):
            for i in range(batch, batch + 25):
                fanout.publish(msg(i))
            for client in fanout.hub.clients():
                peak_backlog = max(peak_backlog, len(client.backlog))
                peak_buffered = max(peak_buffered, client.sink.buffered())
            end = batch + 25
            await until(lambda: len(fast_received) >= end or reader.done())  # noqa: B023
        await asyncio.wait_for(reader, 20)

        # The other client got everything, in order, while this one read nothing at all.
        assert fast_received == list(range(total))
        stalled = [c for c in fanout.hub.clients() if c.dropped]
        assert len(stalled) == 1
        assert peak_backlog <= config.backlog
        # The bound: high water, plus the one frame that crossed it, plus heartbeat and ping.
        assert peak_buffered <= config.high_water + frame_size + 128

        # Now it reads: whatever it did not get is announced as skipped, the rest is in order.
        seen: list[int] = []
        skipped: list[int] = []
        while len(seen) + sum(skipped) < total:
            opcode, payload = await asyncio.wait_for(stuck.frame(), 10)
            if opcode != 0x1:
                continue
            document = json.loads(payload)
            if document["message_type"] == "heartbeat":
                skipped.append(document.get("skipped", 0))
            else:
                seen.append(document["data"]["seq"])
        assert seen == sorted(set(seen))
        assert sum(skipped) == stalled[0].dropped > 0
        assert len(seen) + sum(skipped) == total
        assert seen[-1] == total - 1  # drop-oldest: the newest messages survive
        assert clients(fanout) == 2  # slow is not dead: nobody was disconnected
        await fast.close()
        stuck.writer.close()


async def test_a_client_that_never_pings_stays_through_many_heartbeats() -> None:
    config = HubConfig(heartbeat_interval=0.05, ping_interval=0.1, stall_timeout=0.3, tick=0.01)
    async with live_server(config) as (fanout, port):
        silent = await RawClient.connect(port)  # never sends a frame, not even a pong
        await until(lambda: clients(fanout) == 1)
        heartbeats: list[bytes] = []
        pings = 0
        deadline = time.monotonic() + 1.5  # 30 heartbeat intervals, 5 stall timeouts
        while time.monotonic() < deadline:
            opcode, payload = await asyncio.wait_for(silent.frame(), 5)
            if opcode == 0x9:
                pings += 1
            else:
                assert opcode == 0x1
                heartbeats.append(payload)
        assert clients(fanout) == 1 and not fanout.hub.clients()[0].closed
        assert len(heartbeats) >= 15 and pings >= 5
        for payload in heartbeats:
            assert re.fullmatch(rb'\{"message_type":"heartbeat","timestamp":\d+\.\d+\}', payload)
            document = json.loads(payload)
            assert list(document) == ["message_type", "timestamp"]
            assert abs(document["timestamp"] - time.time()) < 5
        silent.writer.close()


async def test_a_vanished_client_is_removed() -> None:
    async with live_server(HubConfig()) as (fanout, port):
        gone = await RawClient.connect(port)
        await until(lambda: clients(fanout) == 1)
        gone.reset()
        await until(lambda: clients(fanout) == 0, within=5)
        fanout.publish(msg(0))  # publishing after the loss is harmless


async def test_a_client_that_cannot_take_anything_is_disconnected_after_stall_timeout() -> None:
    config = HubConfig(backlog=20, high_water=4096, stall_timeout=0.5, tick=0.02)
    async with live_server(config, SocketOptions(send_buffer=8 * 1024)) as (fanout, port), \
            aiohttp.ClientSession() as session:  # fmt: skip
        stuck = await RawClient.connect(port, rcvbuf=4096)
        healthy = await session.ws_connect(f"ws://127.0.0.1:{port}/")
        await until(lambda: clients(fanout) == 2)
        received = 0
        started = time.monotonic()
        published = 0
        while fanout.hub.stats.disconnected_stalled == 0:
            assert time.monotonic() - started < 10, "stuck client was never disconnected"
            for _ in range(10):  # fewer than the backlog: the healthy client must lose nothing
                fanout.publish(msg(published))
                published += 1
            while received < published:
                frame = await healthy.receive(timeout=5)
                if json.loads(frame.data)["message_type"] != "heartbeat":
                    received += 1
        assert time.monotonic() - started >= config.stall_timeout
        assert clients(fanout) == 1
        # The server aborted the connection: the stuck client finds the end of the stream.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            while True:
                await asyncio.wait_for(stuck.frame(), 5)
        await healthy.close()


async def test_sse_resumes_after_the_last_event_id_without_a_gap_or_a_duplicate() -> None:
    async with live_server(HubConfig()) as (fanout, port), aiohttp.ClientSession() as session:
        cursors = [fanout.publish(msg(i, 200)) for i in range(5)]
        # What an EventSource sends when it reconnects: the id of the last event it got.
        headers = {"Last-Event-ID": str(cursors[1])}
        async with session.get(f"http://127.0.0.1:{port}/sse", headers=headers) as sse:
            await until(lambda: clients(fanout) == 1)
            cursors.append(fanout.publish(msg(5, 200)))
            events = []
            while len(events) < 4:
                events += sse_events(await sse.content.readuntil(b"\n\n"))
        assert events == [(cursors[i], msg(i, 200).lite.rstrip(b"\n")) for i in range(2, 6)]


@pytest.mark.parametrize(
    ("query", "headers", "error"),
    [
        ("stream=bogus", {}, "stream='bogus': expected one of lite, full, domains"),
        ("stream=full&stream=lite", {}, "stream= may be given only once"),
        ("", {"Last-Event-ID": "yesterday"}, "Last-Event-ID='yesterday'"),
    ],
)
async def test_a_bad_sse_request_is_a_400_not_a_lite_stream(
    query: str, headers: dict[str, str], error: str
) -> None:
    async with live_server(HubConfig()) as (fanout, port), aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/sse?{query}", headers=headers) as resp:
            assert resp.status == 400
            assert error in (await resp.json())["error"]
        assert clients(fanout) == 0


@pytest.mark.parametrize(
    ("path", "stream"), [("/full-stream", "full"), ("/domains-only", "domains")]
)
async def test_a_browser_opening_a_websocket_endpoint_is_told_how_to_connect(
    path: str, stream: str
) -> None:
    async with live_server(HubConfig()) as (fanout, port), aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}?domain=*.example.com") as resp:
            assert resp.status == 426
            assert resp.headers["Upgrade"] == "websocket"
            assert resp.content_type == "text/plain"
            text = await resp.text()
        assert "UPGRADE" not in text  # not aiohttp's own words
        assert f"websocat ws://127.0.0.1:{port}{path}\n" in text
        assert f"curl -N 'http://127.0.0.1:{port}/sse?stream={stream}'" in text
        assert clients(fanout) == 0


async def test_a_websocket_key_that_is_not_ascii_is_a_400_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with live_server(HubConfig()) as (fanout, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /full-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: \xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0"
            b"\xef\xee\xed\xec\xeb\xea\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert clients(fanout) == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
