"""The domain index: a Delta table beside the archive with one row per (domain name, archive row),
keyed so that an exact name or everything under a domain is one range of keys.

Layout: `<archive>/_certlake_domains` (a `_` directory inside the table, like the skipped ranges:
Delta readers and VACUUM of the archive ignore it, and it travels with the table). Columns: `key`
(`certlake.query.spec.domain_key`: lower-cased, labels reversed), `cert_index`, `source_url`,
`seen_date` — enough to find the row in the archive (its partition, then the files whose
statistics hold it) and to filter by date without reading the archive. `certlake maintain`
clusters it by `key` so that a range reads a few small files.

In step with the archive, exactly once, whoever writes: the index follows the archive's own log
rather than each writer. Its transaction identifier `certlake.domains` holds the archive version
it covers; `catch_up` indexes the rows of the commits after it (the `add` actions with
`dataChange`; compaction rewrites rows already indexed) and commits them with the new version
in one commit, so a crash either landed both or neither, and two indexers racing are refused by
delta-rs like two writers of one log's cursor. The live sink, backfill and merge call it after
their commits; a search reads the commits the index does not cover yet directly (`uncovered`),
so a row is findable from the moment its archive commit lands. An index row whose archive row
is gone (a DELETE by another tool) only costs a lookup: searches always read the archive row.

An index left without a version (a build interrupted) is never trusted: `rebuild` starts over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.fs import DeltaStorageHandler

from certlake.lake.schema import CERT_INDEX, SOURCE_URL
from certlake.lake.table import (
    STORAGE_ERRORS,
    CursorConflictError,
    TableUnreadableError,
    _append,
    child_uri,
    delete_table,
    open_table,
)
from certlake.query.spec import domain_key

log = logging.getLogger(__name__)

DOMAINS_DIR: Final = "_certlake_domains"
COVERED_APP: Final = "certlake.domains"
KEY: Final = "key"
DOMAINS_SCHEMA: Final = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(CERT_INDEX, pa.int64(), nullable=False),
        pa.field(SOURCE_URL, pa.string(), nullable=False),
        pa.field("seen_date", pa.string(), nullable=False),
    ]
)
# The archive columns an index row is made of (`seen_date` is the partition, from the log).
_READ: Final = [SOURCE_URL, CERT_INDEX, "all_domains"]
# Archive rows per index commit, at most (a commit of the archive is never split): an index
# commit's rows are held in memory (~2.5 keys of ~80 bytes a row: ~40 MB) because delta-rs cannot
# take a stream whose reads go through its own storage handler (a nested runtime panics).
COMMIT_ROWS: Final = 200_000


# Rows per Parquet row group of the index: statistics are kept per row group, and a key range
# decodes the groups it overlaps whole, so small groups make an exact name cheap (one group of
# ~1 MB instead of a file's ~30 MB); the footers grow by a few hundred bytes a group.
INDEX_ROW_GROUP: Final = 16_384


def index_writer(compression_level: int) -> WriterProperties:
    return WriterProperties(
        compression="ZSTD",
        compression_level=compression_level,
        max_row_group_size=INDEX_ROW_GROUP,
    )


class IndexBehindError(RuntimeError):
    """The index cannot be brought up to date from the archive's log (the log's old commits or
    their files are gone); `certlake index rebuild` builds it again from the current snapshot."""


def index_uri(archive_uri: str) -> str:
    return child_uri(archive_uri, DOMAINS_DIR)


@dataclass(frozen=True, slots=True)
class Added:
    """A data file an archive commit added: its path in the table and its `seen_date`."""

    path: str
    seen_date: str
    rows: int | None


def index_rows(table: pa.Table, seen_date: str) -> pa.Table:
    """The index rows of archive rows (`source_url`, `cert_index`, `all_domains`): one per
    distinct key of a row's names, sorted by key. Python, not Arrow compute: Arrow has no
    per-list reversal, and at ~0.5 µs a name this costs far less than reading the rows."""
    keys: list[str] = []
    indices: list[int] = []
    urls: list[str] = []
    columns = table.select(_READ).to_pydict()
    for url, index, names in zip(
        columns[SOURCE_URL], columns[CERT_INDEX], columns["all_domains"], strict=True
    ):
        for key in {domain_key(n) for n in names or () if n is not None}:
            keys.append(key)
            indices.append(index)
            urls.append(url)
    rows = pa.table(
        {
            KEY: pa.array(keys, pa.string()),
            CERT_INDEX: pa.array(indices, pa.int64()),
            SOURCE_URL: pa.array(urls, pa.string()),
            "seen_date": pa.array([seen_date] * len(keys), pa.string()),
        },
        schema=DOMAINS_SCHEMA,
    )
    return rows.sort_by([(KEY, "ascending")])


class ArchiveLog:
    """The archive's commits and data files read as stored (delta-rs has no per-commit view of
    its add actions; the commit files are small JSON)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None) -> None:
        self.uri = uri
        self._fs = pafs.PyFileSystem(DeltaStorageHandler(uri, dict(storage_options or {})))

    def added(self, version: int, *, rewrites: bool = False) -> list[Added] | None:
        """The files commit `version` added with a change of data (and those it added by
        rewriting rows, with `rewrites`); None if its file is gone."""
        path = f"_delta_log/{version:020d}.json"
        try:
            with self._fs.open_input_stream(path) as stream:
                text = stream.read().decode()
        except FileNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(f"archive {self.uri}: {path} cannot be read: {exc}") from exc
        files: list[Added] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            add = json.loads(line).get("add")
            if add is None or not (rewrites or add.get("dataChange", True)):
                continue
            stats = json.loads(add["stats"]) if add.get("stats") else {}
            rows = stats.get("numRecords")
            files.append(
                Added(
                    unquote(add["path"]),
                    str(add.get("partitionValues", {}).get("seen_date", "")),
                    None if rows is None else int(rows),
                )
            )
        return files

    def read(self, added: Added) -> pa.Table:
        """The columns an index row needs, of one data file."""
        try:
            with self._fs.open_input_file(added.path) as f:
                return pq.read_table(f, columns=_READ)
        except FileNotFoundError as exc:
            raise IndexBehindError(
                f"archive {self.uri}: data file {added.path} is gone (vacuumed) before it was"
                " indexed; run `certlake index rebuild`"
            ) from exc
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(
                f"archive {self.uri}: data file {added.path} cannot be read: {exc}"
            ) from exc


