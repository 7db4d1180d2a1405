"""Which indices the archive holds, per log: gap detection's reading of the tables.

Cost follows the number of files and holes, not the table's bytes:

- The Delta log's per-file statistics decide which data files can hold a wanted
  `(source_url, cert_index)` at all (`lake/files.may_hold`); the others are never opened.
- Files that are opened are read for their two key columns only, with a predicate pushed down to
  row-group statistics (`lake/files.TableFiles.scan_keys`).
- Each batch is reduced at once to runs of consecutive indices (`gaps.keyed_runs`), so memory
  holds runs, not rows.

Statistics cannot prove a file complete: `max - min + 1 == num_records` still allows a duplicate
standing in for a hole (duplicates occur: the Rust writer and staging tables make them), and
Delta's bounds need not be tight. So statistics only ever exclude files, never vouch for them.

Data files never change, so what reading one found is kept (`lake/known_runs`: the runs of
each file, in a side table beside the table): files recorded there are not opened again, the
others are read whole (their two key columns) and recorded afterwards, so a second detection over
the same files opens none, whatever the number of rows. Recording is best effort (a failure only
costs reading those files again); files the snapshot no longer holds are never taken from it. A
file counts in `SourceReport.files_read` whether its keys came from the file or from the record
of it, so the plan is the same either way; the log line says how many were opened.

Catch-up mode needs one fact from above the ceiling: whether a log has any index at or past it,
which decides whether the window ends at its ceiling or at its last index. Files lying entirely
at or past the ceiling are opened only for logs whose answer is still open, one file at a time,
stopping as soon as it is known.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from certlake.backfill.gaps import (
    DEFAULT_SPLIT_SIZE,
    GapPlan,
    LogTarget,
    Runs,
    RunSet,
    SourceReport,
    build_plan,
    keyed_runs,
    runs_from_ranges,
    select_logs,
)
from certlake.lake.files import TableFiles, may_hold
from certlake.lake.known_runs import (
    FIRST,
    LAST,
    NOTHING_KNOWN,
    KnownRuns,
    append_runs,
    read_known,
    runs_of_scan,
    union_runs,
    usable,
)
from certlake.lake.schema import CERT_INDEX, INT64_MAX, SOURCE_URL, ArchiveSchemaError
from certlake.lake.table import (
    STORAGE_ERRORS,
    TableUnreadableError,
    read_skipped,
    table_storage_options,
)
from certlake.ranges import Range

log = logging.getLogger(__name__)

_BATCH_ROWS: Final = 1 << 17


# --- reading --------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One opened table, which of its files were consulted, and what its runs cache holds.
    With `cached` unset (no cache wanted, or it cannot be used) files are read as they were
    before the cache existed: only the rows of the wanted logs and indices."""

    files: TableFiles
    cached: bool
    known: KnownRuns = NOTHING_KNOWN
    read: set[str] = field(default_factory=set)
    opened: int = 0
    fresh: list[pa.Table] = field(default_factory=list)

    @classmethod
    def open(cls, files: TableFiles, urls: Sequence[str], use_cache: bool) -> _Source:
        names = {f.name: f for f in files.schema}
        for column, check in ((SOURCE_URL, pa.types.is_string), (CERT_INDEX, pa.types.is_integer)):
            if column not in names or not check(names[column].type):
                raise ArchiveSchemaError(
                    f"{files.role} table {files.uri} has no {column} column of the archive's type"
                )
        source = cls(files, use_cache and usable(files))
        if source.cached:
            live = files.stats.column("path").to_pylist()
            try:
                source.known = read_known(files.uri, files.storage_options, live, urls)
            except TableUnreadableError as exc:
                log.warning(
                    "the runs cache cannot be read; the data files are read instead",
                    extra={"role": files.role, "uri": files.uri, "error": str(exc)},
                )
                source.cached = False
        return source

    def paths(self, mask: pa.Array) -> list[str]:
        wanted: list[str] = pc.filter(self.files.stats.column("path"), mask).to_pylist()
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
        lo, hi = max(lo, 0), min(hi, INT64_MAX)
        if self.cached:
            known = [p for p in paths if p in self.known.paths]
            unknown = [p for p in paths if p not in self.known.paths]
            parts = [self.known.of(known, urls)]
            if unknown:
                # Whole files, not the wanted rows only: what is recorded must be all they hold.
                fresh = runs_of_scan(unknown, self.files.scan_file_keys(unknown, _BATCH_ROWS))
                self.fresh.append(fresh)
                self.opened += len(unknown)
                parts.append(fresh)
            _fold_runs(pa.concat_tables(parts), urls, lo, hi, present)
        else:
            value_set = pa.array(urls, pa.string())
            predicate = (
                pc.field(SOURCE_URL).isin(value_set)
                & (pc.field(CERT_INDEX) >= lo)
                & (pc.field(CERT_INDEX) <= hi)
            )
            for batch in self.files.scan_keys(paths, predicate, _BATCH_ROWS):
                if batch.num_rows:
                    _fold(batch, value_set, urls, present)
            self.opened += len(paths)
        self.read.update(paths)

    def record(self) -> int:
        """Record the runs of the files this detection read (best effort); how many files."""
        if not self.fresh:
            return 0
        files = self.files
        try:
            append_runs(files.uri, files.storage_options, self.fresh)
        except Exception as exc:  # whatever failed, it only costs reading these files again
            log.warning(
                "could not record the runs of the files read; they will be read again",
                extra={"role": files.role, "uri": files.uri, "error": str(exc)},
            )
            return 0
        return self.opened

    def report(self) -> SourceReport:
        files = self.files
        return SourceReport(files.role, files.uri, True, files.stats.num_rows, len(self.read))


