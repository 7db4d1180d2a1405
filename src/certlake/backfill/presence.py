"""Which indices the archive holds, per log: the Delta-reading shell of gap detection (SPEC §8).

Cost follows the number of files and holes, not the table's bytes:

- The Delta log's per-file statistics (`get_add_actions`) decide which data files can hold a
  wanted `(source_url, cert_index)` at all; the others are never opened. String statistics may be
  truncated, but they stay bounds, so `min <= url <= max` never rules out a file wrongly.
- Files that are opened are read through a pyarrow dataset with two columns projected
  (`source_url` dictionary-decoded, `cert_index`) and a predicate that pyarrow pushes down to
  row-group statistics; no other column is ever decoded.
- Each batch is reduced at once to runs of consecutive indices (`gaps.keyed_runs`), so memory
  holds runs, not rows.

Statistics cannot prove a file complete: `max - min + 1 == num_records` still allows a duplicate
standing in for a hole (duplicates occur: the Rust writer and staging tables make them), and
Delta's bounds need not be tight. So statistics only ever exclude files, never vouch for them.

Catch-up mode needs one fact from above the ceiling: whether a log has any index at or past it,
which decides whether the window ends at its ceiling or at its last index. Files lying entirely
at or past the ceiling are opened only for logs whose answer is still open, one file at a time,
stopping as soon as it is known.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from certlake.backfill.gaps import (
    DEFAULT_SPLIT_SIZE,
    INT64_MAX,
    GapPlan,
    LogTarget,
    Range,
    Runs,
    RunSet,
    SourceReport,
    build_plan,
    keyed_runs,
    runs_from_ranges,
    select_logs,
)
from certlake.lake.schema import CERT_INDEX, SOURCE_URL, ArchiveSchemaError
from certlake.lake.table import read_skipped

log = logging.getLogger(__name__)

URL: Final = SOURCE_URL
INDEX: Final = CERT_INDEX
_BATCH_ROWS: Final = 1 << 17


class TableUnreadableError(ValueError):
    """A Delta table exists at the location but cannot be read (damaged log, missing file...)."""


def open_table(
    uri: str, storage_options: Mapping[str, str] | None = None, role: str = "table"
) -> DeltaTable | None:
    """The table at `uri`, or None when there is none (no location, or no commit in its log).

    Anything else that stops it from loading raises `TableUnreadableError`: treating a damaged
    table as absent would plan to refetch everything it holds."""
    try:
        return DeltaTable(uri, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise TableUnreadableError(f"{role} table {uri} cannot be read: {exc}") from exc


# --- file statistics (pure) -----------------------------------------------------------------------

_STAT_COLUMNS: Final = {
    "rows": ("num_records", pa.int64()),
    "min_idx": (f"min.{INDEX}", pa.int64()),
    "max_idx": (f"max.{INDEX}", pa.int64()),
    "min_url": (f"min.{URL}", pa.string()),
    "max_url": (f"max.{URL}", pa.string()),
}


def normalize_stats(add_actions: pa.Table) -> pa.Table:
    """`get_add_actions(flatten=True)` reduced to `path` and the statistics that matter, with
    nulls where a writer recorded none (statistics are optional in Delta)."""
    columns: dict[str, pa.Array] = {"path": add_actions.column("path")}
    for name, (source, type_) in _STAT_COLUMNS.items():
        if source in add_actions.column_names:
            columns[name] = add_actions.column(source).cast(type_)
        else:
            columns[name] = pa.nulls(add_actions.num_rows, type_)
    return pa.table(columns)


def may_hold(stats: pa.Table, url: str, lo: int, hi: int) -> pa.Array:
    """Per file: can it hold a row of log `url` with an index in `[lo, hi]`? Unknown → yes."""

    def unless_known(condition: Any) -> Any:
        return pc.fill_null(condition, True)

    lo, hi = min(lo, INT64_MAX), min(hi, INT64_MAX)
    conditions = [
        unless_known(pc.less_equal(stats.column("min_url"), url)),
        unless_known(pc.greater_equal(stats.column("max_url"), url)),
        unless_known(pc.less_equal(stats.column("min_idx"), hi)),
        unless_known(pc.greater_equal(stats.column("max_idx"), lo)),
        unless_known(pc.greater(stats.column("rows"), 0)),
    ]
    mask = conditions[0]
    for condition in conditions[1:]:
        mask = pc.and_(mask, condition)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


# --- reading --------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One opened table: its statistics, its fragments by path, and which paths were read."""

    role: str
    uri: str
    stats: pa.Table
    dataset: ds.FileSystemDataset
    fragments: dict[str, ds.Fragment]
    read: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, role: str, uri: str, table: DeltaTable) -> _Source:
        try:
            names = {f.name: f for f in pa.schema(table.schema().to_arrow())}
            for column, check in ((URL, pa.types.is_string), (INDEX, pa.types.is_integer)):
                if column not in names or not check(names[column].type):
                    raise ArchiveSchemaError(
                        f"{role} table {uri} has no {column} column of the archive's type"
                    )
            stats = normalize_stats(pa.table(table.get_add_actions(flatten=True)))
            dataset = table.to_pyarrow_dataset(
                parquet_read_options=ds.ParquetReadOptions(dictionary_columns={URL})
            )
            fragments = {f.path: f for f in dataset.get_fragments()}
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise TableUnreadableError(f"{role} table {uri} cannot be read: {exc}") from exc
        return cls(role, uri, stats, dataset, fragments)

    def paths(self, mask: pa.Array) -> list[str]:
        wanted: list[str] = pc.filter(self.stats.column("path"), mask).to_pylist()
        return [p for p in wanted if p not in self.read]

    def scan(
        self,
        paths: Sequence[str],
        urls: Sequence[str],
        lo: int,
        hi: int,
        present: Mapping[str, RunSet],
    ) -> None:
        """Fold every row of `paths` whose URL is one of `urls` and whose index lies in
        `[lo, hi]` into `present` as runs."""
        if not paths or not urls:
            return
        try:
            fragments = [self.fragments[p] for p in paths]
        except KeyError as exc:
            raise TableUnreadableError(
                f"{self.role} table {self.uri}: data file {exc} is in the log but not readable"
            ) from exc
        value_set = pa.array(urls, pa.string())
        predicate = (
            pc.field(URL).isin(value_set)
            & (pc.field(INDEX) >= max(lo, 0))
            & (pc.field(INDEX) <= min(hi, INT64_MAX))
        )
        subset = ds.FileSystemDataset(
            fragments, self.dataset.schema, self.dataset.format, self.dataset.filesystem
        )
        scanner = subset.scanner(
            columns=[URL, INDEX], filter=predicate, batch_size=_BATCH_ROWS, use_threads=True
        )
        try:
            for batch in scanner.to_batches():
                if batch.num_rows:
                    _fold(batch, value_set, urls, present)
        except (OSError, pa.ArrowException) as exc:
            raise TableUnreadableError(f"{self.role} table {self.uri}: {exc}") from exc
        self.read.update(paths)

    def report(self) -> SourceReport:
        return SourceReport(self.role, self.uri, True, self.stats.num_rows, len(self.read))


