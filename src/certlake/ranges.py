"""Inclusive index ranges of a log: merging them and showing them to people. Pure."""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]  # inclusive [start, end]


def union_ranges(ranges: Iterable[Range]) -> list[Range]:
    """`ranges` sorted, overlapping and adjacent ones merged."""
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract_ranges(ranges: Iterable[Range], taken: Iterable[Range]) -> list[Range]:
    """The indices of `ranges` that no range of `taken` covers, as coalesced ranges."""
    cut = union_ranges(taken)
    out: list[Range] = []
    first = 0  # the first range of `cut` that can still overlap: both lists are sorted
    for start, end in union_ranges(ranges):
        while first < len(cut) and cut[first][1] < start:
            first += 1
        lo = start
        for cut_start, cut_end in cut[first:]:
            if cut_start > end:
                break
            if cut_start > lo:
                out.append((lo, cut_start - 1))
            lo = max(lo, cut_end + 1)
        if lo <= end:
            out.append((lo, end))
    return out


def intersect_ranges(ranges: Iterable[Range], within: Iterable[Range]) -> list[Range]:
    """Each range of `within`, in order, cut down to the indices that `ranges` holds: a range
    stays apart from its neighbours even when they touch (they are separate work items)."""
    held = union_ranges(ranges)
    out: list[Range] = []
    for r in within:
        out.extend(subtract_ranges([r], subtract_ranges([r], held)))
    return out


def range_text(r: Range) -> str:
    """`52-60`, or `40` for a range of one index."""
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def ranges_text(ranges: Iterable[Range], shown: int) -> str:
    """`10-19, 40, 52-60` with at most `shown` ranges, then how many more; empty for none."""
    items = list(ranges)
    text = ", ".join(range_text(r) for r in items[:shown])
    more = len(items) - shown
    return f"{text}, … (+{more} more)" if more > 0 else text
