"""What happens to each entry a watcher reads: message built once, then handed to the stream and
to the archive — and remembered for /example.json, /latest.json and /api/cert."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_message
from certlake.ct.client.reader import FetchedEntry, Unparseable
from certlake.ct.entry import LogSource
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.watcher import Consumer

log = logging.getLogger(__name__)

LATEST = 25  # /latest.json holds the 25 newest lite messages, as the Elixir server's does


class CertIndex:
    """Recent certificates by sha256, sha1 and fingerprint for /api/cert. Bounded: it answers for
    what the server saw lately, not for the archive."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._by_key: OrderedDict[str, CertMessage] = OrderedDict()

    def add(self, msg: CertMessage) -> None:
        for key in (msg.sha256, msg.sha1):
            self._by_key[_norm(key)] = msg
            self._by_key.move_to_end(_norm(key))
        while len(self._by_key) > 2 * self._capacity:
            self._by_key.popitem(last=False)

    def get(self, key: str) -> CertMessage | None:
        return self._by_key.get(_norm(key))


def _norm(key: str) -> str:
    # Accept `AB:CD:…`, `abcd…` and any mix, as users paste whatever their tool printed.
    return key.replace(":", "").upper()


@dataclass(frozen=True, slots=True)
class Sent:
    """A message handed to the stream, with the cursor the stream gave it (None when there is
    no stream: the cursor is what lets /latest.json's reader join the stream without a seam)."""

    message: CertMessage
    cursor: int | None


class Archive(Protocol):
    """The live sink as the pipeline sees it (`lake.sink.DeltaSink`): both calls return at once."""

    def offer(self, msg: CertMessage) -> None: ...

    def offer_unparseable(self, source_url: str, index: int, reason: str) -> None: ...


class Pipeline:
    """The consumer given to every watcher. `publish` and `archive` must not block: the stream's
    hub and the sink each take the message and return at once; `publish` returns the message's
    stream cursor."""

    def __init__(
        self,
        metrics: IngestMetrics,
        publish: Callable[[CertMessage], int | None],
        archive: Archive | None = None,
        cert_index_capacity: int = 10_000,
    ) -> None:
        self.metrics = metrics
        self._publish = publish
        self._archive = archive
        self.latest: deque[Sent] = deque(maxlen=LATEST)
        self.certs = CertIndex(cert_index_capacity)
        self.processed = 0
        self.started = time.time()

    def consumer(self, source: LogSource) -> Consumer:
        async def consume(item: FetchedEntry | Unparseable) -> None:
            self.handle(source, item)

        return consume

    def handle(self, source: LogSource, item: FetchedEntry | Unparseable) -> None:
        m = self.metrics
        m.entries.labels(source.url).inc()
        if isinstance(item, Unparseable):
            m.parse_failures.labels(source.url, "entry").inc()
            self._passed_without_message(source, item.index, item.error)
            return
        try:
            msg = build_message(item.entry, source, time.time(), item.cert_link)
        except CertificateParseError as e:
            m.parse_failures.labels(source.url, "certificate").inc()
            log.error(
                "certificate does not parse",
                extra={"log": source.url, "index": item.index, "error": str(e)},
            )
            self._passed_without_message(source, item.index, f"certificate: {e}")
            return
        self.processed += 1
        self.certs.add(msg)
        self.latest.append(Sent(msg, self._publish(msg)))
        m.messages.inc()
        if self._archive is not None:
            self._archive.offer(msg)

    def _passed_without_message(self, source: LogSource, index: int, reason: str) -> None:
        # The archive must hear of every index the watcher passes, or it would record a gap.
        if self._archive is not None:
            self._archive.offer_unparseable(source.url, index, reason)
