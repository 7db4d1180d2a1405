"""The domain index: a Delta table beside the archive with one row per (domain name, archive row),
keyed so that an exact name or everything under a domain is one range of keys, and *covering*:
each row also holds what a search answers of its archive row, so that a search reads one key
range of the index and nothing of the archive.

Layout: `<archive>/_certlake_domains` (a `_` directory inside the table, like the skipped ranges:
Delta readers and VACUUM of the archive ignore it, and it travels with the table). Columns: `key`
(`certlake.query.spec.domain_key`: lower-cased, labels reversed), `cert_index`, `source_url`,
`seen_date` (the archive row's key and partition: enough to find it in the archive and to filter
by date), then `payload` and the archive row's result columns (`PAYLOAD_COLUMNS`: hashes, serial,
subject, issuer, validity, names, log name, `seen`, `is_ca`). `certlake maintain` clusters it by
`key` so that a range reads a few small row groups.

The payload costs space: a row's columns are stored once per distinct name it holds, ~200 bytes
compressed each (random hashes do not compress), so a certificate with hundreds of names would
cost hundreds of copies. Rows with more than `WIDE_NAMES` distinct names are therefore stored
without it (`payload` false, the columns null): a search that meets one reads that archive row,
as it reads every row the index does not cover yet. Real certificates rarely pass 32 names.

In step with the archive, exactly once, whoever writes: the index follows the archive's own log
rather than each writer. Its transaction identifier `certlake.domains` holds the archive version
it covers; `catch_up` indexes the rows of the commits after it (the `add` actions with
`dataChange`; compaction rewrites rows already indexed) and commits them with the new version
in one commit, so a crash either landed both or neither, and two indexers racing are refused by
delta-rs like two writers of one log's cursor. The live sink, backfill and merge call it after
their commits; a search reads the commits the index does not cover yet directly (`uncovered`),
so a row is findable from the moment its archive commit lands.

certlake only ever appends rows to the archive. A commit that removes rows (a DELETE, UPDATE or
overwrite by another tool: a `remove` with `dataChange`) would leave index rows, payload
included, of rows that are gone, so the index never covers one: `catch_up` stops before it
(`IndexBehindError`: `certlake index rebuild`) and searches of a snapshot past it read the
archive instead (`Commit.removes_rows`), exact but slow until the rebuild.

An index left without a version (a build interrupted) is never trusted: `rebuild` starts over.
An index of an older layout (without the payload) is neither used nor appended to (searches scan
the archive) until `certlake maintain` or `certlake index rebuild` builds it anew.
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
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake

from certlake.lake.schema import ARCHIVE_SCHEMA, CERT_INDEX, SOURCE_URL
from certlake.lake.table import (
    STORAGE_ERRORS,
    CursorConflictError,
    TableUnreadableError,
    _append,
    child_uri,
    delete_table,
    open_table,
    table_filesystem,
)
from certlake.query.spec import domain_key

log = logging.getLogger(__name__)

DOMAINS_DIR: Final = "_certlake_domains"
COVERED_APP: Final = "certlake.domains"
# The archive version the index was built from: a snapshot older than that is not covered (a row
# removed before the build would be missing from it).
BUILT_APP: Final = "certlake.domains.built"
KEY: Final = "key"
PAYLOAD: Final = "payload"
# The archive version that added the row (`Added.version`): a search of an older snapshot
# leaves out the rows added after it, as its archive files do.
ADDED_IN: Final = "archive_version"
# What a search answers of an archive row besides its key and `seen_date` (the fork's fields).
PAYLOAD_COLUMNS: Final = (
    "fingerprint",
    "sha256",
    "serial_number",
    "subject_aggregated",
    "issuer_aggregated",
    "not_before",
    "not_after",
    "all_domains",
    "source_name",
    "seen",
    "is_ca",
)
# Rows with more distinct names than this are indexed without their payload (module doc).
WIDE_NAMES: Final = 32
DOMAINS_SCHEMA: Final = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(CERT_INDEX, pa.int64(), nullable=False),
        pa.field(SOURCE_URL, pa.string(), nullable=False),
        pa.field("seen_date", pa.string(), nullable=False),
        pa.field(ADDED_IN, pa.int64(), nullable=False),
        pa.field(PAYLOAD, pa.bool_(), nullable=False),
        *(ARCHIVE_SCHEMA.field(c).with_nullable(True) for c in PAYLOAD_COLUMNS),
    ]
)
# The archive columns an index row is made of (`seen_date` is the partition, from the log).
_READ: Final = [SOURCE_URL, CERT_INDEX, *PAYLOAD_COLUMNS]
_READ_SCHEMA: Final = pa.schema([ARCHIVE_SCHEMA.field(c).with_nullable(True) for c in _READ])
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


# Archives whose index of an older layout was reported (once a process: writers catch up often).
_OLD_LAYOUT_WARNED: Final[set[str]] = set()


class IndexBehindError(RuntimeError):
    """The index cannot be brought up to date from the archive's log (the log's old commits or
    their files are gone); `certlake index rebuild` builds it again from the current snapshot."""


def index_uri(archive_uri: str) -> str:
    return child_uri(archive_uri, DOMAINS_DIR)


@dataclass(frozen=True, slots=True)
class Added:
    """A data file an archive commit added: its path in the table, its `seen_date`, and the
    version of the commit (for a file of an index build's snapshot: the snapshot's version)."""

    path: str
    seen_date: str
    rows: int | None
    version: int


def index_rows(table: pa.Table, seen_date: str, version: int) -> pa.Table:
    """The index rows of archive rows (`_READ`'s columns): one per distinct key of a row's
    names, with the row's payload unless it is wide, sorted by key. The keys in Python, not
    Arrow compute: Arrow has no per-list reversal, and at ~0.5 µs a name this costs far less
    than reading the rows; the payload is taken from the rows with Arrow."""
    keys: list[str] = []
    positions: list[int] = []
    taken: list[int | None] = []  # the payload's row, or None (a wide row's: nulls)
    for position, names in enumerate(table.column("all_domains").to_pylist()):
        row_keys = {domain_key(n) for n in names or () if n is not None}
        source = position if len(row_keys) <= WIDE_NAMES else None
        for key in row_keys:
            keys.append(key)
            positions.append(position)
            taken.append(source)
    at = pa.array(positions, pa.int64())
    payload = table.select(list(PAYLOAD_COLUMNS)).take(pa.array(taken, pa.int64()))
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        KEY: pa.array(keys, pa.string()),
        CERT_INDEX: table.column(CERT_INDEX).take(at),
        SOURCE_URL: table.column(SOURCE_URL).take(at),
        "seen_date": pa.repeat(pa.scalar(seen_date, pa.string()), len(keys)),
        ADDED_IN: pa.repeat(pa.scalar(version, pa.int64()), len(keys)),
        PAYLOAD: pa.array([t is not None for t in taken], pa.bool_()),
    }
    for name in PAYLOAD_COLUMNS:
        columns[name] = payload.column(name)
    rows = pa.Table.from_pydict(columns).cast(DOMAINS_SCHEMA)
    return rows.sort_by([(KEY, "ascending")])


def covering(index: DeltaTable) -> bool:
    """Whether an index has this layout (older ones hold keys only: not used, not appended to)."""
    names = {f.name for f in index.schema().fields}
    return names.issuperset(DOMAINS_SCHEMA.names)


def built_version(index: DeltaTable) -> int | None:
    value = index.transaction_version(BUILT_APP)
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Commit:
    """Of one archive commit: the files it added with new rows, every file it added (compaction
    adds files of rows already there), and whether it removed rows (module doc)."""

    added: list[Added]
    files: list[Added]
    removes_rows: bool


class ArchiveLog:
    """A table's commits and data files read as stored (delta-rs has no per-commit view of its
    add actions; the commit files are small JSON)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None) -> None:
        self.uri = uri
        self._fs = table_filesystem(uri, storage_options)

    def _text(self, version: int) -> str | None:
        path = f"_delta_log/{version:020d}.json"
        try:
            with self._fs.open_input_stream(path) as stream:
                return str(stream.read().decode())
        except FileNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(f"table {self.uri}: {path} cannot be read: {exc}") from exc

    def table_id(self) -> str | None:
        """The table id the first commit names (None: that commit is gone, or names none)."""
        text = self._text(0)
        for line in (text or "").splitlines():
            metadata = json.loads(line).get("metaData") if line.strip() else None
            if metadata is not None:
                return str(metadata.get("id"))
        return None

    def commit(self, version: int) -> Commit | None:
        """What commit `version` added and whether it removed rows; None if its file is gone."""
        text = self._text(version)
        if text is None:
            return None
        added: list[Added] = []
        rewritten: list[Added] = []
        removes_rows = False
        for line in text.splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            remove = action.get("remove")
            if remove is not None and remove.get("dataChange", True):
                removes_rows = True
            add = action.get("add")
            if add is None:
                continue
            stats = json.loads(add["stats"]) if add.get("stats") else {}
            rows = stats.get("numRecords")
            file = Added(
                unquote(add["path"]),
                str(add.get("partitionValues", {}).get("seen_date", "")),
                None if rows is None else int(rows),
                version,
            )
            (added if add.get("dataChange", True) else rewritten).append(file)
        return Commit(added, [*added, *rewritten], removes_rows)

    def read(self, added: Added) -> pa.Table:
        """The columns an index row needs, of one data file."""
        try:
            with self._fs.open_input_file(added.path) as f:
                # As the archive's schema: files rewritten by delta-rs itself (a DELETE) may
                # hold view types, which Arrow's `take` does not take.
                return pq.read_table(f, columns=_READ).cast(_READ_SCHEMA)
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
    a writer that would be kept busy for minutes). An index of an older layout is built again
    the same way. Raises `IndexBehindError` when
    the log no longer reaches back to the covered version, or past a commit that removed rows."""
    archive = open_table(archive_uri, storage_options, "archive")
    if archive is None:
        return None
    index = open_index(archive_uri, storage_options)
    covered = covered_version(index)
    old_layout = index is not None and covered is not None and not covering(index)
    if covered is None or old_layout:
        if not build and _rows(archive) > COMMIT_ROWS:
            if old_layout and archive_uri not in _OLD_LAYOUT_WARNED:
                _OLD_LAYOUT_WARNED.add(archive_uri)
                log.warning(
                    "the domain index has an older layout and is no longer kept up to date;"
                    " `certlake maintain` or `certlake index rebuild` builds it anew",
                    extra={"table": archive_uri},
                )
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
        commit = archive_log.commit(version + 1)
        if commit is None:
            raise IndexBehindError(
                f"archive {archive_log.uri}: commit {version + 1} is no longer in its log; the"
                " domain index covers only up to version"
                f" {covered}; run `certlake index rebuild`"
            )
        if commit.removes_rows:
            if files:  # cover the commits before it first
                break
            raise IndexBehindError(
                f"archive {archive_log.uri}: commit {version + 1} removed rows (a DELETE, UPDATE"
                " or overwrite by another tool); the domain index cannot follow it and covers"
                f" only up to version {covered}; run `certlake index rebuild`"
            )
        added = commit.added
        if files and sum(f.rows or 0 for f in files + added) > COMMIT_ROWS:
            break
        files.extend(added)
        version += 1
    return version, files


def _index_table(archive_log: ArchiveLog, files: list[Added]) -> pa.Table:
    tables = [index_rows(archive_log.read(a), a.seen_date, a.version) for a in files]
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
            "the domain index was never completed, or has an older layout; building it again",
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
        Added(unquote(p), str(d), int(n) if n is not None else None, version)
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
                    app_transactions=(
                        [Transaction(COVERED_APP, version), Transaction(BUILT_APP, version)]
                        if last
                        else None
                    )
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
