"""What happens to each entry a watcher reads: message built once, then handed to the stream and
to the archive — and remembered for /example.json, /latest.json and /api/cert.

Building a message (certificate parsing, JSON) is most of the live path's CPU; with build workers
(`stream.build_workers`) it runs in other processes, so the event loop only reads, verifies and
fans out, and a burst of entries does not hold it. Each log's entries go to the workers in
batches of what its watcher handed over since the loop last ran (a `get-entries` answer, a
tile's worth), and their messages are delivered in index order, one log's batches in the order
they were sent; logs do not wait for each other. A watcher is held (its `consume` waits) while
`MAX_IN_FLIGHT` of its entries are being built, so a log that grows faster than workers build
is read no faster than that. Without workers the same `build_messages` runs at once, inline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from certlake.certs.message import CertMessage, Streamed
from certlake.ct.client.reader import FetchedEntry, Unparseable
from certlake.ct.entry import LogSource
from certlake.ingest.build import Built, NotBuilt, build_messages
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.packed import Packed, pack
from certlake.ingest.watcher import Consumer
from certlake.ingest.workers import WorkerPool

log = logging.getLogger(__name__)

LATEST = 25  # /latest.json holds the 25 newest lite messages, as the Elixir server's does
# Entries of one log handed to one worker at most: a burst of a busy log is spread over workers.
BATCH = 256
# Entries of one log being built before its watcher waits: a few answers' worth, so reads and
# builds overlap, and a bound on what a crash of the workers could hold.
MAX_IN_FLIGHT = 2048
# Payload bytes /api/cert remembers (each certificate is counted under both its hashes).
CERT_INDEX_BYTES = 32 * 1024 * 1024


class CertIndex:
    """Recent certificates' full-stream payloads by sha256 and sha1 for /api/cert. Bounded in
    entries and in bytes: it answers for what the server saw lately, not for the archive. The
    payload is the stream's own bytes object, so what the resume ring also holds is not copied."""

    def __init__(self, capacity: int, max_bytes: int = CERT_INDEX_BYTES) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._by_key: OrderedDict[str, bytes] = OrderedDict()

    def add(self, msg: Streamed) -> None:
        for key in (msg.sha256, msg.sha1):
            k = _norm(key)
            old = self._by_key.pop(k, None)
            if old is not None:
                self._bytes -= len(old)
            self._by_key[k] = msg.full
            self._bytes += len(msg.full)
        while len(self._by_key) > 2 * self._capacity or self._bytes > self._max_bytes:
            self._bytes -= len(self._by_key.popitem(last=False)[1])

    def get(self, key: str) -> bytes | None:
        """The full-stream payload of the certificate with this sha256 or sha1."""
        return self._by_key.get(_norm(key))


def _norm(key: str) -> str:
    # Accept `AB:CD:…`, `abcd…` and any mix, as users paste whatever their tool printed.
    return key.replace(":", "").upper()


@dataclass(frozen=True, slots=True)
class Sent:
    """A message handed to the stream, with the cursor the stream gave it (None when there is
    no stream: the cursor is what lets /latest.json's reader join the stream without a seam)."""

    message: Streamed
    cursor: int | None


class Archive(Protocol):
    """The live sink as the pipeline sees it (`lake.sink.DeltaSink`): both calls return at once."""

    def offer(self, msg: CertMessage) -> None: ...

    def offer_unparseable(self, source_url: str, index: int, reason: str) -> None: ...


@dataclass(slots=True)
class _Flight:
    """A batch sent to the workers: kept packed, so that it can be built here should they fail."""

    built: asyncio.Future[list[Built]]
    packed: Packed
    seen: float


@dataclass(slots=True)
class _LogQueue:
    """One log's entries between its watcher and delivery."""

    source: LogSource
    pending: list[FetchedEntry | Unparseable] = field(default_factory=list)
    flights: deque[_Flight] = field(default_factory=deque)
    in_flight: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)


