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
    """The first `head.size` entries as downloaded do not hash to the head's root."""

    head: TreeHead
    computed: bytes
    verified_before: int  # the verified position when it was found (entries from here are suspect)


@dataclass(frozen=True, slots=True)
class SplitView:
    """Two signed heads the log cannot both have meant: the same size with different roots, or
    (`proof_checked`) a consistency proof between them that does not hold."""

    earlier: TreeHead
    later: TreeHead
    proof_checked: bool = False


Event = Verified | Mismatch | SplitView


class LogVerifier:
    """One log's verification. `leaves(begin, hashes)` as entries arrive, in index order;
    `head(h)` for each signed head seen. Both return what they established."""

    def __init__(self) -> None:
        self._range = CompactRange(0)
        self._verified: TreeHead | None = None
        # Heads seen, by size; those above the downloaded position are pending.
        self._heads_by_size: dict[int, TreeHead] = {}
        self._at_verified = CompactRange(0)  # the range as it was at the verified head
        self._mismatched = False  # entries disagreed with a head (cleared by `rewind`)
        self._split = False  # the log signed two heads that cannot both hold (for good)

    @property
    def downloaded(self) -> int:
        return self._range.end

    @property
    def verified_index(self) -> int:
        """Entries below this are verified (0: none yet)."""
        return 0 if self._verified is None else self._verified.size

    @property
    def verified_head(self) -> TreeHead | None:
        return self._verified

    @property
    def state(self) -> Verification:
        if self._mismatched or self._split:
            return Verification.INCONSISTENT
        return Verification.OK if self._next_pending() is None else Verification.PENDING

    def head(self, head: TreeHead) -> list[Event]:
        """A signed head of this log was seen."""
        seen = self._heads_by_size.get(head.size)
        if seen is not None:
            if seen.root == head.root:
                return []
            self._split = True
            return [SplitView(seen, head)]
        self._heads_by_size[head.size] = head
        if head.size < self.downloaded:
            # Older than what is downloaded: its root was passed without being computed. The
            # shell checks it against a verified head by a consistency proof.
            return []
        if head.size == self.downloaded:
            return self._check(head)
        return []  # pending: checked once the entries reach its size

    def leaves(self, begin: int, hashes: Sequence[bytes]) -> list[Event]:
        """Leaf hashes of the entries [begin, begin + len(hashes)), which must follow on from
        what was downloaded."""
        if begin != self.downloaded:
            raise ValueError(f"entries from {begin} do not follow on from {self.downloaded}")
        events: list[Event] = []
        i = 0
        while i < len(hashes):
            # Up to the next pending head exactly: the range's root at that size is its root.
            pending = self._next_pending()
            take = len(hashes) - i
            if pending is not None:
                take = min(take, pending.size - self.downloaded)
            for h in hashes[i : i + take]:
                self._range.append(h)
            i += take
            if pending is not None and pending.size == self.downloaded:
                events += self._check(pending)
        return events

    def _next_pending(self) -> TreeHead | None:
        """The smallest head above what is downloaded."""
        above = [h for h in self._heads_by_size.values() if h.size > self.downloaded]
        return min(above, key=lambda h: h.size) if above else None

    def rewind(self) -> int:
        """After a `Mismatch`: forget what was downloaded past the verified position, so that it
        can be fetched once more; returns the index to fetch from. A split view stays."""
        self._range = self._at_verified.copy()
        self._mismatched = False
        return self.downloaded

    def consistent(self, earlier: TreeHead, later: TreeHead, proof: Sequence[bytes]) -> list[Event]:
        """The log's consistency proof between two of its heads, as the shell fetched it."""
        if verify_consistency(earlier.size, later.size, earlier.root, later.root, proof):
            return []
        self._split = True
        return [SplitView(earlier, later, proof_checked=True)]

    def _check(self, head: TreeHead) -> list[Event]:
        computed = self._range.root()
        if computed != head.root:
            self._mismatched = True
            return [Mismatch(head, computed, self.verified_index)]
        if self._mismatched or self._split:
            return []  # nothing past a contradiction counts as verified
        self._verified = head
        self._at_verified = self._range.copy()
        # Heads below the verified one are only ever checked by proof from here on: not kept,
        # so that a log watched for months holds a few heads, not one per second.
        self._heads_by_size = {s: h for s, h in self._heads_by_size.items() if s >= head.size}
        return [Verified(head)]