def _fold(
    batch: pa.RecordBatch,
    value_set: pa.Array,
    urls: Sequence[str],
    present: Mapping[str, RunSet],
) -> None:
    codes = pc.index_in(batch.column(SOURCE_URL), value_set=value_set)
    keys, starts, ends = keyed_runs(codes, batch.column(CERT_INDEX))
    for code in pc.unique(keys).to_pylist():
        mine = pc.equal(keys, code)
        present[urls[code]].add(Runs(pc.filter(starts, mine), pc.filter(ends, mine)))


def _fold_runs(
    runs: pa.Table, urls: Sequence[str], lo: int, hi: int, present: Mapping[str, RunSet]
) -> None:
    """Fold files' runs (`known_runs` rows) into `present`, cut to `[lo, hi]`, as reading the
    files' rows of `urls` in that range would have."""
    keep = pc.and_(
        pc.is_in(runs.column(SOURCE_URL), value_set=pa.array(urls, pa.string())),
        pc.and_(
            pc.less_equal(runs.column(FIRST), runs.column(LAST)),
            pc.and_(pc.greater_equal(runs.column(LAST), lo), pc.less_equal(runs.column(FIRST), hi)),
        ),
    )
    runs = runs.filter(keep)
    if not runs.num_rows:
        return
    for url in pc.unique(runs.column(SOURCE_URL)).to_pylist():
        mine = runs.filter(pc.equal(runs.column(SOURCE_URL), url))
        merged = union_runs(mine.column(FIRST).combine_chunks(), mine.column(LAST).combine_chunks())
        present[url].add(
            Runs(pc.max_element_wise(merged.starts, lo), pc.min_element_wise(merged.ends, hi))
        )


def _open_sources(
    main_uri: str,
    staging_uri: str | None,
    storage_options: Mapping[str, str] | None,
    urls: Sequence[str],
    use_cache: bool,
) -> tuple[list[_Source], list[SourceReport | _Source]]:
    """The tables that exist, opened, and a report for each location (main first)."""
    opened: list[_Source] = []
    reports: list[SourceReport | _Source] = []
    for role, uri in (("main", main_uri), ("staging", staging_uri)):
        if uri is None:
            continue
        files = TableFiles.open(uri, table_storage_options(uri, storage_options), role)
        if files is None:
            log.info(
                "no table at this location; nothing present there", extra={"role": role, "uri": uri}
            )
            reports.append(SourceReport(role, uri, False, 0, 0))
        else:
            opened.append(_Source.open(files, urls, use_cache))
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
    segments = [(url, w_lo, w_hi) for url, (w_lo, w_hi) in windows.items()]
    for source in sources:
        mask = may_hold(source.files.stats, segments)
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
        segment = (target.url, target.ceiling, INT64_MAX)
        for path in source.paths(may_hold(source.files.stats, [segment])):
            source.scan([path], [target.url], target.ceiling, INT64_MAX, {target.url: runs})
            last = runs.runs().last
            if last is not None and last >= target.ceiling:
                return


def _recorded_skips(
    sources: Sequence[_Source], urls: Iterable[str]
) -> tuple[dict[str, list[Range]], dict[str, list[Range]]]:
    """Ranges each table's side table records as passed without rows, per log: those that count
    as done (undecodable: refetching gives the same bytes) and those to fetch again."""
    wanted = set(urls)
    done: dict[str, list[Range]] = {}
    refill: dict[str, list[Range]] = {}
    for source in sources:
        files = source.files
        try:
            recorded = read_skipped(files.uri, files.storage_options)
        except (*STORAGE_ERRORS, ValueError) as exc:
            raise TableUnreadableError(
                f"{files.role} table {files.uri}: its record of skipped ranges cannot be read: "
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
    runs_cache: bool = True,
) -> GapPlan:
    """What backfill must fetch: each log's indices below its ceiling that neither main nor
    staging holds (`gaps.py`: catch-up and historical windows, recorded skips).

    `ceilings`: the state file's `current_index` per normalized log URL (empty when there is no
    state file: nothing to do). `logs`: the discovered logs (URL → name), None for the state
    file's own logs; discovered logs without a ceiling are skipped with a warning. `log_filter`:
    `--logs`. `storage_options`: the configured object-store options (given to s3:// tables
    only). A missing table counts as empty; a table that exists but cannot be read raises
    `TableUnreadableError` (or `ArchiveSchemaError` when it lacks the two columns).
    `runs_cache`: take the runs of files already read from each table's runs cache, and record
    those of the files read (False: read every file needed, record nothing; the same plan).
    """
    targets, skipped = select_logs(ceilings, logs, log_filter)
    for s in skipped:
        log.warning(
            "log skipped: not in the state file, so it has no ceiling", extra={"url": s.url}
        )
    sources, opened_or_absent = _open_sources(
        main_uri, staging_uri, storage_options, [t.url for t in targets], runs_cache
    )
    present = {t.url: RunSet() for t in targets}
    done, refill = _recorded_skips(sources, present)
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
    for entry in opened_or_absent:
        report = entry.report() if isinstance(entry, _Source) else entry
        extra: dict[str, object] = {
            "role": report.role,
            "uri": report.uri,
            "present": report.present,
            "files_total": report.files_total,
            "files_read": report.files_read,
        }
        if isinstance(entry, _Source):
            extra.update(files_opened=entry.opened, files_recorded=entry.record())
        log.info("gap detection read the table", extra=extra)
    return plan