def _fold(
    batch: pa.RecordBatch,
    value_set: pa.Array,
    urls: Sequence[str],
    present: Mapping[str, RunSet],
) -> None:
    codes = pc.index_in(batch.column(URL), value_set=value_set)
    keys, starts, ends = keyed_runs(codes, batch.column(INDEX))
    for code in pc.unique(keys).to_pylist():
        mine = pc.equal(keys, code)
        present[urls[code]].add(Runs(pc.filter(starts, mine), pc.filter(ends, mine)))


def _open_sources(
    main_uri: str, staging_uri: str | None, storage_options: Mapping[str, str] | None
) -> tuple[list[_Source], list[SourceReport | _Source]]:
    """The tables that exist, opened, and a report for each location (main first)."""
    opened: list[_Source] = []
    reports: list[SourceReport | _Source] = []
    for role, uri in (("main", main_uri), ("staging", staging_uri)):
        if uri is None:
            continue
        table = open_table(uri, storage_options, role)
        if table is None:
            log.info(
                "no table at this location; nothing present there", extra={"role": role, "uri": uri}
            )
            reports.append(SourceReport(role, uri, False, 0, 0))
        else:
            opened.append(_Source.open(role, uri, table))
            reports.append(opened[-1])
    return opened, reports


def _read_windows(
    sources: Sequence[_Source],
    windows: Mapping[str, Range],
    present: Mapping[str, RunSet],
    keep_past: bool,
) -> None:
    """Pass 1: every file that may hold an index of some log's window, read in one scan.
    With `keep_past` (catch-up), rows past the windows in those files are kept too: a file
    straddling a ceiling is read once, and pass 2 must not need to open it again."""
    if not windows:
        return
    lo = min(w[0] for w in windows.values())
    hi = INT64_MAX if keep_past else max(w[1] for w in windows.values())
    for source in sources:
        mask: pa.Array | None = None
        for url, (w_lo, w_hi) in windows.items():
            hit = may_hold(source.stats, url, w_lo, w_hi)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is not None:
            source.scan(source.paths(mask), list(windows), lo, hi, present)


