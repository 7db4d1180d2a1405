"""Verified ingest for one log: its entries folded into a compact range and checked against the
log's signed tree heads (pure).

Two positions are kept apart, as Cert Spotter keeps them: *downloaded* (every entry below it has
been received, in order) and *verified* (the size of the last signed tree head whose root the
downloaded entries reproduce). Entries are streamed as soon as they are downloaded; only the
verified position says which of them the log has committed to. The verified position never
moves past a mismatch.

What is caught here, from entries and tree heads alone:
- a tampered entry or a head whose root does not match its entries: the root computed over the
  first `size` entries differs from the head's (`Mismatch`);
- a split view at one size: two signed heads of the same size with different roots
  (`SplitView`). Heads of different sizes are checked for consistency by the shell, which asks
  the log for a proof (`get-sth-consistency`, or tiles) and passes the answer to `consistent`.

No I/O: the shell (live watcher, backfill) feeds leaf hashes and heads in and acts on the
events that come out (log, metric, state, side table, re-fetch).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from certlake.ct.compact import CompactRange
from certlake.ct.merkle import verify_consistency


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed tree head (RFC 6962 STH or static-ct checkpoint), already signature-checked."""

    size: int
    root: bytes
    timestamp_ms: int = 0
    signature: bytes = b""


class Verification(enum.Enum):
    OK = "ok"  # everything downloaded up to the newest head checked so far is verified
    PENDING = "pending"  # a head is known whose entries have not all arrived yet
    INCONSISTENT = "inconsistent"  # the log contradicted itself; verification stopped there


@dataclass(frozen=True, slots=True)
class Verified:
    head: TreeHead


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first `head.size` entries as downloaded do not hash to the head's root (or, when the
    watcher started mid-log, the log's own inclusion proof does not lead to it)."""

    head: TreeHead
    computed: bytes
    first: int  # the suspect entries are [first, head.size): all since the last one checked
    detail: str = "the entries do not hash to the signed root"


@dataclass(frozen=True, slots=True)
class SplitView:
    """Two signed heads the log cannot both have meant: the same size with different roots, or
    (`proof_checked`) a consistency proof between them that does not hold."""

    earlier: TreeHead
    later: TreeHead
    proof_checked: bool = False


@dataclass(frozen=True, slots=True)
class ServedDifferently:
    """A second read of a mismatched range reproduced the head's root: the log's tree is sound,
    but the entries first downloaded (streamed, archived) were not the ones it committed to.
    `indices` are those whose two reads differ (empty when the first read's hashes were not
    kept)."""

    head: TreeHead
    first: int
    end: int
    indices: tuple[int, ...]


Event = Verified | Mismatch | SplitView | ServedDifferently

