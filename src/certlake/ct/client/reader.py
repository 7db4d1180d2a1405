"""What a log reader hands to the fetch loop: one batch of consecutive items from `start` on.

Both protocols' readers implement `LogReader`, so the fetch loop, the live watcher and backfill
are written once for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from certlake.ct.compact import CompactRange
from certlake.ct.entry import LogEntry, LogSource
from certlake.ct.leaf import decode_get_entries_element, served_leaf_hash_of
from certlake.ct.merkle import leaf_hash
from certlake.ct.tls import DecodeError
from certlake.ct.urls import get_entries_link
from certlake.ct.verify import TreeHead


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
    # The hash of the leaf as served, when its bytes could be had: what verification folds in.
    leaf_hash: bytes | None = None


class ProofRefused(Exception):
    """A log's proof that does not hold: the root it leads to is not the signed one."""

    def __init__(self, detail: str, head: TreeHead, computed: bytes) -> None:
        super().__init__(detail)
        self.head = head
        self.computed = computed


def served_leaf_hash(item: FetchedEntry | Unparseable) -> bytes:
    """The leaf hash of an entry as the log served it. One whose bytes could not be had at all
    gets a hash no leaf has (of nothing), so the root it is part of cannot match."""
    if isinstance(item, FetchedEntry):
        return leaf_hash(item.entry.leaf_input)
    return item.leaf_hash if item.leaf_hash is not None else UNHASHABLE


UNHASHABLE = bytes(32)


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One element of an RFC 6962 `get-entries` answer, not yet decoded: its `leaf_input` and
    `extra_data` members as served (base64 text, or whatever a broken log put there).

    Decoding is left to whoever does the CPU work — `settle` on the live path, the build workers
    in backfill, so that the event loop only reads — and a bad element costs only itself.
    """

    index: int
    leaf_input: object
    extra_data: object


Decoded = FetchedEntry | Unparseable
Batch = list[FetchedEntry | Unparseable | RawEntry]


def settle(item: FetchedEntry | Unparseable | RawEntry, log_url: str) -> Decoded:
    """`item` decoded, if it is not yet: an entry, or the reason it does not decode."""
    if not isinstance(item, RawEntry):
        return item
    try:
        entry = decode_get_entries_element(item.index, item.leaf_input, item.extra_data)
    except DecodeError as e:
        return Unparseable(item.index, str(e), served_leaf_hash_of(item.leaf_input))
    return FetchedEntry(entry, get_entries_link(log_url, item.index))


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

    async def latest_head(self) -> TreeHead:
        """The log's current tree head, its signature checked when the log's key is known."""
        ...

    async def prefix(
        self, start: int, head: TreeHead, first_leaf: bytes | None
    ) -> CompactRange | None:
        """The subtrees of [0, start) in the tree of `head`, from the log's own proofs, for a
        watcher that starts at `start` without the entries before it. None while it cannot be
        had yet (RFC 6962 proves it by the inclusion of the leaf at `start`, `first_leaf`, so
        it needs that leaf and a head past it). Raises ProofRefused for a proof that does not
        hold, FetchError when the log does not answer."""
        ...

    async def consistency(self, old_size: int, later: TreeHead) -> list[bytes]:
        """The log's consistency proof from its tree of `old_size` to `later` (RFC 9162
        §2.1.4)."""
        ...

    async def read(self, start: int, end: int, tree_size: int) -> Batch:
        """At least one item, consecutive from `start`, none past `end` or the tree; raises
        FetchError when the log gave nothing usable."""
        ...
