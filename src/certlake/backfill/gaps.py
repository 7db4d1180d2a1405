"""What backfill must fetch: present indices in, missing work ranges out.

Pure: no I/O. `presence.py` reads the tables and feeds this module Arrow arrays.

Present indices are kept as *runs*, maximal intervals of consecutive indices, never as one value
per row: a log of a billion entries with a thousand holes is a thousand and one runs, so memory
and time follow the number of holes, not the size of the archive. Arrays are pyarrow int64 and
every step over them is a vectorized kernel; Python loops only ever walk runs or ranges.

Per log with ceiling C (the state file's `current_index`, exclusive), over the union of the
tables, each distinct index counted once:

- catch-up: every index of `[min, min(max, C-1)]` not present (min/max: the smallest and largest
  present index); a log with no present index below C has nothing to catch up on.
- historical (`--from F`): every index of `[F, C-1]` not present.

The archive's own record of indices it passed without rows (`lake/txn.py`, `SkipKind`) refines
this: undecodable entries count as present (refetching returns the same bytes, so they are not
holes), and ranges recorded for refilling are work even outside the window, below the ceiling
and from F on (entries dropped at a log's tail lie after its last present index).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from certlake.ranges import Range, range_text, ranges_text, subtract_ranges, union_ranges
from certlake.texttable import text_table

INT64_MAX: Final = 2**63 - 1
DEFAULT_SPLIT_SIZE: Final = 100_000
NOT_IN_STATE: Final = "not in the state file"
NOT_IN_TABLE: Final = "no entries below its ceiling in the table(s)"


class GapInputError(ValueError):
    """An argument that no plan can be made from (negative bound, split size below 1, ...)."""


# --- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Runs:
    """Present indices as int64 arrays: `[starts[i], ends[i]]` sorted, disjoint, non-adjacent."""

    starts: pa.Array
    ends: pa.Array

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def first(self) -> int | None:
        """The smallest present index."""
        return int(self.starts[0].as_py()) if len(self.starts) else None

    @property
    def last(self) -> int | None:
        """The largest present index."""
        return int(self.ends[-1].as_py()) if len(self.ends) else None

    def count(self) -> int:
        """How many distinct indices are present."""
        if not len(self.starts):
            return 0
        return int(pc.sum(pc.subtract(self.ends, self.starts)).as_py()) + len(self.starts)


EMPTY_RUNS: Final = Runs(pa.array([], pa.int64()), pa.array([], pa.int64()))


def _shift_left_true(mask: pa.Array) -> pa.Array:
    """`mask[1:] + [True]`: marks the last element of each group whose first `mask` marks."""
    return pa.concat_arrays([mask.slice(1), pa.array([True])])


def keyed_runs(keys: pa.Array, values: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Runs of `values` per key, in any input order, duplicates allowed, nulls not.

    Returns `(key, start, end)` arrays sorted by key then start; within one key the runs are
    maximal, so each key's runs are a valid `Runs`.
    """
    if len(keys) != len(values):
        raise GapInputError(f"{len(keys)} keys for {len(values)} values")
    if len(values) == 0:
        return keys.slice(0, 0), pa.array([], pa.int64()), pa.array([], pa.int64())
    table = pa.table({"k": keys, "v": values.cast(pa.int64())})
    if table.column("k").null_count or table.column("v").null_count:
        raise GapInputError("null key or index")
    table = table.sort_by([("k", "ascending"), ("v", "ascending")])
    k = table.column("k").combine_chunks()
    v = table.column("v").combine_chunks()
    # A run starts where the key changes or the index jumps by more than one; a step of 0 is a
    # duplicate and stays in its run. pairwise_diff is null at position 0, which starts a run.
    new = pc.or_(pc.not_equal(pc.pairwise_diff(k), 0), pc.greater(pc.pairwise_diff(v), 1))
    new = pc.fill_null(new, True)
    last = _shift_left_true(new)
    return pc.filter(k, new), pc.filter(v, new), pc.filter(v, last)


