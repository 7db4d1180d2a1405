"""The archive at one table version, as a search reads it: its data files' statistics, its domain
index, and which of its files that index does not cover yet (the I/O under `query/search`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler

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
from certlake.lake.table import STORAGE_ERRORS, TableUnreadableError, table_storage_options

# Index row groups read ahead at most: a few at a time keep an abandoned or long scan (an
# export that finds too many candidates) from holding much of the index decoded.
_INDEX_READAHEAD: Final = 4


class NoArchiveError(Exception):
    """There is no archive table (yet) at the configured location (HTTP 503)."""


class CursorGoneError(Exception):
    """The cursor's table version can no longer be read: vacuumed, or its log cleaned (410)."""


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
    ) -> None:
        options = None if storage_options is None else dict(storage_options)
        try:
            table = DeltaTable(uri, storage_options=options, version=version)
        except TableNotFoundError as exc:
            if version is None:
                raise NoArchiveError(f"no archive table at {uri}") from exc
            raise CursorGoneError(f"table version {version} is gone") from exc
        except (DeltaError, OSError) as exc:
            if version is not None:
                raise CursorGoneError(f"table version {version} cannot be read: {exc}") from exc
            raise TableUnreadableError(f"archive {uri} cannot be read: {exc}") from exc
        self.uri = uri
        self._options = table_storage_options(uri, storage_options)
        self.table = table
        self.files = TableFiles(table, uri, storage_options, "archive")
        self.version = self.files.version
        index = open_index(uri, storage_options) if with_index else None
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
        filesystem = pafs.PyFileSystem(
            DeltaStorageHandler(index_uri(self.uri), self._options or {})
        )
        return ds.dataset(
            [str(p) for p in paths.to_pylist()],
            schema=pa.schema(self.index.schema().to_arrow()),
            format="parquet",
            filesystem=filesystem,
        )