def _settle_beyond_ceiling(
    sources: Sequence[_Source], targets: Iterable[LogTarget], present: Mapping[str, RunSet]
) -> None:
    """Pass 2 (catch-up): for each log whose last index read so far is below C-1, find out
    whether anything at or past C exists."""
    for target in targets:
        runs = present[target.url].runs()
        first, last = runs.first, runs.last
        if first is None or last is None or first >= target.ceiling or last >= target.ceiling - 1:
            continue  # window already settled: empty, or ends at the ceiling
        _look_past_ceiling(sources, target, present[target.url])


def _look_past_ceiling(sources: Sequence[_Source], target: LogTarget, runs: RunSet) -> None:
    """Open candidate files one at a time until one shows an index at or past the ceiling."""
    for source in sources:
        for path in source.paths(may_hold(source.stats, target.url, target.ceiling, INT64_MAX)):
            source.scan([path], [target.url], target.ceiling, INT64_MAX, {target.url: runs})
            last = runs.runs().last
            if last is not None and last >= target.ceiling:
                return


def _recorded_skips(
    sources: Sequence[_Source], urls: Iterable[str], storage_options: Mapping[str, str] | None
) -> tuple[dict[str, list[Range]], dict[str, list[Range]]]:
    """Ranges each table's side table records as passed without rows, per log: those that count
    as done (undecodable: refetching gives the same bytes) and those to fetch again."""
    wanted = set(urls)
    done: dict[str, list[Range]] = {}
    refill: dict[str, list[Range]] = {}
    for source in sources:
        try:
            recorded = read_skipped(source.uri, dict(storage_options or {}))
        except (DeltaError, OSError, pa.ArrowException, ValueError) as exc:
            raise TableUnreadableError(
                f"{source.role} table {source.uri}: its record of skipped ranges cannot be read: "
                f"{exc}"
            ) from exc
        for r in recorded:
            if r.source_url in wanted:
                (refill if r.kind.refill else done).setdefault(r.source_url, []).append(
                    (r.start, r.end)
                )
    return done, refill


def plan_gaps(
    main_uri: str,
    staging_uri: str | None,
    ceilings: Mapping[str, int],
    from_index: int | None,
    *,
    logs: Mapping[str, str | None] | None = None,
    log_filter: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    split_size: int = DEFAULT_SPLIT_SIZE,
) -> GapPlan:
    """What backfill must fetch: SPEC §8's missing indices of each log, over main ∪ staging.

    `ceilings`: the state file's `current_index` per normalized log URL (empty when there is no
    state file: nothing to do). `logs`: the discovered logs (URL → name), None for the state
    file's own logs; discovered logs without a ceiling are skipped with a warning. `log_filter`:
    `--logs`. A missing table counts as empty; a table that exists but cannot be read raises
    `TableUnreadableError` (or `ArchiveSchemaError` when it lacks the two columns).
    """
    targets, skipped = select_logs(ceilings, logs, log_filter)
    for s in skipped:
        log.warning(
            "log skipped: not in the state file, so it has no ceiling", extra={"url": s.url}
        )
    sources, opened_or_absent = _open_sources(main_uri, staging_uri, storage_options)
    present = {t.url: RunSet() for t in targets}
    done, refill = _recorded_skips(sources, present, storage_options)
    for url, ranges in done.items():
        present[url].add(runs_from_ranges(ranges))
    windows: dict[str, Range] = {}
    # Pass 1 reads [0, C-1] in catch-up mode: min and max are unknown until the files are read.
    lo = 0 if from_index is None else from_index
    for t in targets:
        if lo <= t.ceiling - 1:
            windows[t.url] = (lo, t.ceiling - 1)
    _read_windows(sources, windows, present, keep_past=from_index is None)
    if from_index is None:
        _settle_beyond_ceiling(sources, targets, present)
    plan = build_plan(
        targets,
        skipped,
        {url: rs.runs() for url, rs in present.items()},
        from_index,
        split_size,
        [s.report() if isinstance(s, _Source) else s for s in opened_or_absent],
        refill,
    )
    for source in plan.sources:
        log.info(
            "gap detection read the table",
            extra={
                "role": source.role,
                "uri": source.uri,
                "present": source.present,
                "files_total": source.files_total,
                "files_read": source.files_read,
            },
        )
    return plan
