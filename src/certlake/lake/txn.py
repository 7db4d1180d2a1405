"""Exactly-once bookkeeping between the live stream and the archive (pure).

Every commit of the live sink carries, for each log it touches, a Delta transaction identifier
`(app_id = "certlake:<source_url>", version = next index not yet archived)`. Entries reach the sink
per log strictly in index order, and each commit takes a prefix of that order, so the version is
a cursor: every index below it is in the table, or recorded in the side table of skipped ranges,
or was recorded there as a range for backfill to refill. `plan_commit` turns one prefix of the
buffer into what to write, given the cursors already committed: rows at or past the cursor,
duplicates (below it) left out, never-offered holes recorded as gaps. See docs/architecture.md,
"Archive and state agree".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from certlake.certs.message import CertMessage
from certlake.ranges import Range, subtract_ranges, union_ranges

APP_ID_PREFIX = "certlake:"


def app_id(source_url: str) -> str:
    """The Delta transaction application id of one log's live cursor."""
    return APP_ID_PREFIX + source_url


class SkipKind(enum.Enum):
    """Why an index was passed without a row."""

    UNPARSEABLE = "unparseable"  # the log's bytes or the certificate do not decode
    MALFORMED = "malformed"  # the message does not fit the archive schema
    DROPPED = "dropped"  # the sink's memory bound was hit
    GAP = "gap"  # the producer never offered these indices to the sink

    @property
    def refill(self) -> bool:
        """Whether backfill should fetch the range (True), or treat it as done: refetching an
        undecodable entry gives the same undecodable bytes."""
        return self in (SkipKind.DROPPED, SkipKind.GAP)


@dataclass(frozen=True, slots=True)
class SkippedRange:
    source_url: str
    start: int
    end: int  # inclusive
    kind: SkipKind
    reason: str


def coalesce_skipped(ranges: Iterable[SkippedRange]) -> list[SkippedRange]:
    """Adjacent or overlapping ranges of one log and kind merged (the first reason kept)."""
    groups: dict[tuple[str, str], list[SkippedRange]] = {}
    for r in sorted(ranges, key=lambda r: (r.source_url, r.kind.value, r.start)):
        groups.setdefault((r.source_url, r.kind.value), []).append(r)
    out: list[SkippedRange] = []
    for group in groups.values():
        reasons: dict[int, str] = {}
        for r in group:
            reasons.setdefault(r.start, r.reason)
        url, kind = group[0].source_url, group[0].kind
        merged = union_ranges((r.start, r.end) for r in group)
        out.extend(SkippedRange(url, start, end, kind, reasons[start]) for start, end in merged)
    return out


def skips_to_add(
    ranges: Iterable[SkippedRange], recorded: Iterable[SkippedRange]
) -> list[SkippedRange]:
    """What to record so that every index of `ranges` is recorded once: `ranges` coalesced per
    log and kind, less the indices that `recorded` already holds for the same log and kind (a
    merge moving staging's records into main, run again after a crash, adds nothing twice)."""
    held: dict[tuple[str, SkipKind], list[Range]] = {}
    for r in recorded:
        held.setdefault((r.source_url, r.kind), []).append((r.start, r.end))
    return [
        SkippedRange(r.source_url, start, end, r.kind, r.reason)
        for r in coalesce_skipped(ranges)
        for start, end in subtract_ranges([(r.start, r.end)], held.get((r.source_url, r.kind), ()))
    ]


@dataclass(slots=True)
class OpenRange:
    """A skipped range still growing at the tail of the sink's buffer (consecutive indices of one
    log and kind are coalesced, so an outage costs a few ranges, not one per entry)."""

    source_url: str
    start: int
    end: int
    kind: SkipKind
    reason: str

    def frozen(self) -> SkippedRange:
        return SkippedRange(self.source_url, self.start, self.end, self.kind, self.reason)


@dataclass(slots=True)
class CommitPlan:
    rows: list[CertMessage] = field(default_factory=list)
    skipped: list[SkippedRange] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # source_url → new cursor
    duplicates: int = 0  # entries below their log's committed cursor, left out

    def add_malformed(self, bad: Iterable[tuple[CertMessage, str]]) -> None:
        """Record rows that failed conversion as passed (their cursor already covers them)."""
        for msg, reason in bad:
            self.skipped.append(
                SkippedRange(
                    msg.source_url, msg.cert_index, msg.cert_index, SkipKind.MALFORMED, reason
                )
            )


def plan_commit(
    items: Sequence[CertMessage | SkippedRange], committed: Mapping[str, int | None]
) -> CommitPlan:
    """What to commit for `items` (one prefix of the buffer, in arrival order) given each log's
    committed cursor (None: the log has never been committed). Every log in `items` must be a key
    of `committed`."""
    plan = CommitPlan()
    cursor = dict(committed)
    for item in items:
        if isinstance(item, SkippedRange):
            url, lo, hi = item.source_url, item.start, item.end
        else:
            url, lo, hi = item.source_url, item.cert_index, item.cert_index
        expected = cursor[url]
        if expected is not None:
            if hi < expected:
                if not isinstance(item, SkippedRange):
                    plan.duplicates += 1
                continue
            if lo > expected:
                plan.skipped.append(
                    SkippedRange(url, expected, lo - 1, SkipKind.GAP, "never offered to the sink")
                )
            lo = max(lo, expected)
        cursor[url] = hi + 1
        if isinstance(item, SkippedRange):
            plan.skipped.append(
                item if lo == item.start else SkippedRange(url, lo, hi, item.kind, item.reason)
            )
        else:
            plan.rows.append(item)
    plan.versions = {
        url: value
        for url, value in cursor.items()
        if value is not None and value != committed.get(url)
    }
    return plan
