"""The archive at one table version, as a search reads it: its data files' statistics, its domain
index, and which of its files that index does not cover yet (the I/O under `query/search`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from certlake.lake.domains import (
    ADDED_IN,
    KEY,
    ArchiveLog,
    built_version,
    covered_version,
    covering,
    index_uri,
    open_index,
)
from certlake.lake.files import TableFiles
from certlake.lake.table import (
    STORAGE_ERRORS,
    TableUnreadableError,
    table_filesystem,
    table_storage_options,
)

# Index row groups read ahead at most: a few at a time keep an abandoned or long scan (an
# export that finds too many candidates) from holding much of the index decoded.
_INDEX_READAHEAD: Final = 4


class NoArchiveError(Exception):
    """There is no archive table (yet) at the configured location (HTTP 503)."""


class CursorGoneError(Exception):
    """The cursor's table version can no longer be read: vacuumed, or its log cleaned (410)."""


def _open_archive(
    uri: str, storage_options: Mapping[str, str] | None, version: int | None
) -> DeltaTable:
    options = None if storage_options is None else dict(storage_options)
    try:
        return DeltaTable(uri, storage_options=options, version=version)
    except TableNotFoundError as exc:
        if version is None:
            raise NoArchiveError(f"no archive table at {uri}") from exc
        raise CursorGoneError(f"table version {version} is gone") from exc
    except (DeltaError, OSError) as exc:
        if version is not None:
            raise CursorGoneError(f"table version {version} cannot be read: {exc}") from exc
        raise TableUnreadableError(f"archive {uri} cannot be read: {exc}") from exc


