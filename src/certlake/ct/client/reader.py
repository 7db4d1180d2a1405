"""What a log reader hands to the fetch loop: one batch of consecutive items from `start` on.

Both protocols' readers implement `LogReader`, so the fetch loop, the live watcher and backfill
are written once for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from certlake.ct.entry import LogEntry, LogSource


@dataclass(frozen=True, slots=True)
class FetchedEntry:
    entry: LogEntry
    cert_link: str

    @property
    def index(self) -> int:
        return self.entry.index


@dataclass(frozen=True, slots=True)
class Unparseable:
    """An entry the log served but that does not decode. It is reported and passed over: the log
    will serve the same bytes again, so retrying cannot help."""

    index: int
    error: str
    raw: bytes


Batch = list[FetchedEntry | Unparseable]


class LogReader(Protocol):
    """One log, either protocol. The fetch loop asks `chunk_end` how to cut a range into reads,
    keeps up to `depth` reads in flight once `settled` says the cut is known, and reassembles
    their answers in index order."""

    source: LogSource

    @property
    def depth(self) -> int:
        """How many reads of this log may be in flight at once."""
        ...

    @property
    def settled(self) -> bool:
        """False while the reader still learns how the log cuts its answers (reads are then
        made one at a time, each answer teaching the next)."""
        ...

    def chunk_end(self, start: int, end: int, tree_size: int) -> int:
        """The last index one read from `start` should ask for (at most `end`)."""
        ...

    @property
    def answer_cap(self) -> int | None:
        """The most entries one answer of this log holds, once known."""
        ...

    async def latest_size(self) -> int:
        """The log's current (verified when possible) tree size."""
        ...

    async def read(self, start: int, end: int, tree_size: int) -> Batch:
        """At least one item, consecutive from `start`, none past `end` or the tree; raises
        FetchError when the log gave nothing usable."""
        ...
