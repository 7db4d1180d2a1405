"""The key runs of a table's data files, remembered beside the table: what gap detection would
otherwise read every data file for.

A Delta data file never changes and its path is never reused (writers name files by UUID; a
file whose rows change is rewritten under a new path and the old one removed). So the runs of
consecutive `cert_index` values a file holds per `source_url` are a fact about its path forever,
and are read from the file once.

Layout: `<table>/_certlake_runs` (a `_` directory inside the table, like the skipped ranges and
the domain index: Delta readers and VACUUM of the table ignore it, and it travels with the
table). One row per run per file: `path` (as the table's log names the file), `source_url`,
`first`, `last` (inclusive; maximal runs: two runs of one file and log are at least one index
apart). Each recorded file also has one *entry row*, `source_url` "" and `first` 0, `last` -1:
an empty run (`last < first`, which no run has, so even a log whose URL were "" stays apart),
saying that the file's runs are all there even when none is of a log a reader asks about (and
that a file without rows was read). A file's rows are written in one commit, so a file is
either fully recorded or not at all. The table is small: a file holds a slice of time, so a log
has one run in it, plus one per hole.

Rules for readers (`read_known`):
- Only paths in the table's current snapshot count; rows of files removed since (compacted,
  rewritten by a DELETE, vacuumed) are ignored, and `prune` drops them.
- A path may be recorded more than once (two processes recording at once, a record retried);
  the copies are equal, so exact duplicates are dropped. Copies that disagree cannot come from
  this module; should two overlap anyway, the path is not trusted and its file is read again.
- Tables whose readers need deletion vectors are never served from here: a deletion vector
  removes rows of a file without changing its path (`usable`).

Recording is best effort for gap detection: a record that fails only means a later read of the
file. `record` (after compaction, from `certlake maintain`) fills in every file not yet recorded,
so that gap detection afterwards opens no data file; `prune` rewrites the cache without the
files the table no longer holds. Concurrent writers are safe: records are blind appends, and
`prune`'s overwrite removes only the cache files of the snapshot it read, so a record committed
meanwhile stays.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake
from deltalake.exceptions import CommitFailedError

from certlake.backfill.gaps import Runs, keyed_runs
from certlake.lake.files import TableFiles
from certlake.lake.schema import CERT_INDEX, SOURCE_URL
from certlake.lake.table import (
    STORAGE_ERRORS,
    TableUnreadableError,
    child_uri,
    delete_table,
    open_table,
    table_storage_options,
    writer_properties,
)

log = logging.getLogger(__name__)

RUNS_DIR: Final = "_certlake_runs"
PATH: Final = "path"
FIRST: Final = "first"
LAST: Final = "last"
RUNS_SCHEMA: Final = pa.schema(
    [
        pa.field(PATH, pa.string(), nullable=False),
        pa.field(SOURCE_URL, pa.string(), nullable=False),
        pa.field(FIRST, pa.int64(), nullable=False),
        pa.field(LAST, pa.int64(), nullable=False),
    ]
)
_COLUMNS: Final = list(RUNS_SCHEMA.names)
_ENTRY_URL: Final = ""
# Rows of the table read per batch while recording, and data-file rows per commit of `record`:
# runs are small, but a commit per few million rows read keeps a long record's progress.
_BATCH_ROWS: Final = 1 << 17
_COMMIT_ROWS: Final = 4_000_000
_COMPRESSION_LEVEL: Final = 3
# A prune deletes the cache files it replaced once they are this old: a reader that loaded the
# cache's previous version just before has long finished reading it.
_VACUUM_HOURS: Final = 1


def runs_uri(table_uri: str) -> str:
    return child_uri(table_uri, RUNS_DIR)


def usable(files: TableFiles) -> bool:
    """Whether a path's runs stay true for this table: not when deletion vectors may remove rows
    from a file in place."""
    return "deletionVectors" not in files.reader_features


# --- runs of files --------------------------------------------------------------------------------


def _entry(path: str) -> pa.Table:
    return pa.table(
        {
            PATH: pa.array([path], pa.string()),
            SOURCE_URL: pa.array([_ENTRY_URL], pa.string()),
            FIRST: pa.array([0], pa.int64()),
            LAST: pa.array([-1], pa.int64()),
        },
        schema=RUNS_SCHEMA,
    )


def _dictionary(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        return column
    return pc.dictionary_encode(column)


def file_runs(path: str, batches: Sequence[pa.RecordBatch]) -> pa.Table:
    """The rows recording one file: its entry row and its runs, from all of its key batches.
    Rows with a null key are left out (gap detection never counted them)."""
    parts = [b for b in batches if b.num_rows]
    if not parts:
        return _entry(path)
    urls = pa.chunked_array([_dictionary(b.column(SOURCE_URL)) for b in parts]).unify_dictionaries()
    dictionary = urls.chunk(0).dictionary.cast(pa.string())
    codes = pa.concat_arrays([c.indices for c in urls.chunks]).cast(pa.int32())
    values = pa.concat_arrays([b.column(CERT_INDEX).cast(pa.int64()) for b in parts])
    if codes.null_count or values.null_count or dictionary.null_count:
        valid = pc.and_(pc.is_valid(codes), pc.is_valid(values))
        if dictionary.null_count:
            null_codes = pc.indices_nonzero(pc.is_null(dictionary)).cast(pa.int32())
            valid = pc.and_(valid, pc.invert(pc.is_in(codes, value_set=null_codes)))
        codes, values = pc.filter(codes, valid), pc.filter(values, valid)
    if len(pc.unique(dictionary)) != len(dictionary):
        # A dictionary may repeat a value; runs are per URL, not per code.
        unique = pc.unique(dictionary)
        codes = pc.take(pc.index_in(dictionary, value_set=unique), codes)
        dictionary = unique
    keys, starts, ends = keyed_runs(codes, values)
    runs = pa.table(
        {
            PATH: pa.repeat(pa.scalar(path, pa.string()), len(keys)),
            SOURCE_URL: pc.take(dictionary, keys),
            FIRST: starts,
            LAST: ends,
        },
        schema=RUNS_SCHEMA,
    )
    return pa.concat_tables([_entry(path), runs])


class _Rows:
    """Recording rows gathered file by file: few-row tables, concatenated now and then so that
    tens of thousands of files are not as many Arrow tables."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        self._parts.append(table)
        if len(self._parts) >= 1024:
            self._parts = [pa.concat_tables(self._parts).combine_chunks()]

    def table(self) -> pa.Table:
        if not self._parts:
            return RUNS_SCHEMA.empty_table()
        return pa.concat_tables(self._parts).combine_chunks()


