"""The Delta table shell: open or create, append with transaction identifiers, find out whether a
commit whose outcome was lost landed, record skipped ranges, compact, delete.

Every function here does blocking I/O (delta-rs releases the GIL while it works); callers on an
event loop run them in a thread. An `ArchiveTable` is used by one thread at a time.

Storage: local paths, `file://` and `s3://` URIs. On S3, delta-rs (>= 0.25) commits with
conditional puts (`If-None-Match: *`), which AWS S3 and the usual S3-compatible servers honour,
so commits are atomic and concurrent writers (the sink, its compaction, a backfill) are safe
without a locking provider. `AWS_S3_ALLOW_UNSAFE_RENAME` (`storage.s3.allow_unsafe_rename`) is
only for stores without conditional writes; then only one writer may commit at a time — see
`unsafe_rename`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from certlake.lake.location import local_path
from certlake.lake.rows import skipped_to_batch
from certlake.lake.schema import (
    ARCHIVE_SCHEMA,
    PARTITION_BY,
    SKIPPED_DIR,
    check_archive_schema,
)
from certlake.lake.txn import SkipKind, SkippedRange, app_id

log = logging.getLogger(__name__)

COMMIT_ID_KEY: Final = "certlake.commit"
# The transaction identifier whose version says until when (Unix ms) a writer compacts the table
# (`compact`). Not a log's cursor: those are `certlake:<url>`. An hour: far longer than a
# compaction takes, and a lease left by a writer that died only costs one compaction round.
COMPACTION_LEASE: Final = "certlake.compaction-lease"
COMPACTION_LEASE_MS: Final = 3_600_000
# What a failing read or write of a table raises: delta-rs, the store, or Arrow decoding a file.
STORAGE_ERRORS: Final = (DeltaError, OSError, pa.ArrowException)


class TableUnreadableError(ValueError):
    """A Delta table exists at the location but cannot be read (damaged log, missing file...)."""


class CursorConflictError(Exception):
    """Another writer committed one of this commit's transaction identifiers (a log's cursor,
    the compaction lease) after the snapshot the commit was planned on (delta-rs: "Concurrent
    transaction failed"). Nothing was written by this attempt; plan it again on a newer
    snapshot."""


def table_uri(path: str) -> str:
    """The location delta-rs is given: URIs as they are, local paths made absolute (the server
    may change its working directory; the table must not move with it)."""
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).expanduser().absolute())


def child_uri(uri: str, name: str) -> str:
    return f"{uri}/{name}" if "://" in uri else os.path.join(uri, name)


def table_storage_options(uri: str, configured: Mapping[str, str] | None) -> dict[str, str] | None:
    """The storage options a table at `uri` is opened with, given the configured object-store
    options: those for s3:// tables, None for local ones. They mean nothing to a local table, and
    a script that opened a local table with storage options and read it through pyarrow was seen
    to abort at interpreter exit (deltalake 1.6.6: "terminate called without an active
    exception")."""
    return dict(configured or {}) if uri.startswith("s3://") else None


def unsafe_rename(storage_options: Mapping[str, str] | None) -> bool:
    """Whether commits are unprotected against a concurrent writer (see the module doc)."""
    for key, value in (storage_options or {}).items():
        if key.upper() == "AWS_S3_ALLOW_UNSAFE_RENAME" and value.lower() in ("1", "true"):
            return True
    return False


def writer_properties(compression_level: int) -> WriterProperties:
    return WriterProperties(compression="ZSTD", compression_level=compression_level)


def open_table(
    uri: str, storage_options: Mapping[str, str] | None = None, role: str | None = None
) -> DeltaTable | None:
    """The table at `uri`, or None when there is none (no location, or no commit in its log).

    Anything else that stops it from loading raises `TableUnreadableError` (`role`, such as
    "main", names the table in its message): treating a damaged table as absent would plan to
    refetch everything it holds, or create a new table over it."""
    options = None if storage_options is None else dict(storage_options)
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        name = "table" if role is None else f"{role} table"
        raise TableUnreadableError(f"{name} {uri} cannot be read: {exc}") from exc


class ArchiveTable:
    """The archive table (20 columns, partitioned by `seen_date`)."""

    def __init__(
        self,
        table: DeltaTable,
        uri: str,
        storage_options: dict[str, str] | None,
        compression_level: int,
    ) -> None:
        self._dt = table
        self.uri = uri
        self.storage_options = storage_options
        self._writer = writer_properties(compression_level)
        self._compression_level = compression_level
        # Live cursors as of snapshot `_cursors_at`: reading one costs a log replay (~5 ms with
        # a checkpoint), and a commit touches dozens of logs.
        self._cursors: dict[str, int | None] = {}
        self._cursors_at = self.version

    @classmethod
    def open(
        cls, uri: str, *, storage_options: dict[str, str] | None = None, compression_level: int = 9
    ) -> ArchiveTable | None:
        """The table at `uri`, or None when there is none; raises `ArchiveSchemaError` when the
        table there is not an archive table."""
        table = open_table(uri, storage_options)
        if table is None:
            return None
        metadata = table.metadata()
        check_archive_schema(
            pa.schema(table.schema().to_arrow()), list(metadata.partition_columns), uri
        )
        return cls(table, uri, storage_options, compression_level)

    @classmethod
    def open_or_create(
        cls, uri: str, *, storage_options: dict[str, str] | None = None, compression_level: int = 9
    ) -> ArchiveTable:
        """Open the table at `uri`, creating it (schema, `seen_date` partitioning) if missing."""
        existing = cls.open(
            uri, storage_options=storage_options, compression_level=compression_level
        )
        if existing is not None:
            return existing
        try:
            DeltaTable.create(
                uri,
                ARCHIVE_SCHEMA,
                partition_by=list(PARTITION_BY),
                storage_options=storage_options,
            )
            log.info("created archive table", extra={"table": uri})
        except Exception as exc:  # deltalake raises a bare DeltaError when another writer won
            if "already exists" not in str(exc):
                raise
        created = cls.open(
            uri, storage_options=storage_options, compression_level=compression_level
        )
        if created is None:
            raise TableNotFoundError(f"{uri}: created, but cannot be opened")
        return created

    @property
    def version(self) -> int:
        return int(self._dt.version())

    def refresh(self) -> None:
        """Move to the newest snapshot (commits of other writers included)."""
        self._dt.update_incremental()

    def cursors(self, source_urls: Collection[str]) -> dict[str, int | None]:
        """Each log's live cursor in this snapshot (None: never committed); reads the log for
        those not known at this version yet."""
        version = self.version
        if version != self._cursors_at:  # the table moved: any cursor may have
            self._cursors, self._cursors_at = {}, version
        for url in source_urls:
            if url not in self._cursors:
                value = self._dt.transaction_version(app_id(url))
                self._cursors[url] = None if value is None else int(value)
        return {url: self._cursors[url] for url in source_urls}

    def append(
        self, batch: pa.Table | pa.RecordBatch, *, versions: Mapping[str, int], commit_id: str
    ) -> None:
        """One commit: `batch` (may be empty) and a transaction identifier per log in `versions`.
        `commit_id` is stored in the commit info so that `landed` can find it.

        Raises `CursorConflictError` when a commit made since this snapshot carries the cursor of
        a log in `versions`: delta-rs checks every commit it finds in the way against the
        transaction identifiers this one carries, so a cursor read in this snapshot is still the
        table's when the commit lands, on local and s3:// tables alike."""
        before = self.version
        _append(
            self._dt,
            batch,
            {app_id(url): v for url, v in versions.items()},
            custom_metadata={COMMIT_ID_KEY: commit_id},
            writer=self._writer,
        )
        if self.version == before + 1 and self._cursors_at == before:
            # Nothing came between the snapshot and this commit: the known cursors still hold.
            self._cursors.update(versions)
            self._cursors_at = before + 1

    def landed(self, commit_id: str, since_version: int) -> bool:
        """After an append that raised: reopen the table and tell whether a commit with
        `commit_id` exists after `since_version` (a timeout can lose the reply of a commit that
        succeeded; retrying it blindly would write its rows twice)."""
        self._dt = ArchiveTable.open_or_create(
            self.uri,
            storage_options=self.storage_options,
            compression_level=self._compression_level,
        )._dt
        newer = self.version - since_version
        if newer <= 0:
            return False
        # deltalake 1.6.6 holds the GIL while `history` reads the log (a few small objects);
        # this runs only after a failed commit when other commits followed it.
        return any(c.get(COMMIT_ID_KEY) == commit_id for c in self._dt.history(limit=newer))


def _append(
    table: DeltaTable,
    batch: pa.Table | pa.RecordBatch,
    transactions: Mapping[str, int],
    *,
    writer: WriterProperties,
    custom_metadata: dict[str, str] | None = None,
) -> None:
    """Append `batch` with a transaction identifier per app id of `transactions`; raises
    `CursorConflictError` when a commit made since `table`'s snapshot carries one of them."""
    try:
        write_deltalake(
            table,
            batch,
            mode="append",
            writer_properties=writer,
            commit_properties=CommitProperties(
                custom_metadata=custom_metadata,
                app_transactions=[Transaction(app, v) for app, v in transactions.items()],
            ),
        )
    except CommitFailedError as exc:
        if "Concurrent transaction" in str(exc):
            raise CursorConflictError(str(exc)) from exc
        raise


def record_skipped(
    uri: str, storage_options: dict[str, str] | None, ranges: list[SkippedRange]
) -> None:
    """Append `ranges` to the side table of skipped ranges (created on first use)."""
    batch = skipped_to_batch(ranges, recorded_us=int(time.time() * 1_000_000))
    write_deltalake(
        child_uri(uri, SKIPPED_DIR), batch, mode="append", storage_options=storage_options
    )


def read_skipped(uri: str, storage_options: dict[str, str] | None = None) -> list[SkippedRange]:
    """Every range the live sink recorded as passed without rows (empty if none ever was).
    Ranges may repeat (a record written again after a crash); readers take their union."""
    table = open_table(child_uri(uri, SKIPPED_DIR), storage_options)
    if table is None:
        return []
    columns = ["source_url", "start_index", "end_index", "kind", "reason"]
    data = table.to_pyarrow_table(columns=columns).to_pydict()
    return [
        SkippedRange(url, start, end, SkipKind(kind), reason)
        for url, start, end, kind, reason in zip(
            data["source_url"],
            data["start_index"],
            data["end_index"],
            data["kind"],
            data["reason"],
            strict=True,
        )
    ]


@contextlib.contextmanager
def compaction_lease(table: DeltaTable, writer: WriterProperties) -> Iterator[bool]:
    """Whether this process may compact `table` now (False: another writer is compacting it).

    Never two at once, even from two processes (two servers on one table): delta-rs 1.6.6 lets
    two concurrent compactions of the same files both commit (removes with dataChange=false are
    not treated as conflicting, and `optimize` drops the transaction identifiers it is given),
    which duplicates every row they rewrote. So a compaction first takes a lease recorded in the
    table itself (see `_take_compaction_lease`), which works on s3:// as on local disk."""
    if not _take_compaction_lease(table, writer):
        log.info(
            "another writer is compacting the table; skipped", extra={"table": table.table_uri}
        )
        yield False
        return
    try:
        yield True
    finally:
        # Handed back at once, so that the next compaction, whoever runs it, need not wait for
        # the lease to run out; a lease taken meanwhile by another (after this one ran out) stays.
        with contextlib.suppress(CursorConflictError):
            _mark_compaction_lease(table, _now_ms(), writer)


def _take_compaction_lease(table: DeltaTable, writer: WriterProperties) -> bool:
    """Record in the table that this writer compacts it for the next `COMPACTION_LEASE_MS`: an
    empty commit whose transaction identifier `COMPACTION_LEASE` holds the lease's end (Unix
    ms). False when a lease not yet over is in the snapshot, or when another writer's lease was
    committed after it (delta-rs refuses this commit then: the same check that keeps two writers'
    cursors apart)."""
    now = _now_ms()
    held_until = table.transaction_version(COMPACTION_LEASE)
    if held_until is not None and held_until > now:
        return False
    try:
        _mark_compaction_lease(table, now + COMPACTION_LEASE_MS, writer)
    except CursorConflictError:
        return False
    return True


def _mark_compaction_lease(table: DeltaTable, until_ms: int, writer: WriterProperties) -> None:
    _append(table, ARCHIVE_SCHEMA.empty_table(), {COMPACTION_LEASE: until_ms}, writer=writer)


def _now_ms() -> int:
    return int(time.time() * 1000)


def table_filesystem(uri: str, storage_options: Mapping[str, str] | None) -> pafs.FileSystem:
    """The files of the table at `uri` as a pyarrow filesystem, through delta-rs's own object
    store (the same credentials and endpoints as its reads), paths relative to the table."""
    return pafs.PyFileSystem(DeltaStorageHandler(uri, dict(storage_options or {})))


def delete_table(uri: str, storage_options: Mapping[str, str] | None) -> int:
    """Delete every file of the table at `uri` (every object under an s3:// prefix); returns
    how many. The log goes first, newest version first: at every instant the location holds an
    older version of the table, or none."""
    fs = table_filesystem(uri, storage_options)
    infos = fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
    files = [i.path for i in infos if i.type == pafs.FileType.File]

    def order(path: str) -> tuple[int, str]:
        if path == "_delta_log/_last_checkpoint":
            return (0, "")
        if path.startswith("_delta_log/"):
            return (1, "".join(chr(0x10FFFF - ord(c)) for c in path))  # descending
        return (2, path)

    files.sort(key=order)
    for path in files:
        fs.delete_file(path)
    local = local_path(uri)
    if local is not None:  # the directories left behind, and a symlink that led here
        real = os.path.realpath(local)
        if os.path.isdir(real):
            shutil.rmtree(real)
        if os.path.islink(local):
            os.unlink(local)
    return len(files)


def committed_cursors(
    uri: str, source_urls: Sequence[str], storage_options: Mapping[str, str] | None = None
) -> dict[str, int | None]:
    """Each log's live cursor in the table at `uri` (None: no table, or no cursor for it)."""
    table = ArchiveTable.open(uri, storage_options=table_storage_options(uri, storage_options))
    return cursors_in(table, source_urls)


def cursors_in(table: ArchiveTable | None, source_urls: Sequence[str]) -> dict[str, int | None]:
    """Each log's live cursor in an open table (all None when there is no table)."""
    if table is None:
        return dict.fromkeys(source_urls)
    return table.cursors(source_urls)
