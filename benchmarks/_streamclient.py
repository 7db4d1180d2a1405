"""Stream clients for benchmarks/server.py: many WebSocket connections in one process, each
decoding every frame it gets and checking each log's index sequence.

Run by server.py, not by hand. It opens `--clients` connections to `ws://127.0.0.1:PORT/PATH`,
prints `ready` when all are upgraded, then obeys one command per line on stdin:

- `reset`: start counting (everything before is warm-up);
- `pause N`: the first N connections stop reading (their kernel buffers fill, then the server's
  backlog for them: the slow-client case); they are reported apart as `paused`; `resume`: they
  read again (and so learn, from a heartbeat, how many messages the server dropped for them);
- `report`: one JSON line with what was received since `reset`; `quit`.

Every frame is parsed whole (a client that only counted frame headers would not notice a
malformed or misnumbered message), with msgspec into the fields the checks read: it validates
all of the JSON but builds objects only for those fields, 2.0 µs for a 1.85 KB lite message
against orjson's 7.6 µs for the whole dict (measured here), which on 2 cores is the difference
between clients that keep up with 400,000 messages/s and clients that are the bottleneck. Per
connection and log, the indices received are kept as runs (`[first, last]` of consecutive
indices), so server.py can count exactly which of the indices the test log published in the
window each connection got, and any duplicate or reordering shows. The
seen→receipt latency (receipt time − the message's `seen`) goes into a 1-ms histogram.

The WebSocket side is a bare asyncio protocol: a general-purpose client library costs more per
frame than the server under test, and then the benchmark would measure the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
from typing import Any, cast

import msgspec

_PONG_EMPTY = b"\x8a\x80\x00\x00\x00\x00"  # masked (zero key) empty pong
HISTOGRAM_MS = 60_000


class Source(msgspec.Struct):
    url: str


class Data(msgspec.Struct):
    cert_index: int
    seen: float
    source: Source


class Message(msgspec.Struct):
    """What the checks read of a frame; unknown members are validated JSON, then skipped."""

    message_type: str
    data: Data | None = None
    skipped: int = 0


DECODE = msgspec.json.Decoder(Message).decode


class Counters:
    def __init__(self) -> None:
        self.counting = False
        self.histogram = [0] * (HISTOGRAM_MS + 1)


class Conn(asyncio.Protocol):
    def __init__(self, counters: Counters, path: str, ready: asyncio.Future[None]) -> None:
        self.counters = counters
        self.path = path
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.tail = b""
        self.paused = False
        self.closed = False
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.heartbeats = 0
        self.skipped = 0
        self.notices = 0
        self.duplicates = 0
        self.out_of_order = 0
        # per log URL: [[first, last], ...] runs of consecutive indices, in arrival order
        self.runs: dict[str, list[list[int]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
        self.closed = True
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
        n = len(data)
        pos = 0
        view = memoryview(data)
        now = time.time()
        counting = self.counters.counting
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
            if opcode == 1:
                if counting:
                    self._message(DECODE(view[pos + head : end]), now)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(_PONG_EMPTY)
            pos = end
        self.tail = data[pos:]

    def _message(self, doc: Message, now: float) -> None:
        kind = doc.message_type
        if kind == "heartbeat":
            self.heartbeats += 1
            self.skipped += doc.skipped
            return
        data = doc.data
        if kind != "certificate_update" or data is None:
            self.notices += 1  # e.g. a resume notice
            return
        index = data.cert_index
        url = data.source.url
        self.messages += 1
        ms = int((now - data.seen) * 1000)
        self.counters.histogram[min(max(ms, 0), HISTOGRAM_MS)] += 1
        runs = self.runs.get(url)
        if runs is None:
            self.runs[url] = [[index, index]]
            return
        last = runs[-1]
        if index == last[1] + 1:
            last[1] = index
        else:
            if index <= last[1]:
                if any(a <= index <= b for a, b in runs):
                    self.duplicates += 1
                else:
                    self.out_of_order += 1
            runs.append([index, index])

    def report(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "heartbeats": self.heartbeats,
            "skipped": self.skipped,
            "notices": self.notices,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "closed": self.closed,
            "paused": self.paused,
            "runs": self.runs,
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--path", default="/")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    counters = Counters()
    conns: list[Conn] = []
    batch = 50  # connect in waves so the server's accept backlog never overflows
    for start in range(0, args.clients, batch):
        waves = []
        for _ in range(start, min(start + batch, args.clients)):
            ready: asyncio.Future[None] = loop.create_future()
            conn = Conn(counters, args.path, ready)
            conns.append(conn)
            await loop.create_connection(lambda c=conn: c, "127.0.0.1", args.port)  # type: ignore[misc]
            waves.append(ready)
        await asyncio.gather(*waves)
    print("ready", flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu0, wall0 = _cpu(), time.monotonic()
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            for conn in conns:
                conn.reset()
            counters.histogram = [0] * (HISTOGRAM_MS + 1)
            counters.counting = True
            cpu0, wall0 = _cpu(), time.monotonic()
        elif line.startswith("pause "):
            for conn in conns[: int(line.split()[1])]:
                conn.paused = True
                if conn.transport is not None:
                    conn.transport.pause_reading()
        elif line == "resume":
            for conn in conns:
                if conn.paused and conn.transport is not None:
                    conn.transport.resume_reading()
        elif line == "report":
            counters.counting = False
            report = {
                "cpu_share": (_cpu() - cpu0) / max(time.monotonic() - wall0, 1e-9),
                "histogram": {str(i): c for i, c in enumerate(counters.histogram) if c},
                "conns": [c.report() for c in conns],
            }
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
        elif line == "quit":
            break
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


if __name__ == "__main__":
    # The clients are the measuring instrument, not the system under test: uvloop roughly
    # halves their per-event cost, so they stay out of the server's way.
    import uvloop

    uvloop.run(main())