def runs_of(values: pa.Array | Sequence[int]) -> Runs:
    """The runs of a bag of indices (any order, duplicates allowed)."""
    array = values if isinstance(values, pa.Array) else pa.array(values, pa.int64())
    if array.null_count:
        raise GapInputError("null index")
    _, starts, ends = keyed_runs(pa.repeat(pa.scalar(0, pa.int8()), len(array)), array)
    return Runs(starts, ends)


def coalesce(parts: Iterable[Runs]) -> Runs:
    """The union of several `Runs` (overlapping or adjacent runs merge)."""
    chunks = [p for p in parts if len(p)]
    if not chunks:
        return EMPTY_RUNS
    if len(chunks) == 1:
        return chunks[0]
    starts = pa.concat_arrays([c.starts for c in chunks])
    ends = pa.concat_arrays([c.ends for c in chunks])
    order = pc.sort_indices(starts)
    starts, ends = pc.take(starts, order), pc.take(ends, order)
    reach = pc.cumulative_max(ends)  # the furthest index covered by runs 0..i
    # Run i starts a new group when a hole separates it from everything before it. Written as
    # start - 1 > reach rather than start > reach + 1 so that an index of 2**63-1 cannot overflow.
    gap = pc.greater(pc.subtract(starts.slice(1), 1), reach.slice(0, len(reach) - 1))
    new = pa.concat_arrays([pa.array([True]), gap])
    return Runs(pc.filter(starts, new), pc.filter(reach, _shift_left_true(new)))


class RunSet:
    """The present indices of one log, accumulated chunk by chunk in bounded memory: pending
    chunks are folded into the coalesced runs whenever they outgrow them."""

    def __init__(self, compact_at: int = 1 << 16) -> None:
        self._runs = EMPTY_RUNS
        self._pending: list[Runs] = []
        self._pending_len = 0
        self._compact_at = compact_at

    def add(self, runs: Runs) -> None:
        if not len(runs):
            return
        self._pending.append(runs)
        self._pending_len += len(runs)
        if self._pending_len > max(self._compact_at, 2 * len(self._runs)):
            self._compact()

    def _compact(self) -> None:
        self._runs = coalesce([self._runs, *self._pending])
        self._pending = []
        self._pending_len = 0

    def runs(self) -> Runs:
        if self._pending:
            self._compact()
        return self._runs


# --- ranges ---------------------------------------------------------------------------------------


def complement(runs: Runs, lo: int, hi: int) -> list[Range]:
    """The maximal ranges of `[lo, hi]` that no run covers. `hi` may exceed int64."""
    if lo < 0:
        raise GapInputError(f"negative lower bound {lo}")
    if lo > hi:
        return []
    # Only the runs that touch [lo, hi] are brought into Python: their number is the number of
    # holes in the window (plus one), whatever the number of indices.
    touching = pc.and_(
        pc.greater_equal(runs.ends, min(lo, INT64_MAX)),
        pc.less_equal(runs.starts, min(hi, INT64_MAX)),
    )
    covered = zip(
        pc.filter(runs.starts, touching).to_pylist(),
        pc.filter(runs.ends, touching).to_pylist(),
        strict=True,
    )
    return subtract_ranges([(lo, hi)], covered)


def missing_ranges(present: pa.Array | Sequence[int], lo: int, hi: int) -> list[Range]:
    """Coalesced inclusive ranges of `[lo, hi]` holding no index of `present`."""
    return complement(runs_of(present), lo, hi)


def split_ranges(ranges: Iterable[Range], size: int) -> list[Range]:
    """`ranges` cut into pieces of at most `size` indices, in order, so that several workers can
    share one log's work."""
    if size < 1:
        raise GapInputError(f"split size must be at least 1, got {size}")
    out: list[Range] = []
    for start, end in ranges:
        if start > end:
            raise GapInputError(f"empty range [{start}, {end}]")
        out.extend((s, min(s + size - 1, end)) for s in range(start, end + 1, size))
    return out