def runs_of_scan(paths: Sequence[str], batches: Iterable[tuple[str, pa.RecordBatch]]) -> pa.Table:
    """The recording rows (`file_runs`) of every file of `paths`, from the batches of a scan of
    them tagged with their file's path (`TableFiles.scan_file_keys`; a file the scan yields
    nothing for holds no rows). A file's batches come one after another, so only one file's keys
    are held at a time; should a file come back later, its parts are merged."""
    rows = _Rows()
    seen: set[str] = set()
    split: set[str] = set()
    current: str | None = None
    pending: list[pa.RecordBatch] = []
    for path, batch in batches:
        if path != current:
            if current is not None:
                rows.add(file_runs(current, pending))
            if path in seen:
                split.add(path)
            seen.add(path)
            current, pending = path, []
        pending.append(batch)
    if current is not None:
        rows.add(file_runs(current, pending))
    for path in paths:
        if path not in seen:
            rows.add(_entry(path))
    table = rows.table()
    return _remerge(table, split) if split else table


def union_runs(starts: pa.Array, ends: pa.Array) -> Runs:
    """The runs covering the intervals `[starts[i], ends[i]]`, given in any order, overlapping
    or adjacent."""
    starts, ends = starts.cast(pa.int64()), ends.cast(pa.int64())
    if not len(starts):
        return Runs(starts, ends)
    order = pc.sort_indices(starts)
    starts, ends = pc.take(starts, order), pc.take(ends, order)
    reach = pc.cumulative_max(ends)
    # A run ends where a hole separates the next start from everything before it; written
    # start - 1 > reach so that an index of 2**63-1 cannot overflow.
    gap = pc.greater(pc.subtract(starts.slice(1), 1), reach.slice(0, len(reach) - 1))
    new = pa.concat_arrays([pa.array([True]), gap])
    last = pa.concat_arrays([gap, pa.array([True])])
    return Runs(pc.filter(starts, new), pc.filter(reach, last))


