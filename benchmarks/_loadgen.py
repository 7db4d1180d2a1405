"""Load generator for benchmarks/fanout.py: many WebSocket clients in one process.

Run by fanout.py, not by hand. It opens `--clients` connections to `ws://127.0.0.1:PORT/`,
prints `ready` when all are upgraded, then obeys one command per line on stdin:

- `reset`: zero the counters; `latency on|off`: time each data frame against its `"seen"` field;
- `report`: print one JSON line with the counters since the last reset; `quit`.

The client is a bare asyncio protocol that walks frame headers without copying payloads: a
general-purpose client library costs more per frame than the server under test, and then the
benchmark would only measure the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import sys
import time
from typing import cast

_PONG_EMPTY = b"\x8a\x80\x00\x00\x00\x00"  # masked (zero key) empty pong


class Counters:
    def __init__(self) -> None:
        self.frames = 0
        self.heartbeats = 0
        self.skipped = 0
        self.latency = False
        self.latencies: list[float] = []
        self.last_frame_at = 0.0


class Client(asyncio.Protocol):
    def __init__(self, counters: Counters, path: str, ready: asyncio.Future[None]) -> None:
        self.counters = counters
        self.path = path
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.tail = b""
        self.frames = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, do not isinstance.
        self.transport = stream = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        stream.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.tail = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(data[:200].decode(errors="replace")))
                return
            self.upgraded = True
            self.ready.set_result(None)
            data = data[end + 4 :]
        counters = self.counters
        n = len(data)
        pos = 0
        frames = 0
        while pos + 2 <= n:
            size = data[pos + 1] & 0x7F
            if size < 126:
                head = 2
            elif size == 126:
                if pos + 4 > n:
                    break
                size = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            else:
                if pos + 10 > n:
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + size
            if end > n:
                break
            opcode = data[pos] & 0x0F
            body = pos + head
            if opcode == 1:
                if data[body + 2] == 0x6D:  # {"message_type":"heartbeat"...
                    counters.heartbeats += 1
                    beat = json.loads(data[body:end])
                    counters.skipped += beat.get("skipped", 0)
                else:
                    frames += 1
                    if counters.latency:
                        at = data.find(b'"seen":', body, end) + 7
                        seen = float(data[at : data.find(b",", at, end)])
                        counters.latencies.append(time.time() - seen)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(_PONG_EMPTY)
            pos = end
        self.tail = data[pos:]
        if frames:
            self.frames += frames
            counters.frames += frames
            counters.last_frame_at = time.monotonic()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--path", default="/")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    counters = Counters()
    clients: list[Client] = []
    batch = 50  # connect in waves so the server's accept backlog never overflows
    for start in range(0, args.clients, batch):
        waves = []
        for _ in range(start, min(start + batch, args.clients)):
            ready: asyncio.Future[None] = loop.create_future()
            client = Client(counters, args.path, ready)
            clients.append(client)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", args.port)  # type: ignore[misc]
            waves.append(ready)
        await asyncio.gather(*waves)
    print("ready", flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu0, wall0 = _cpu(), time.monotonic()
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            counters.frames = counters.heartbeats = counters.skipped = 0
            counters.latencies = []
            for client in clients:
                client.frames = 0
            cpu0, wall0 = _cpu(), time.monotonic()
        elif line.startswith("latency "):
            counters.latency = line.endswith("on")
        elif line == "report":
            lat = sorted(counters.latencies)
            per_client = [c.frames for c in clients]
            report = {
                "frames": counters.frames,
                "min_per_client": min(per_client),
                "max_per_client": max(per_client),
                "heartbeats": counters.heartbeats,
                "skipped": counters.skipped,
                "last_frame_at": counters.last_frame_at,
                "open": sum(1 for c in clients if c.transport and not c.transport.is_closing()),
                "cpu_share": (_cpu() - cpu0) / max(time.monotonic() - wall0, 1e-9),
                "latency_n": len(lat),
                "p50_ms": statistics.median(lat) * 1000 if lat else None,
                "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
                "max_ms": lat[-1] * 1000 if lat else None,
            }
            print(json.dumps(report), flush=True)
        elif line == "quit":
            break
    for client in clients:
        if client.transport is not None:
            client.transport.close()


if __name__ == "__main__":
    try:
        # The load generator is the measuring instrument, not the system under test: uvloop
        # roughly halves its per-event cost, so it stays out of the way of the server.
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