def runs_from_ranges(ranges: Iterable[Range]) -> Runs:
    merged = union_ranges(ranges)
    return Runs(
        pa.array([s for s, _ in merged], pa.int64()), pa.array([e for _, e in merged], pa.int64())
    )


def catch_up_window(runs: Runs, ceiling: int) -> Range | None:
    """`[min, min(max, C-1)]`, or None when nothing present lies below the ceiling."""
    first, last = runs.first, runs.last
    if first is None or last is None:
        return None
    hi = min(last, ceiling - 1)
    return (first, hi) if first <= hi else None


def historical_window(from_index: int, ceiling: int) -> Range | None:
    """`[F, C-1]`, or None when F is at or past the ceiling."""
    if from_index < 0:
        raise GapInputError(f"negative --from {from_index}")
    return (from_index, ceiling - 1) if from_index <= ceiling - 1 else None


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogTarget:
    """A log to plan for: its normalized URL, its name when known, its ceiling."""

    url: str
    name: str | None
    ceiling: int


@dataclass(frozen=True, slots=True)
class SkippedLog:
    url: str
    name: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class LogGaps:
    """One log's share of the plan. `window` is the interval examined (None when empty),
    `missing` its coalesced holes, `work` the same indices split for the workers."""

    url: str
    name: str | None
    ceiling: int
    window: Range | None
    missing: tuple[Range, ...]
    work: tuple[Range, ...]

    @property
    def missing_count(self) -> int:
        return sum(end - start + 1 for start, end in self.missing)


@dataclass(frozen=True, slots=True)
class SourceReport:
    """What gap detection did with one table: `role` main/staging, `present` False when no table
    exists there, and how many of its data files had to be opened."""

    role: str
    uri: str
    present: bool
    files_total: int
    files_read: int


@dataclass(frozen=True, slots=True)
class GapPlan:
    from_index: int | None
    split_size: int
    logs: tuple[LogGaps, ...]
    skipped: tuple[SkippedLog, ...]
    sources: tuple[SourceReport, ...]

    @property
    def mode(self) -> str:
        return "catch-up" if self.from_index is None else "historical"

    @property
    def missing_count(self) -> int:
        return sum(g.missing_count for g in self.logs)

    @property
    def work_items(self) -> tuple[tuple[str, int, int], ...]:
        """Every `(url, start, end)` a worker should fetch, log by log, in index order."""
        return tuple((g.url, s, e) for g in self.logs for s, e in g.work)


def log_matches(log_filter: str | None, url: str, name: str | None) -> bool:
    """`--logs`: a log is selected when its URL or its name contains the text (no filter: all)."""
    return log_filter is None or log_filter in url or log_filter in (name or "")


def select_logs(
    ceilings: Mapping[str, int],
    logs: Mapping[str, str | None] | None = None,
    log_filter: str | None = None,
) -> tuple[list[LogTarget], list[SkippedLog]]:
    """The logs to plan for, and those skipped for want of a ceiling.

    `logs` are the discovered logs (URL → name); None means the state file's logs, unnamed.
    `log_filter` keeps logs whose URL or name contains it; the others are not mentioned at all.
    """
    candidates: Mapping[str, str | None] = logs if logs is not None else dict.fromkeys(ceilings)
    targets: list[LogTarget] = []
    skipped: list[SkippedLog] = []
    for url, name in candidates.items():
        if not log_matches(log_filter, url, name):
            continue
        ceiling = ceilings.get(url)
        if ceiling is None:
            skipped.append(SkippedLog(url, name, NOT_IN_STATE))
        elif ceiling < 0:
            raise GapInputError(f"negative ceiling {ceiling} for {url}")
        else:
            targets.append(LogTarget(url, name, ceiling))
    return targets, skipped


def log_window(target: LogTarget, runs: Runs, from_index: int | None) -> Range | None:
    if from_index is None:
        return catch_up_window(runs, target.ceiling)
    return historical_window(from_index, target.ceiling)