# Leaf hashes kept since the verified position, to name the entries a second read serves
# differently: 32 bytes each, 2 MiB per log at most; past it only the range is named.
_WINDOW_CAP = 65_536
# Heads awaiting their entries. A watcher far behind sees a new head every poll; the smallest
# ones are checked next and the newest says where the log is, so the ones between are dropped
# (each later head covers them by computation).
_PENDING_CAP = 64


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a restart needs to go on verifying without downloading again: the verified head and
    the subtree hashes of [0, head.size) (`compact.subtrees` order)."""

    head: TreeHead
    nodes: tuple[bytes, ...]
    inconsistent: bool


class LogVerifier:
    """One log's verification. `leaves(begin, hashes)` as entries arrive, in index order;
    `head(h)` for each signed head seen. Both return what they established.

    A verifier that starts mid-log (`unanchored`) buffers leaf hashes until the shell gives it
    the range [0, start) from the log's proofs or hash tiles (`anchor`); its first head then
    checks those hashes together with the entries."""

    def __init__(self, prefix: CompactRange | None = None, verified: TreeHead | None = None):
        self._range: CompactRange | None = prefix if prefix is not None else CompactRange(0)
        self._begin = self._range.end
        self._downloaded = self._range.end
        self._verified = verified
        # The range at the last point checked (the verified head, or a mid-log start's prefix):
        # what a second read of a mismatched range starts from.
        self._base: CompactRange | None = self._range.copy()
        self._heads_by_size: dict[int, TreeHead] = {}
        # Leaf hashes from the verified position (or, unanchored, from the start) on.
        self._window: list[bytes] | None = []
        self._mismatch: Mismatch | None = None  # the first, awaiting its second read
        self._mismatch_window: list[bytes] | None = None
        self._inconsistent = False  # for good: nothing past a contradiction is verified

    @classmethod
    def unanchored(cls, start: int) -> LogVerifier:
        v = cls()
        v._range = v._base = None
        v._begin = v._downloaded = start
        return v

    @classmethod
    def resumed(cls, snapshot: Snapshot, downloaded: int | None = None) -> LogVerifier:
        """Going on from a snapshot. A log found inconsistent stays so, and its entries are not
        checked any more: it may then go on from wherever the download does (`downloaded`)."""
        head = snapshot.head
        v = cls(CompactRange.of_nodes(0, head.size, snapshot.nodes), head)
        v._heads_by_size[head.size] = head
        v._inconsistent = snapshot.inconsistent
        if snapshot.inconsistent and downloaded is not None:
            v._downloaded = downloaded
        return v

    @property
    def downloaded(self) -> int:
        return self._downloaded

    @property
    def anchored(self) -> bool:
        return self._range is not None

    @property
    def start(self) -> int:
        """Where this verifier's own downloads began (a mid-log start needs [0, start))."""
        return self._begin

    @property
    def first_leaf(self) -> bytes | None:
        """The leaf hash at `start`, once downloaded (while unanchored), for an inclusion proof."""
        if self._range is None and self._window:
            return self._window[0]
        return None

    @property
    def verified_index(self) -> int:
        """Entries below this are verified (0: none yet)."""
        return 0 if self._verified is None else self._verified.size

    @property
    def verified_head(self) -> TreeHead | None:
        return self._verified

    @property
    def state(self) -> Verification:
        if self._inconsistent or self._mismatch is not None:
            return Verification.INCONSISTENT
        if self._range is None or self._next_pending() is not None:
            return Verification.PENDING
        return Verification.OK

    def snapshot(self) -> Snapshot | None:
        base = self._base
        if self._verified is None or base is None or base.end != self._verified.size:
            return None
        return Snapshot(self._verified, tuple(n.hash for n in base.nodes), self._inconsistent)

    def head(self, head: TreeHead) -> list[Event]:
        """A signed head of this log was seen."""
        seen = self._heads_by_size.get(head.size)
        if seen is not None:
            if seen.root == head.root:
                return []
            return self._contradiction([SplitView(seen, head)])
        if head.size < self.downloaded:
            # Its entries passed without it: the shell checks it against a verified head with a
            # consistency proof.
            return []
        self._heads_by_size[head.size] = head
        self._thin()
        if head.size == self.downloaded and self._range is not None:
            return self._check(head)
        return []  # pending: checked once the entries reach its size

    def leaves(self, begin: int, hashes: Sequence[bytes]) -> list[Event]:
        """Leaf hashes of the entries [begin, begin + len(hashes)), which must follow on from
        what was downloaded."""
        if begin != self.downloaded:
            raise ValueError(f"entries from {begin} do not follow on from {self.downloaded}")
        self._keep(hashes)
        if self._range is None or self._inconsistent or self._mismatch is not None:
            self._downloaded += len(hashes)
            return []
        return self._grow(hashes)

    def _grow(self, hashes: Sequence[bytes]) -> list[Event]:
        assert self._range is not None
        events: list[Event] = []
        i = 0
        while i < len(hashes):
            # Up to the next pending head exactly: the range's root at that size is its root.
            pending = self._next_pending()
            take = len(hashes) - i
            if pending is not None:
                take = min(take, pending.size - self._range.end)
            for h in hashes[i : i + take]:
                self._range.append(h)
            i += take
            self._downloaded = self._range.end
            if pending is not None and pending.size == self._range.end:
                events += self._check(pending)
                if self._mismatch is not None:
                    self._downloaded += len(hashes) - i
                    break
        return events

    def anchor(self, prefix: CompactRange) -> list[Event]:
        """[0, start) as the log's proofs or hash tiles give it; the hashes buffered since the
        start are then checked against the heads they reach."""
        if self._range is not None or prefix.begin != 0 or prefix.end != self._begin:
            raise ValueError(f"a prefix [0, {prefix.end}) does not anchor a start at {self._begin}")
        if self._window is None:
            raise ValueError(f"too many entries since {self._begin} to check them from a prefix")
        self._range, self._base = prefix, prefix.copy()
        buffered, self._window = self._window, []
        self._downloaded = self._begin
        # A head at the start itself is checked by the prefix alone.
        at_start = self._heads_by_size.get(self._begin)
        events = self._check(at_start) if at_start is not None else []
        return events + self.leaves(self._begin, buffered)

    def anchor_failed(self, head: TreeHead, computed: bytes, detail: str) -> list[Event]:
        """The log's proof for the start does not lead to `head`'s root."""
        return self._contradiction([Mismatch(head, computed, self._begin, detail)])

    @property
    def recheck_range(self) -> tuple[int, int] | None:
        """After a `Mismatch`: the range to read once more, [first, end)."""
        if self._mismatch is None:
            return None
        return self._mismatch.first, self._mismatch.head.size

    def recheck(self, hashes: Sequence[bytes]) -> list[Event]:
        """The leaf hashes of `recheck_range` as read the second time. The log stays
        inconsistent either way: a second read that does hash to the root shows that the first
        (already streamed and archived) was not what the log committed to."""
        mismatch = self._mismatch
        if mismatch is None:
            raise ValueError("nothing to read again")
        first, end = mismatch.first, mismatch.head.size
        if len(hashes) != end - first:
            raise ValueError(f"[{first}, {end}) is {end - first} entries, got {len(hashes)}")
        self._mismatch, earlier, self._mismatch_window = None, self._mismatch_window, None
        self._inconsistent = True
        assert self._base is not None and self._base.end == first
        again = self._base.copy()
        for h in hashes:
            again.append(h)
        if again.root() != mismatch.head.root:
            return []  # the same answer: the entries and the head disagree
        differ: tuple[int, ...] = ()
        if earlier is not None and len(earlier) == len(hashes):
            differ = tuple(
                first + i for i, (a, b) in enumerate(zip(earlier, hashes, strict=True)) if a != b
            )
        return [ServedDifferently(mismatch.head, first, end, differ)]

    def consistent(self, earlier: TreeHead, later: TreeHead, proof: Sequence[bytes]) -> list[Event]:
        """The log's consistency proof between two of its heads, as the shell fetched it."""
        if verify_consistency(earlier.size, later.size, earlier.root, later.root, proof):
            return []
        return self._contradiction([SplitView(earlier, later, proof_checked=True)])

    # --- inside ---------------------------------------------------------------------------------

    def _contradiction(self, events: list[Event]) -> list[Event]:
        if self._inconsistent:
            return []  # reported once: a log that lied is not believed again, nor reported daily
        self._inconsistent = True
        return events

    def _next_pending(self) -> TreeHead | None:
        """The smallest head above what is downloaded."""
        above = [h for h in self._heads_by_size.values() if h.size > self.downloaded]
        return min(above, key=lambda h: h.size) if above else None

    def _thin(self) -> None:
        pending = sorted(s for s in self._heads_by_size if s > self.downloaded)
        for size in pending[_PENDING_CAP // 2 : -1][: max(0, len(pending) - _PENDING_CAP)]:
            del self._heads_by_size[size]

    def _keep(self, hashes: Sequence[bytes]) -> None:
        window = self._window
        if window is None:
            return
        if len(window) + len(hashes) > _WINDOW_CAP:
            self._window = None
            return
        window.extend(hashes)

    def _check(self, head: TreeHead) -> list[Event]:
        assert self._range is not None
        if self._inconsistent or self._mismatch is not None:
            return []
        computed = self._range.root()
        if computed != head.root:
            assert self._base is not None
            self._mismatch = Mismatch(head, computed, self._base.end)
            window = self._window
            self._mismatch_window = None if window is None else window[: head.size - self._base.end]
            self._window = None  # nothing after it is checked: no more to keep
            return [self._mismatch]
        assert self._base is not None
        if self._window is not None:
            # The batch being fed may reach past this head: what follows it stays kept.
            del self._window[: head.size - self._base.end]
        self._verified = head
        self._base = self._range.copy()
        # Heads below the verified one are only ever checked by proof from here on: not kept,
        # so that a log watched for months holds a few heads, not one per second.
        self._heads_by_size = {s: h for s, h in self._heads_by_size.items() if s >= head.size}
        return [Verified(head)]


def range_root(prefix: CompactRange, leaves: CompactRange) -> bytes:
    """The root of the tree [0, leaves.end) from [0, leaves.begin) and the leaves that follow."""
    whole = prefix.copy()
    whole.merge(leaves)
    return whole.root()


def range_in_head(
    prefix: CompactRange, leaves: CompactRange, head: TreeHead, proof: Sequence[bytes]
) -> bool:
    """Whether `leaves` (a downloaded range) are, after `prefix` (the log's proof of what comes
    before them), the beginning of the tree `head` signed: at once when the range ends at the
    head, else by the log's consistency proof from the range's end to the head. This is how
    backfill checks a range in the middle of a log without reading the rest of it."""
    root = range_root(prefix, leaves)
    if leaves.end == head.size:
        return root == head.root and not proof
    return verify_consistency(leaves.end, head.size, root, head.root, proof)