def covered_version(index: DeltaTable | None) -> int | None:
    """The archive version an index covers; None when there is no index or it was never
    completed."""
    if index is None:
        return None
    value = index.transaction_version(COVERED_APP)
    return None if value is None else int(value)


def open_index(archive_uri: str, storage_options: Mapping[str, str] | None) -> DeltaTable | None:
    return open_table(index_uri(archive_uri), storage_options, "domain index")


@dataclass(frozen=True, slots=True)
class CatchUp:
    covered_from: int | None  # the version covered before (None: the index was built now)
    covered_to: int
    archive_rows: int
    index_rows: int


def catch_up(
    archive_uri: str,
    storage_options: Mapping[str, str] | None,
    *,
    compression_level: int = 3,
    build: bool = False,
) -> CatchUp | None:
    """Index the archive's commits the index does not cover yet. With no index: build it from
    the archive's current snapshot when `build` is set or the archive is young (at most
    `COMMIT_ROWS` rows: one index commit), else return None (the archive stays searchable by
    scanning; a big archive is indexed by `certlake index rebuild` or `certlake maintain`, not by
    a writer that would be kept busy for minutes). Raises `IndexBehindError` when the log no
    longer reaches back to the covered version."""
    archive = open_table(archive_uri, storage_options, "archive")
    if archive is None:
        return None
    index = open_index(archive_uri, storage_options)
    covered = covered_version(index)
    if covered is None:
        if not build and _rows(archive) > COMMIT_ROWS:
            return None
        return _build(archive_uri, storage_options, archive, index, compression_level)
    assert index is not None
    target = int(archive.version())
    start, rows, entries = covered, 0, 0
    archive_log = ArchiveLog(archive_uri, storage_options)
    while covered < target:
        upto, files = _next_commits(archive_log, covered, target)
        batch = _index_table(archive_log, files)
        try:
            _append(index, batch, {COVERED_APP: upto}, writer=index_writer(compression_level))
        except CursorConflictError:
            # Another indexer covered some of these commits: start again from what it covered.
            index.update_incremental()
            covered = covered_version(index) or covered
            continue
        rows += sum(f.rows or 0 for f in files)
        entries += batch.num_rows
        covered = upto
    return CatchUp(start, covered, rows, entries)


