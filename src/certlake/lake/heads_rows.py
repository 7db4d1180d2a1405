"""Records of the side table of tree heads ↔ Arrow (pure).

One record per verified head and per piece of evidence against a log: a root the downloaded
entries did not reproduce (`mismatch`), two signed heads that cannot both hold (`split-view`),
entries the log served differently when read again (`served-differently`). They are kept so that
anyone can check, long after the fact and without the server's logs, which archived rows a
signed head covers and what a log was caught doing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from certlake.ct.verify import Event, Mismatch, ServedDifferently, SplitView, TreeHead, Verified
from certlake.lake.schema import HEADS_SCHEMA, INDEX_LIST, SEEN_TYPE


class HeadKind(enum.StrEnum):
    VERIFIED = "verified"  # the entries [0, size) reproduce the head's root
    # backfill: the entries [first_index, end_index) are proven to be in the head's tree
    RANGE_VERIFIED = "verified-range"
    MISMATCH = "mismatch"
    SPLIT_VIEW = "split-view"
    SERVED_DIFFERENTLY = "served-differently"


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """One row. `head` is the head concerned (the verified one; the one whose root the entries
    did not reproduce; the later of a split view); `other` the earlier head of a split view, or
    for other evidence the last verified head (None: none yet)."""

    source_url: str
    kind: HeadKind
    head: TreeHead
    detail: str
    other: TreeHead | None = None
    computed_root: bytes | None = None
    first_index: int | None = None  # the suspect range [first_index, end_index)
    end_index: int | None = None
    indices: tuple[int, ...] | None = None
    # When the row was written (µs since the epoch); set on records read back. Not compared: a
    # record is the same evidence whenever it was recorded.
    recorded_us: int | None = field(default=None, compare=False)

    @property
    def is_evidence(self) -> bool:
        return self.kind not in (HeadKind.VERIFIED, HeadKind.RANGE_VERIFIED)

    @classmethod
    def range_verified(
        cls, url: str, head: TreeHead, first: int, end: int, detail: str
    ) -> HeadRecord:
        return cls(url, HeadKind.RANGE_VERIFIED, head, detail, first_index=first, end_index=end)

    @classmethod
    def verified(cls, url: str, head: TreeHead) -> HeadRecord:
        return cls(
            url,
            HeadKind.VERIFIED,
            head,
            f"the first {head.size} entries as downloaded reproduce the signed root",
        )

    @classmethod
    def from_event(cls, url: str, event: Event, verified_head: TreeHead | None) -> HeadRecord:
        """The record of a verifier's event; `verified_head` is the log's verified head when the
        event came (the last one the entries agreed with; None: none yet), kept as `other` by
        evidence other than a split view."""
        if isinstance(event, Verified):
            return cls.verified(url, event.head)
        if isinstance(event, Mismatch):
            head = event.head
            return cls(
                url,
                HeadKind.MISMATCH,
                head,
                f"{event.detail} (computed {event.computed.hex()}, signed {head.root.hex()}); "
                f"entries [{event.first}, {head.size}) are suspect",
                other=verified_head,
                computed_root=event.computed,
                first_index=event.first,
                end_index=head.size,
            )
        if isinstance(event, ServedDifferently):
            if event.indices:
                which = f"{len(event.indices)} of them differ between the two reads"
            else:
                which = "which of them differ is not known (the first read was not kept)"
            return cls.served_differently(
                url,
                event.head,
                event.first,
                event.end,
                event.indices,
                f"a second read of [{event.first}, {event.end}) reproduced the signed root: the "
                f"entries first downloaded (streamed, archived) are not those the log committed "
                f"to; {which}",
                verified_head=verified_head,
            )
        if isinstance(event, SplitView):
            earlier, later = event.earlier, event.later
            if event.proof_checked:
                why = (
                    f"the log's consistency proof from size {earlier.size} to size "
                    f"{later.size} does not hold"
                )
            elif earlier.size == later.size:
                why = (
                    f"two signed heads of size {later.size} with different roots "
                    f"({earlier.root.hex()}, {later.root.hex()}); no consistency proof needed"
                )
            else:
                why = (
                    f"signed heads of sizes {earlier.size} and {later.size} contradict each "
                    "other; no consistency proof checked"
                )
            return cls(url, HeadKind.SPLIT_VIEW, later, why, other=earlier)
        raise TypeError(f"not a verifier event: {event!r:.200}")

    @classmethod
    def served_differently(
        cls,
        url: str,
        head: TreeHead,
        first: int,
        end: int,
        indices: Iterable[int],
        detail: str,
        *,
        verified_head: TreeHead | None = None,
    ) -> HeadRecord:
        """Entries of [first, end) that a second read returned differently (`indices`), under
        `head`."""
        return cls(
            url,
            HeadKind.SERVED_DIFFERENTLY,
            head,
            detail,
            other=verified_head,
            first_index=first,
            end_index=end,
            indices=tuple(indices),
        )


def records_to_batch(records: Sequence[HeadRecord], recorded_us: int) -> pa.RecordBatch:
    """Rows of the side table, all recorded at `recorded_us` (µs since the epoch)."""
    heads = [r.head for r in records]
    others = [r.other for r in records]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r.source_url for r in records], pa.string()),
            pa.array([HeadKind(r.kind).value for r in records], pa.string()),
            pa.array([h.size for h in heads], pa.int64()),
            pa.array([h.root for h in heads], pa.binary()),
            pa.array([h.timestamp_ms for h in heads], pa.int64()),
            pa.array([h.signature for h in heads], pa.binary()),
            pa.array([None if o is None else o.size for o in others], pa.int64()),
            pa.array([None if o is None else o.root for o in others], pa.binary()),
            pa.array([None if o is None else o.timestamp_ms for o in others], pa.int64()),
            pa.array([None if o is None else o.signature for o in others], pa.binary()),
            pa.array([r.computed_root for r in records], pa.binary()),
            pa.array([r.first_index for r in records], pa.int64()),
            pa.array([r.end_index for r in records], pa.int64()),
            pa.array([None if r.indices is None else list(r.indices) for r in records], INDEX_LIST),
            pa.array([r.detail for r in records], pa.string()),
            pa.array([recorded_us] * len(records), pa.int64()).view(SEEN_TYPE),
        ],
        schema=HEADS_SCHEMA,
    )


def batch_to_records(data: pa.Table | pa.RecordBatch) -> list[HeadRecord]:
    """The records of rows read back (columns by name; any order, any Arrow spelling)."""
    # µs as integers: `to_pylist` would make datetimes of them.
    recorded = data.column("recorded_us").cast(SEEN_TYPE).cast(pa.int64()).to_pylist()
    columns = {
        name: data.column(name).to_pylist() for name in HEADS_SCHEMA.names if name != "recorded_us"
    }
    out: list[HeadRecord] = []
    for i in range(data.num_rows):
        row = {name: values[i] for name, values in columns.items()}
        other = None
        if row["other_tree_size"] is not None:
            other = TreeHead(
                row["other_tree_size"],
                row["other_root_hash"],
                row["other_timestamp_ms"],
                row["other_signature"],
            )
        indices = row["indices"]
        out.append(
            HeadRecord(
                row["source_url"],
                HeadKind(row["kind"]),
                TreeHead(row["tree_size"], row["root_hash"], row["timestamp_ms"], row["signature"]),
                row["detail"],
                other=other,
                computed_root=row["computed_root"],
                first_index=row["first_index"],
                end_index=row["end_index"],
                indices=None if indices is None else tuple(indices),
                recorded_us=recorded[i],
            )
        )
    return out