class Snapshot:
    """The archive at one version: its files' statistics, and which of them the domain index
    does not cover."""

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, str] | None,
        version: int | None,
        *,
        with_index: bool = True,
        opened: tuple[DeltaTable, DeltaTable | None] | None = None,
    ) -> None:
        """`opened`: the archive and its index (None: there is none) already open at their
        newest versions (`TablePool.snapshot`), for `version` None."""
        if opened is None:
            table = _open_archive(uri, storage_options, version)
            index = open_index(uri, storage_options) if with_index else None
        else:
            table, index = opened
        self.uri = uri
        self._options = table_storage_options(uri, storage_options)
        self.table = table
        self.files = TableFiles(table, uri, storage_options, "archive")
        self.version = self.files.version
        self.index = index if index is not None and self._serves(index) else None
        self.uncovered = self._uncovered(storage_options)

    def _serves(self, index: DeltaTable) -> bool:
        """Whether the index may answer for this snapshot: not one of an older layout, nor one
        built from a later snapshot (rows removed in between would be missing from it)."""
        built = built_version(index)
        return covering(index) and built is not None and built <= self.version

    def _uncovered(self, storage_options: Mapping[str, str] | None) -> list[str] | None:
        """The snapshot's files the index does not cover (None: the index covers none — there
        is none, it cannot say, or rows were removed since the version it covers, so that some
        of its rows may be of rows gone)."""
        covered = covered_version(self.index)
        if covered is None:
            return None
        if covered >= self.version:
            return []
        archive_log = ArchiveLog(self.uri, storage_options)
        present = set(self.files.stats.column("path").to_pylist())
        paths: list[str] = []
        for version in range(covered + 1, self.version + 1):
            commit = archive_log.commit(version)
            if commit is None or commit.removes_rows:  # trust no part of the index
                return None
            paths.extend(a.path for a in commit.files if a.path in present)
        return paths

    def all_paths(self) -> list[str]:
        return [str(p) for p in self.files.stats.column("path").to_pylist()]

    def scan_index(
        self,
        columns: Sequence[str],
        predicate: pc.Expression,
        batch_rows: int,
        key_range: tuple[str, str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """`columns` of the domain index rows `predicate` keeps, of the rows this snapshot holds
        (the index must exist; it may cover later versions too). With `key_range` (`[low,
        high)`, which `predicate` must imply), only the index files whose key statistics
        overlap it are opened."""
        assert self.index is not None
        try:
            scanner = self._index_dataset(key_range).scanner(
                columns=list(columns),
                filter=predicate & (pc.field(ADDED_IN) <= self.version),
                batch_size=batch_rows,
                fragment_readahead=1,
                batch_readahead=_INDEX_READAHEAD,
            )
            yield from scanner.to_batches()
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(f"domain index cannot be read: {exc}") from exc

    def _index_dataset(self, key_range: tuple[str, str] | None) -> ds.Dataset:
        """The index files that may hold keys of `key_range`, as a dataset. Made from their
        paths rather than by delta-rs's `to_pyarrow_dataset`, which turns every file's statistics
        of every column into expressions: ~15 ms a search for an index of 31 files, more than
        reading the one file a key range lies in. The index is certlake's own table: no
        partitions, deletion vectors or column mapping to honour."""
        assert self.index is not None
        actions = pa.table(self.index.get_add_actions(flatten=True))
        keep = None
        if key_range is not None and {f"min.{KEY}", f"max.{KEY}"} <= set(actions.column_names):
            low, high = key_range
            # Missing statistics keep a file: they only ever rule one out.
            keep = pc.and_(
                pc.fill_null(pc.less(actions.column(f"min.{KEY}"), high), True),
                pc.fill_null(pc.greater_equal(actions.column(f"max.{KEY}"), low), True),
            )
        paths = actions.column("path") if keep is None else pc.filter(actions.column("path"), keep)
        return ds.dataset(
            [str(p) for p in paths.to_pylist()],
            schema=pa.schema(self.index.schema().to_arrow()),
            format="parquet",
            filesystem=table_filesystem(index_uri(self.uri), self._options),
        )


class TablePool:
    """The archive and its index kept open between the searches of one process, for those of
    the newest version (first pages): loading a table's log costs ~8 ms a table, bringing an
    open handle up to date (`update_incremental`) ~1 ms. A handle serves one search at a time
    (taken, then given back), since a search holds the version its handle is at. Before a
    handle is used again, the table's first commit must still name the table it was opened
    on: `certlake index rebuild` deletes the index and writes a new one at the same place, and
    a handle of the old one brought "up to date" with the new one's commits would list files of
    neither."""

    def __init__(self, most_idle: int = 4) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[DeltaTable, str]]] = {}
        self._most_idle = most_idle

    @contextlib.contextmanager
    def snapshot(
        self, uri: str, storage_options: Mapping[str, str] | None, version: int | None
    ) -> Iterator[Snapshot]:
        if version is not None:
            yield Snapshot(uri, storage_options, version)
            return
        taken: list[tuple[str, DeltaTable, str]] = []
        try:
            archive = self._take(uri, storage_options)
            if archive is None:
                table = _open_archive(uri, storage_options, None)
                archive = (table, str(table.metadata().id))
            taken.append((uri, *archive))
            location = index_uri(uri)
            index = self._take(location, storage_options)
            if index is None:
                opened = open_index(uri, storage_options)
                index = None if opened is None else (opened, str(opened.metadata().id))
            if index is not None:
                taken.append((location, *index))
            yield Snapshot(
                uri, storage_options, None, opened=(archive[0], None if index is None else index[0])
            )
        finally:
            for location, table, table_id in taken:
                self._give(location, storage_options, table, table_id)

    def _key(
        self, uri: str, storage_options: Mapping[str, str] | None
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        return uri, tuple(sorted((storage_options or {}).items()))

    def _take(
        self, uri: str, storage_options: Mapping[str, str] | None
    ) -> tuple[DeltaTable, str] | None:
        with self._lock:
            idle = self._idle.get(self._key(uri, storage_options))
            if not idle:
                return None
            table, table_id = idle.pop()
        try:
            table.update_incremental()
            options = table_storage_options(uri, storage_options)
            if ArchiveLog(uri, options).table_id() == table_id:
                return table, table_id
        except (DeltaError, OSError, TableUnreadableError):
            pass
        return None  # gone, replaced or unreadable: the caller opens it afresh

    def _give(
        self,
        uri: str,
        storage_options: Mapping[str, str] | None,
        table: DeltaTable,
        table_id: str,
    ) -> None:
        with self._lock:
            idle = self._idle.setdefault(self._key(uri, storage_options), [])
            if len(idle) < self._most_idle:
                idle.append((table, table_id))