def _rows(archive: DeltaTable) -> int:
    actions = pa.table(archive.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def _next_commits(archive_log: ArchiveLog, covered: int, target: int) -> tuple[int, list[Added]]:
    """The commits after `covered` that one index commit takes: whole commits, at least one,
    up to `COMMIT_ROWS` archive rows."""
    files: list[Added] = []
    version = covered
    while version < target:
        added = archive_log.added(version + 1)
        if added is None:
            raise IndexBehindError(
                f"archive {archive_log.uri}: commit {version + 1} is no longer in its log; the"
                " domain index covers only up to version"
                f" {covered}; run `certlake index rebuild`"
            )
        if files and sum(f.rows or 0 for f in files + added) > COMMIT_ROWS:
            break
        files.extend(added)
        version += 1
    return version, files


def _index_table(archive_log: ArchiveLog, files: list[Added]) -> pa.Table:
    tables = [index_rows(archive_log.read(a), a.seen_date) for a in files]
    return pa.concat_tables(tables) if tables else DOMAINS_SCHEMA.empty_table()


def _build(
    archive_uri: str,
    storage_options: Mapping[str, str] | None,
    archive: DeltaTable,
    stale: DeltaTable | None,
    compression_level: int,
) -> CatchUp:
    """The index of the archive's snapshot, from nothing: one commit, with the version."""
    if stale is not None:
        log.warning(
            "the domain index was never completed; building it again",
            extra={"table": archive_uri},
        )
        delete_table(index_uri(archive_uri), storage_options)
    version = int(archive.version())
    actions = pa.table(archive.get_add_actions(flatten=True))
    dates = (
        actions.column("partition.seen_date").to_pylist()
        if "partition.seen_date" in actions.column_names
        else [""] * actions.num_rows
    )
    files = [
        Added(unquote(p), str(d), int(n) if n is not None else None)
        for p, d, n in zip(
            actions.column("path").to_pylist(),
            dates,
            actions.column("num_records").to_pylist(),
            strict=True,
        )
    ]
    archive_log = ArchiveLog(archive_uri, storage_options)
    uri = index_uri(archive_uri)
    writer = index_writer(compression_level)
    options = None if storage_options is None else dict(storage_options)
    entries = 0
    chunks = _chunks(files)
    for n, chunk in enumerate(chunks, start=1):
        batch = _index_table(archive_log, chunk)
        entries += batch.num_rows
        # Only the last chunk says what the index covers: a build cut short is never trusted.
        last = n == len(chunks)
        try:
            write_deltalake(
                uri,
                batch,
                mode="append",
                storage_options=options,
                writer_properties=writer,
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(COVERED_APP, version)] if last else None
                ),
            )
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(f"domain index {uri} cannot be written: {exc}") from exc
    return CatchUp(None, version, sum(f.rows or 0 for f in files), entries)


def _chunks(files: list[Added]) -> list[list[Added]]:
    """`files` in groups of at most `COMMIT_ROWS` rows (a file alone may hold more); at least
    one group, so that an empty archive's index is created with its version."""
    chunks: list[list[Added]] = [[]]
    rows = 0
    for added in files:
        if chunks[-1] and rows + (added.rows or 0) > COMMIT_ROWS:
            chunks.append([])
            rows = 0
        chunks[-1].append(added)
        rows += added.rows or 0
    return chunks


def rebuild(
    archive_uri: str, storage_options: Mapping[str, str] | None, *, compression_level: int = 3
) -> CatchUp | None:
    """Drop the index and build it from the archive's current snapshot (None: no archive)."""
    if open_index(archive_uri, storage_options) is not None:
        delete_table(index_uri(archive_uri), storage_options)
    return catch_up(archive_uri, storage_options, compression_level=compression_level, build=True)