def _remerge(table: pa.Table, paths: Collection[str]) -> pa.Table:
    """`table` with the rows of each of `paths`, recorded in parts, merged into one file's."""
    mine = pc.is_in(table.column(PATH), value_set=pa.array(list(paths), pa.string()))
    parts = [table.filter(pc.invert(mine))]
    split = _runs_only(table.filter(mine))
    for path in paths:
        parts.append(_entry(path))
        of_path = split.filter(pc.equal(split.column(PATH), path))
        for url in pc.unique(of_path.column(SOURCE_URL)).to_pylist():
            of_url = of_path.filter(pc.equal(of_path.column(SOURCE_URL), url))
            runs = union_runs(
                of_url.column(FIRST).combine_chunks(), of_url.column(LAST).combine_chunks()
            )
            parts.append(
                pa.table(
                    {
                        PATH: pa.repeat(pa.scalar(path, pa.string()), len(runs)),
                        SOURCE_URL: pa.repeat(pa.scalar(url, pa.string()), len(runs)),
                        FIRST: runs.starts,
                        LAST: runs.ends,
                    },
                    schema=RUNS_SCHEMA,
                )
            )
    return pa.concat_tables(parts).combine_chunks()


def _is_entry(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    return pc.and_(
        pc.equal(table.column(SOURCE_URL), _ENTRY_URL),
        pc.less(table.column(LAST), table.column(FIRST)),
    )


def _runs_only(table: pa.Table) -> pa.Table:
    return table.filter(pc.less_equal(table.column(FIRST), table.column(LAST)))


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownRuns:
    """What the cache holds about a snapshot's files: the paths recorded, and their runs (of the
    logs asked for), each once."""

    paths: frozenset[str]
    runs: pa.Table  # RUNS_SCHEMA, no entry rows, only rows of `paths`

    def of(self, paths: Collection[str], urls: Collection[str]) -> pa.Table:
        """The runs of the files `paths` (recorded ones) for the logs `urls`."""
        if not paths or not urls or not self.runs.num_rows:
            return RUNS_SCHEMA.empty_table()
        mask = pc.and_(
            pc.is_in(self.runs.column(PATH), value_set=pa.array(list(paths), pa.string())),
            pc.is_in(self.runs.column(SOURCE_URL), value_set=pa.array(list(urls), pa.string())),
        )
        return self.runs.filter(mask)

    def rows(self) -> pa.Table:
        """Every row recording these paths: an entry row each and their runs."""
        entries = [_entry(p) for p in sorted(self.paths)]
        return pa.concat_tables([*entries, self.runs]).combine_chunks()


NOTHING_KNOWN: Final = KnownRuns(frozenset(), RUNS_SCHEMA.empty_table())


def read_known(
    table_uri: str,
    storage_options: Mapping[str, str] | None,
    live: Collection[str],
    urls: Collection[str] | None,
) -> KnownRuns:
    """What the cache of the table at `table_uri` knows about the files `live` (the paths of
    the snapshot in use): which of them are recorded, and their runs for the logs `urls` (None:
    every log; empty: none, only which files are recorded). Only rows of those logs are read.
    Raises `TableUnreadableError` when there is a cache that cannot be read."""
    uri = runs_uri(table_uri)
    cache = open_table(uri, storage_options, "runs cache")
    if cache is None:
        return NOTHING_KNOWN
    wanted = None
    if urls is not None:
        wanted = pc.field(SOURCE_URL).isin(pa.array([_ENTRY_URL, *urls], pa.string()))
    try:
        rows = cache.to_pyarrow_dataset().to_table(columns=_COLUMNS, filter=wanted)
    except STORAGE_ERRORS as exc:
        raise TableUnreadableError(f"runs cache {uri} cannot be read: {exc}") from exc
    return _known(rows, live, uri)


def _known(rows: pa.Table, live: Collection[str], uri: str) -> KnownRuns:
    rows = rows.filter(pc.is_in(rows.column(PATH), value_set=pa.array(list(live), pa.string())))
    # Exact copies of a path's rows come from two recorders of one file: keep one.
    rows = rows.group_by(_COLUMNS, use_threads=False).aggregate([]).select(_COLUMNS)
    entries = _is_entry(rows)
    recorded = set(rows.filter(entries).column(PATH).to_pylist())
    runs = _runs_only(rows.filter(pc.invert(entries)))
    disagreeing = _disagreeing(runs)
    if disagreeing:
        log.error(
            "the runs cache holds differing records of the same files; reading them again",
            extra={"cache": uri, "files": sorted(disagreeing)[:10], "count": len(disagreeing)},
        )
        recorded -= disagreeing
    if len(recorded) < len(set(runs.column(PATH).to_pylist())):
        runs = runs.filter(
            pc.is_in(runs.column(PATH), value_set=pa.array(list(recorded), pa.string()))
        )
    return KnownRuns(frozenset(recorded), runs.cast(RUNS_SCHEMA).combine_chunks())


def _disagreeing(runs: pa.Table) -> set[str]:
    """Paths with two runs of one log that overlap or touch: one file's runs are maximal and
    disjoint, so two records of it that differ show here (copies that agree were merged)."""
    if runs.num_rows < 2:
        return set()
    runs = runs.sort_by([(PATH, "ascending"), (SOURCE_URL, "ascending"), (FIRST, "ascending")])
    path = runs.column(PATH).combine_chunks()
    url = runs.column(SOURCE_URL).combine_chunks()
    first = runs.column(FIRST).combine_chunks()
    last = runs.column(LAST).combine_chunks()
    n = runs.num_rows

    def head(a: pa.Array) -> pa.Array:
        return a.slice(0, n - 1)

    def tail(a: pa.Array) -> pa.Array:
        return a.slice(1)

    clash = pc.and_(
        pc.and_(pc.equal(tail(path), head(path)), pc.equal(tail(url), head(url))),
        pc.less_equal(pc.subtract(tail(first), 1), head(last)),
    )
    return set(pc.unique(pc.filter(tail(path), clash)).to_pylist())


# --- writing --------------------------------------------------------------------------------------


def append_runs(
    table_uri: str, storage_options: Mapping[str, str] | None, rows: Sequence[pa.Table]
) -> int:
    """Record `rows` (`runs_of_scan`'s: whole files) in one commit, creating the cache on first
    use; returns how many rows were written."""
    if not rows:
        return 0
    batch = pa.concat_tables(rows).sort_by(
        [(SOURCE_URL, "ascending"), (PATH, "ascending"), (FIRST, "ascending")]
    )
    if not batch.num_rows:
        return 0
    write_deltalake(
        runs_uri(table_uri),
        batch,
        mode="append",
        storage_options=None if storage_options is None else dict(storage_options),
        writer_properties=writer_properties(_COMPRESSION_LEVEL),
    )
    return int(batch.num_rows)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record` did: data files read and recorded, their rows, the runs written."""

    files: int
    rows: int
    runs: int


def record(
    table_uri: str,
    storage_options: Mapping[str, str] | None,
    paths: Collection[str] | None = None,
) -> Recorded:
    """Read and record the runs of the data files of the table's current snapshot that are not
    recorded yet (with `paths`: of those among them only). Nothing to do when there is no table,
    or when its files' runs cannot be trusted to last (`usable`). `storage_options`: the
    configured object-store options (given to s3:// tables only). Raises `TableUnreadableError`
    when the table or its cache cannot be read; a failing write raises what delta-rs raised
    (the files written before it stay recorded)."""
    options = table_storage_options(table_uri, storage_options)
    files = TableFiles.open(table_uri, options, "table")
    if files is None or not usable(files):
        return Recorded(0, 0, 0)
    live: list[str] = files.stats.column(PATH).to_pylist()
    known = read_known(table_uri, options, live, urls=())
    wanted = None if paths is None else set(paths)
    sizes = dict(zip(live, files.stats.column("rows").to_pylist(), strict=True))
    todo = [p for p in live if p not in known.paths and (wanted is None or p in wanted)]
    done = Recorded(0, 0, 0)
    for chunk in _chunks(todo, sizes):
        rows = runs_of_scan(chunk, files.scan_file_keys(chunk, _BATCH_ROWS))
        append_runs(table_uri, options, [rows])
        done = Recorded(
            done.files + len(chunk),
            done.rows + sum(sizes[p] or 0 for p in chunk),
            done.runs + rows.num_rows - len(chunk),
        )
    return done


def _chunks(paths: Sequence[str], sizes: Mapping[str, int | None]) -> Iterator[list[str]]:
    """`paths` in groups of at most `_COMMIT_ROWS` rows (a file alone may hold more)."""
    chunk: list[str] = []
    rows = 0
    for path in paths:
        size = sizes.get(path) or 0
        if chunk and rows + size > _COMMIT_ROWS:
            yield chunk
            chunk, rows = [], 0
        chunk.append(path)
        rows += size
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class Pruned:
    """What `prune` did: cache rows kept, rows dropped (of files the table no longer holds, or
    repeated), and whether the cache was rewritten (or, when unreadable, dropped)."""

    kept: int
    dropped: int
    rewritten: bool
    reset: bool = False


def prune(table_uri: str, storage_options: Mapping[str, str] | None) -> Pruned | None:
    """Rewrite the cache keeping only the files of the table's current snapshot, each once, in
    one file; files the rewrite replaced are deleted an hour later (by a later prune). A cache
    that cannot be read is deleted: it only costs reading the files again. None when there is no
    table or no cache. `storage_options`: as for `record`."""
    options = table_storage_options(table_uri, storage_options)
    files = TableFiles.open(table_uri, options, "table")
    if files is None:
        return None
    uri = runs_uri(table_uri)
    live: list[str] = files.stats.column(PATH).to_pylist()
    try:
        cache = open_table(uri, options, "runs cache")
        if cache is None:
            return None
        rows = cache.to_pyarrow_dataset().to_table(columns=_COLUMNS)
        count = len(cache.file_uris())
    except (TableUnreadableError, *STORAGE_ERRORS) as exc:
        log.warning(
            "the runs cache cannot be read; deleting it", extra={"cache": uri, "error": str(exc)}
        )
        delete_table(uri, options)
        return Pruned(0, 0, False, reset=True)
    kept = _known(rows, live, uri).rows()
    if kept.num_rows == rows.num_rows and count <= 1:
        return Pruned(kept.num_rows, 0, False)
    kept = kept.sort_by([(SOURCE_URL, "ascending"), (PATH, "ascending"), (FIRST, "ascending")])
    try:
        # Appends that land meanwhile are not in this snapshot, so the overwrite leaves them.
        write_deltalake(
            cache,
            kept,
            mode="overwrite",
            writer_properties=writer_properties(_COMPRESSION_LEVEL),
        )
    except CommitFailedError as exc:
        log.info(
            "the runs cache changed while pruning it; left as it was", extra={"error": str(exc)}
        )
        return Pruned(rows.num_rows, 0, False)
    with contextlib.suppress(*STORAGE_ERRORS):
        cache.vacuum(retention_hours=_VACUUM_HOURS, enforce_retention_duration=False, dry_run=False)
        cache.create_checkpoint()
    return Pruned(kept.num_rows, rows.num_rows - kept.num_rows, True)
