"""A Delta table read by its data files, for the jobs whose cost must follow what they need rather
than the table's size (gap detection, merge).

- The Delta log's per-file statistics (`normalize_stats`) decide which data files can hold a
  `(source_url, cert_index)` of a set of key segments at all (`may_hold`); the others are never
  opened. String statistics may be truncated, but they stay bounds, so `min <= url <= max` never
  rules out a file wrongly. Statistics only ever exclude files: they cannot prove one complete.
- `TableFiles.scan_keys` reads the two key columns of chosen files (`source_url` dictionary-
  encoded) with a predicate that pyarrow pushes down to row-group statistics; no other column is
  decoded.
- `TableFiles.row_groups` yields a table's row groups in commit order, each readable on its own,
  so a job can hold one group's keys or rows at a time.

Failures to read are `TableUnreadableError`s that name the table.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from certlake.lake.schema import CERT_INDEX, INT64_MAX, SOURCE_URL, Segment
from certlake.lake.table import STORAGE_ERRORS, ArchiveTable, TableUnreadableError, open_table

_STAT_COLUMNS: Final = {
    "rows": ("num_records", pa.int64()),
    "min_idx": (f"min.{CERT_INDEX}", pa.int64()),
    "max_idx": (f"max.{CERT_INDEX}", pa.int64()),
    "min_url": (f"min.{SOURCE_URL}", pa.string()),
    "max_url": (f"max.{SOURCE_URL}", pa.string()),
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


def may_hold(stats: pa.Table, segments: Iterable[Segment]) -> pa.Array:
    """Per file: can it hold a row of one of `segments`? Unknown statistics → yes."""
    mask: Any = pa.repeat(pa.scalar(False), stats.num_rows)
    for url, lo, hi in segments:
        lo, hi = min(lo, INT64_MAX), min(hi, INT64_MAX)
        conditions = (
            pc.less_equal(stats.column("min_url"), url),
            pc.greater_equal(stats.column("max_url"), url),
            pc.less_equal(stats.column("min_idx"), hi),
            pc.greater_equal(stats.column("max_idx"), lo),
            pc.greater(stats.column("rows"), 0),
        )
        hit = functools.reduce(pc.and_, (pc.fill_null(c, True) for c in conditions))
        mask = pc.or_(mask, hit)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


@dataclass
class RowGroup:
    """One Parquet row group of a table, readable on its own."""

    dataset: ds.FileSystemDataset
    rows: int

    def keys(self) -> pa.Table:
        """The group's `source_url` and `cert_index`, in row order."""
        return self.dataset.to_table(columns=[SOURCE_URL, CERT_INDEX])

    def batches(self, rows: int) -> Iterator[pa.RecordBatch]:
        """The group's rows, whole, at most `rows` at a time."""
        return iter(self.dataset.to_batches(batch_size=rows, batch_readahead=1, use_threads=True))