class Pipeline:
    """The consumer given to every watcher. `publish` and `archive` must not block: the stream's
    hub and the sink each take the message and return at once; `publish` returns the message's
    stream cursor. `workers`: a started pool running `build_messages`, or None to build inline."""

    def __init__(
        self,
        metrics: IngestMetrics,
        publish: Callable[[Streamed], int | None],
        archive: Archive | None = None,
        cert_index_capacity: int = 10_000,
        workers: WorkerPool | None = None,
    ) -> None:
        self.metrics = metrics
        self._publish = publish
        self._archive = archive
        self._archived = archive is not None
        self._workers = workers
        self._queues: dict[str, _LogQueue] = {}
        self.latest: deque[Sent] = deque(maxlen=LATEST)
        self.certs = CertIndex(cert_index_capacity)
        self.processed = 0
        self.started = time.time()

    def consumer(self, source: LogSource) -> Consumer:
        if self._workers is None:

            async def consume_inline(item: FetchedEntry | Unparseable) -> None:
                self.handle(source, item)

            return consume_inline
        queue = self._queues.setdefault(source.url, _LogQueue(source))

        async def consume(item: FetchedEntry | Unparseable) -> None:
            # Wait before taking the item: a watcher cancelled here has handed nothing over.
            while queue.in_flight >= MAX_IN_FLIGHT:
                queue.room.clear()
                await queue.room.wait()
            queue.pending.append(item)
            queue.in_flight += 1
            if len(queue.pending) >= BATCH:
                self._send(queue)
            elif len(queue.pending) == 1:
                asyncio.get_running_loop().call_soon(self._send, queue)

        return consume

    def handle(self, source: LogSource, item: FetchedEntry | Unparseable) -> None:
        """Build and deliver one entry now, here."""
        for built in build_messages(source, pack([item]), time.time(), self._archived):
            self._deliver(source, built)

    async def drain(self) -> None:
        """Return once every entry handed over has been delivered (call after the watchers
        stopped, before the archive is closed)."""
        while True:
            building = [f.built for q in self._queues.values() for f in q.flights]
            if building:
                await asyncio.wait(building)
            elif any(q.pending for q in self._queues.values()):
                await asyncio.sleep(0)  # their `_send` is scheduled: let it run
            else:
                return

    def _send(self, queue: _LogQueue) -> None:
        if not queue.pending:
            return
        packed, queue.pending = pack(queue.pending), []
        seen = time.time()
        loop = asyncio.get_running_loop()
        if self._workers is None:  # they failed: build here
            built: asyncio.Future[list[Built]] = loop.create_future()
            built.set_result(build_messages(queue.source, packed, seen, self._archived))
        else:
            built = self._workers.submit(len(packed), queue.source, packed, seen, self._archived)
        queue.flights.append(_Flight(built, packed, seen))
        built.add_done_callback(lambda _: self._land(queue))

    def _land(self, queue: _LogQueue) -> None:
        """Deliver every batch at the head of the log's queue that is built, in order."""
        while queue.flights and queue.flights[0].built.done():
            flight = queue.flights.popleft()
            try:
                batch = flight.built.result()
            except Exception as e:  # a worker died or the pool broke: nothing may be lost
                if self._workers is not None:
                    log.error(
                        "build workers failed; building messages on the event loop from now on",
                        extra={"error": repr(e)},
                    )
                    self._workers = None
                batch = build_messages(queue.source, flight.packed, flight.seen, self._archived)
            for built in batch:
                self._deliver(queue.source, built)
            queue.in_flight -= len(flight.packed)
        if queue.in_flight < MAX_IN_FLIGHT:
            queue.room.set()

    def keep(self, streamed: Streamed, cursor: int | None) -> None:
        """What the HTTP API keeps of a published message (`/latest.json`, `/api/cert`); an
        edge, which builds nothing, calls it for each relayed one."""
        self.certs.add(streamed)
        self.latest.append(Sent(streamed, cursor))
        self.metrics.messages.inc()

    def _deliver(self, source: LogSource, built: Built) -> None:
        m = self.metrics
        m.entries.labels(source.url).inc()
        if isinstance(built, NotBuilt):
            m.parse_failures.labels(source.url, built.part).inc()
            reason = built.reason
            if built.part == "certificate":
                log.error(
                    "certificate does not parse",
                    extra={"log": source.url, "index": built.cert_index, "error": reason},
                )
                reason = f"certificate: {reason}"
            # The archive must hear of every index the watcher passes, or it would record a gap.
            if self._archive is not None:
                self._archive.offer_unparseable(source.url, built.cert_index, reason)
            return
        self.processed += 1
        streamed = built if isinstance(built, Streamed) else Streamed.of(built)
        self.keep(streamed, self._publish(streamed))
        if self._archive is not None and isinstance(built, CertMessage):
            self._archive.offer(built)
