"""The archive schema and compatibility with tables written by certstream-server-rust."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from certlake.lake.rows import messages_to_batch
from certlake.lake.schema import ARCHIVE_SCHEMA, ArchiveSchemaError
from certlake.lake.table import ArchiveTable

from .conftest import LOG_A, MakeMessages

# The required columns, in order, with their types.
SPEC_COLUMNS = [
    ("cert_index", pa.int64()),
    ("update_type", pa.string()),
    ("seen", pa.timestamp("us", tz="UTC")),
    ("seen_date", pa.string()),
    ("source_name", pa.string()),
    ("source_url", pa.string()),
    ("cert_link", pa.string()),
    ("serial_number", pa.string()),
    ("fingerprint", pa.string()),
    ("sha256", pa.string()),
    ("sha1", pa.string()),
    ("not_before", pa.int64()),
    ("not_after", pa.int64()),
    ("is_ca", pa.bool_()),
    ("signature_algorithm", pa.string()),
    ("subject_aggregated", pa.string()),
    ("issuer_aggregated", pa.string()),
    ("all_domains", pa.list_(pa.string())),
    ("as_der", pa.string()),
    ("chain", pa.list_(pa.string())),
]

# certstream-server-rust's `delta_schema()`: UInt64 index, every column NOT NULL, list elements
# named "item" and nullable. Its CreateBuilder maps UInt64 to Delta long.
RUST_ITEM_LIST = pa.list_(pa.field("item", pa.string(), nullable=True))
RUST_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            pa.uint64()
            if name == "cert_index"
            else RUST_ITEM_LIST
            if t == pa.list_(pa.string())
            else t,
            nullable=False,
        )
        for name, t in SPEC_COLUMNS
    ]
)


def test_schema_is_the_spec_20_columns_in_order() -> None:
    assert len(ARCHIVE_SCHEMA) == 20
    assert [(f.name, f.type) for f in ARCHIVE_SCHEMA] == [
        (name, pa.list_(pa.field("item", pa.string())) if t == pa.list_(pa.string()) else t)
        for name, t in SPEC_COLUMNS
    ]


def _rust_row(index: int) -> pa.RecordBatch:
    values = {
        "cert_index": pa.array([index], pa.uint64()),
        "seen": pa.array([1_700_000_000_000_000], pa.timestamp("us", tz="UTC")),
        "seen_date": pa.array(["2023-11-14"]),
        "not_before": pa.array([1_700_000_000]),
        "not_after": pa.array([1_730_000_000]),
        "is_ca": pa.array([False]),
        "all_domains": pa.array([["example.com"]], RUST_ITEM_LIST),
        "chain": pa.array([['{"subject":{}}']], RUST_ITEM_LIST),
        "source_url": pa.array([LOG_A]),
    }
    return pa.RecordBatch.from_arrays(
        [values.get(f.name, pa.array([f"rust {f.name}"])) for f in RUST_SCHEMA],
        schema=RUST_SCHEMA,
    )


def test_rust_layout_table_opens_and_appends(tmp_path: Path, messages: MakeMessages) -> None:
    # Laid out as the Rust tool does: created from its schema, then a UInt64 batch appended.
    path = str(tmp_path / "rust")
    DeltaTable.create(path, RUST_SCHEMA, partition_by=["seen_date"])
    write_deltalake(path, _rust_row(7), mode="append")
    table = ArchiveTable.open(path)
    assert table is not None
    batch = messages_to_batch(messages(8, 10))
    table.append(batch, versions={LOG_A: 10}, commit_id="c1")
    rows = DeltaTable(path).to_pyarrow_table().sort_by("cert_index")
    assert rows["cert_index"].to_pylist() == [7, 8, 9]
    assert rows["source_name"].to_pylist()[0] == "rust source_name"
    assert rows["all_domains"].to_pylist()[1:] == batch["all_domains"].to_pylist()
    assert DeltaTable(path).transaction_version(f"certlake:{LOG_A}") == 10


def test_nullable_table_with_element_lists_appends(tmp_path: Path, messages: MakeMessages) -> None:
    # A table created by another writer from pyarrow defaults: nullable columns, "element" lists.
    path = str(tmp_path / "nullable")
    loose = pa.schema(
        [
            pa.field(f.name, pa.list_(pa.field("element", pa.string())) if pa.types.is_list(f.type)
                     else f.type)
            for f in ARCHIVE_SCHEMA
        ]
    )  # fmt: skip
    DeltaTable.create(path, loose, partition_by=["seen_date"])
    table = ArchiveTable.open(path)
    assert table is not None
    table.append(messages_to_batch(messages(0, 3)), versions={}, commit_id="c1")
    assert DeltaTable(path).to_pyarrow_table()["cert_index"].to_pylist() == [0, 1, 2]


def test_foreign_table_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "other")
    write_deltalake(
        path, pa.table({"cert_index": [1], "seen_date": ["x"]}), partition_by="seen_date"
    )
    with pytest.raises(ArchiveSchemaError, match="not a certlake archive table"):
        ArchiveTable.open(path)


def test_wrongly_partitioned_table_is_refused(tmp_path: Path, messages: MakeMessages) -> None:
    path = str(tmp_path / "unpartitioned")
    DeltaTable.create(path, ARCHIVE_SCHEMA)
    with pytest.raises(ArchiveSchemaError, match="partitioned by"):
        ArchiveTable.open_or_create(path)