def build_plan(
    targets: Sequence[LogTarget],
    skipped: Sequence[SkippedLog],
    present: Mapping[str, Runs],
    from_index: int | None,
    split_size: int = DEFAULT_SPLIT_SIZE,
    sources: Sequence[SourceReport] = (),
    refill: Mapping[str, Sequence[Range]] | None = None,
) -> GapPlan:
    """The plan for `targets` given each log's present runs (logs absent from `present` have
    none). In catch-up mode a log with nothing to fetch and nothing present below its ceiling
    is skipped.

    `refill`: ranges the archive recorded as passed without rows, to be fetched again (see
    `lake/txn.py`); what of them lies below the ceiling (and at or after `--from`) and is not
    present is added to the work, even outside the window (a drop at a log's tail is after its
    last present index)."""
    if split_size < 1:
        raise GapInputError(f"split size must be at least 1, got {split_size}")
    planned: list[LogGaps] = []
    also_skipped: list[SkippedLog] = []
    floor = 0 if from_index is None else from_index
    for target in targets:
        runs = present.get(target.url, EMPTY_RUNS)
        window = log_window(target, runs, from_index)
        wanted = [] if window is None else [window]
        for start, end in (refill or {}).get(target.url, ()):
            start, end = max(start, floor), min(end, target.ceiling - 1)
            if start <= end:
                wanted.append((start, end))
        if not wanted and from_index is None:
            also_skipped.append(SkippedLog(target.url, target.name, NOT_IN_TABLE))
            continue
        missing = union_ranges(
            r for lo, hi in union_ranges(wanted) for r in complement(runs, lo, hi)
        )
        planned.append(
            LogGaps(
                url=target.url,
                name=target.name,
                ceiling=target.ceiling,
                window=window,
                missing=tuple(missing),
                work=tuple(split_ranges(missing, split_size)),
            )
        )
    return GapPlan(
        from_index=from_index,
        split_size=split_size,
        logs=tuple(planned),
        skipped=(*skipped, *also_skipped),
        sources=tuple(sources),
    )


# --- display --------------------------------------------------------------------------------------

_SHOWN_RANGES: Final = 3


def log_label(url: str, name: str | None) -> str:
    """How a log is named to people: `name (url)`, or its URL when it has no name."""
    return url if name is None else f"{name} ({url})"


def skipped_lines(skipped: Iterable[SkippedLog]) -> list[str]:
    return [f"skipped: {log_label(s.url, s.name)}: {s.reason}" for s in skipped]


def format_plan_table(plan: GapPlan) -> str:
    """`certlake gaps`' output: one row per log, then skipped logs, sources and totals."""
    header = ("LOG", "CEILING", "WINDOW", "MISSING", "RANGES", "WORK", "FIRST RANGES")
    rows = [
        (
            log_label(g.url, g.name),
            str(g.ceiling),
            range_text(g.window) if g.window is not None else "-",
            str(g.missing_count),
            str(len(g.missing)),
            str(len(g.work)),
            ranges_text(g.missing, _SHOWN_RANGES) or "-",
        )
        for g in plan.logs
    ]
    lines = text_table(header, rows, left=(0, 2, 6))
    mode = "catch-up" if plan.from_index is None else f"historical from {plan.from_index}"
    lines.insert(0, f"Gap plan ({mode}, work items of at most {plan.split_size} entries)")
    lines.extend(skipped_lines(plan.skipped))
    for src in plan.sources:
        state = (
            f"{src.files_read} of {src.files_total} data files read"
            if src.present
            else "no table there"
        )
        lines.append(f"{src.role} table {src.uri}: {state}")
    work = sum(len(g.work) for g in plan.logs)
    ranges = sum(len(g.missing) for g in plan.logs)
    lines.append(
        f"total: {plan.missing_count} missing entries in {ranges} ranges, {work} work items, "
        f"{len(plan.logs)} logs planned, {len(plan.skipped)} skipped"
    )
    return "\n".join(lines) + "\n"