class TableFiles:
    """A table's schema and per-file statistics, read once from its log (`refresh` reads the
    commits made since), and reads of chosen files."""

    def __init__(
        self, table: DeltaTable, uri: str, storage_options: Mapping[str, str] | None, role: str
    ) -> None:
        self.uri = uri
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.role = role
        self._table = table
        self._keys: ds.FileSystemDataset | None = None
        self._fragments: dict[str, ds.Fragment] = {}
        self._rows: ds.FileSystemDataset | None = None
        self._row_fragments: dict[str, ds.Fragment] = {}
        with self._reading():
            self.schema = pa.schema(table.schema().to_arrow())
            metadata = table.metadata()
            self.partition_columns = list(metadata.partition_columns)
            self.table_id = str(metadata.id)  # the stub says int; it is a UUID
            self.stats = normalize_stats(pa.table(table.get_add_actions(flatten=True)))

    @classmethod
    def open(
        cls, uri: str, storage_options: Mapping[str, str] | None, role: str
    ) -> TableFiles | None:
        """The table at `uri`, or None when there is none; `role` ("main", "staging") names it in
        errors."""
        table = open_table(uri, storage_options, role)
        return None if table is None else cls(table, uri, storage_options, role)

    @property
    def version(self) -> int:
        return int(self._table.version())

    def refresh(self) -> None:
        """Read the commits made since the table was opened or last refreshed."""
        with self._reading():
            self._table.update_incremental()
            self.stats = normalize_stats(pa.table(self._table.get_add_actions(flatten=True)))
        self._keys = self._rows = None

    def archive(self, compression_level: int) -> ArchiveTable:
        """An appender to this table through the same handle, so `refresh` sees its commits."""
        return ArchiveTable(self._table, self.uri, self.storage_options, compression_level)

    def scan_keys(
        self, paths: Sequence[str], predicate: pc.Expression, batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """`source_url` and `cert_index` of the rows of `paths` that `predicate` keeps."""
        with self._reading():
            if self._keys is None:
                self._keys = self._table.to_pyarrow_dataset(
                    parquet_read_options=ds.ParquetReadOptions(dictionary_columns={SOURCE_URL})
                )
                self._fragments = {f.path: f for f in self._keys.get_fragments()}
        yield from self._scan(
            self._keys, self._fragments, paths, [SOURCE_URL, CERT_INDEX], predicate, batch_rows
        )

    def scan_file_keys(
        self, paths: Sequence[str], batch_rows: int
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        """`source_url` and `cert_index` of every row of `paths`, each batch with the path of the
        file it comes from (in the order of the table's log, a file's batches one after
        another)."""
        if not paths:
            return
        with self._reading():
            if self._keys is None:
                self._keys = self._table.to_pyarrow_dataset(
                    parquet_read_options=ds.ParquetReadOptions(dictionary_columns={SOURCE_URL})
                )
                self._fragments = {f.path: f for f in self._keys.get_fragments()}
            dataset = self._keys
            subset = ds.FileSystemDataset(
                [self._fragment(p, self._fragments) for p in paths],
                dataset.schema,
                dataset.format,
                dataset.filesystem,
            )
            scanner = subset.scanner(
                columns=[SOURCE_URL, CERT_INDEX], batch_size=batch_rows, use_threads=True
            )
            for tagged in scanner.scan_batches():
                yield tagged.fragment.path, tagged.record_batch

    @property
    def reader_features(self) -> frozenset[str]:
        """The table features a reader must support (`deletionVectors`, ...); empty below
        reader version 3."""
        with self._reading():
            return frozenset(self._table.protocol().reader_features or ())

    def scan(
        self,
        paths: Sequence[str],
        columns: Sequence[str],
        predicate: pc.Expression | None,
        batch_rows: int,
        *,
        lean: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """`columns` (the partition column among them if asked) of the rows of `paths` that
        `predicate` keeps. `lean`: read in this thread, one batch ahead — for a consumer
        slower than the reads (an export turning rows into text): Arrow's threaded readahead
        would fill with several files' row groups decoded (measured: peak memory then grows
        with the archive's size, up to its readahead's bound)."""
        if not paths:  # no dataset to make: delta-rs takes ~50 ms for one of 100 files
            return
        with self._reading():
            if self._rows is None:
                self._rows = self._table.to_pyarrow_dataset()
                self._row_fragments = {f.path: f for f in self._rows.get_fragments()}
        yield from self._scan(
            self._rows, self._row_fragments, paths, columns, predicate, batch_rows, lean=lean
        )

    def _scan(
        self,
        dataset: ds.FileSystemDataset,
        fragments: Mapping[str, ds.Fragment],
        paths: Sequence[str],
        columns: Sequence[str],
        predicate: pc.Expression | None,
        batch_rows: int,
        *,
        lean: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        if not paths:
            return
        with self._reading():
            subset = ds.FileSystemDataset(
                [self._fragment(p, fragments) for p in paths],
                dataset.schema,
                dataset.format,
                dataset.filesystem,
            )
            readahead = {"fragment_readahead": 1, "batch_readahead": 1} if lean else {}
            scanner = subset.scanner(
                columns=list(columns),
                filter=predicate,
                batch_size=batch_rows,
                use_threads=not lean,
                **readahead,
            )
            yield from scanner.to_batches()

    def row_groups(self) -> Iterator[RowGroup]:
        """The row groups in commit order (data files by modification time, then path; rows in
        file order). Footers are read as the groups are reached."""
        with self._reading():
            dataset = self._table.to_pyarrow_dataset()
            fragments = {f.path: f for f in dataset.get_fragments()}
            actions = pa.table(self._table.get_add_actions(flatten=True))
            order = actions.select(["path", "modification_time"]).sort_by(
                [("modification_time", "ascending"), ("path", "ascending")]
            )
            for path in order.column("path").to_pylist():
                for group in self._fragment(path, fragments).split_by_row_group():
                    sub = ds.FileSystemDataset(
                        [group], dataset.schema, dataset.format, dataset.filesystem
                    )
                    yield RowGroup(sub, group.row_groups[0].num_rows)

    def _fragment(self, path: str, fragments: Mapping[str, ds.Fragment]) -> ds.Fragment:
        if path not in fragments:
            raise TableUnreadableError(
                f"{self.role} table {self.uri}: data file {path} is in the log but not readable"
            )
        return fragments[path]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(
                f"{self.role} table {self.uri} cannot be read: {exc}"
            ) from exc
