"""The archive's table layout and the side table of passed-over index ranges.

The 20 columns, their order, types and nullability are those of certstream-server-rust's
`delta_schema()`, so its tables open and append without a schema change: every column NOT NULL,
list elements nullable. The Rust tool declares `cert_index` as Arrow UInt64, which delta-rs stores
as Delta `long`; certlake writes int64 directly (CT indices are far below 2**63).
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

# The key of an archive row: a log and an index in it.
SOURCE_URL: Final = "source_url"
CERT_INDEX: Final = "cert_index"
INT64_MAX: Final = 2**63 - 1  # the largest `cert_index` a Delta `long` holds
Segment = tuple[str, int, int]  # keys of one log: source_url, first index, last (inclusive)

STRING_LIST: Final = pa.list_(pa.field("item", pa.string(), nullable=True))
SEEN_TYPE: Final = pa.timestamp("us", tz="UTC")

ARCHIVE_SCHEMA: Final = pa.schema(
    [
        pa.field("cert_index", pa.int64(), nullable=False),
        pa.field("update_type", pa.string(), nullable=False),
        pa.field("seen", SEEN_TYPE, nullable=False),
        pa.field("seen_date", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("cert_link", pa.string(), nullable=False),
        pa.field("serial_number", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("sha1", pa.string(), nullable=False),
        pa.field("not_before", pa.int64(), nullable=False),
        pa.field("not_after", pa.int64(), nullable=False),
        pa.field("is_ca", pa.bool_(), nullable=False),
        pa.field("signature_algorithm", pa.string(), nullable=False),
        pa.field("subject_aggregated", pa.string(), nullable=False),
        pa.field("issuer_aggregated", pa.string(), nullable=False),
        pa.field("all_domains", STRING_LIST, nullable=False),
        pa.field("as_der", pa.string(), nullable=False),
        pa.field("chain", STRING_LIST, nullable=False),
    ]
)
COLUMNS: Final = tuple(ARCHIVE_SCHEMA.names)
PARTITION_BY: Final = ("seen_date",)

# Index ranges the live sink passed without writing rows (see docs/architecture.md, "Archive and
# state agree"). A `_`-prefixed directory inside the table: Delta readers and VACUUM ignore it,
# and it travels with the table when the directory is copied.
SKIPPED_DIR: Final = "_certlake_skipped"
SKIPPED_SCHEMA: Final = pa.schema(
    [
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("start_index", pa.int64(), nullable=False),
        pa.field("end_index", pa.int64(), nullable=False),  # inclusive
        pa.field("kind", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("recorded", SEEN_TYPE, nullable=False),
    ]
)


class ArchiveSchemaError(ValueError):
    """An existing table's schema is not the archive's (a wrong path, or another tool's table)."""


def _base_type(t: pa.DataType) -> pa.DataType:
    """The type with list element names and integer signedness normalized: Delta has neither
    unsigned integers nor list element names, so readers report them in different spellings."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_base_type(t.value_type))
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_timestamp(t):
        # Delta `timestamp` is µs since the epoch, UTC; readers spell the zone differently.
        return SEEN_TYPE
    return t


def schema_problems(schema: pa.Schema, expected: pa.Schema = ARCHIVE_SCHEMA) -> list[str]:
    """What keeps rows of `expected` from being appended to a table of `schema`; empty if none.
    Nullability is not compared: non-null rows fit a nullable column."""
    problems: list[str] = []
    if list(schema.names) != list(expected.names):
        problems.append(f"columns are {list(schema.names)}, expected {list(expected.names)}")
        return problems
    for have, want in zip(schema, expected, strict=True):
        if _base_type(have.type) != _base_type(want.type):
            problems.append(f"column {have.name} is {have.type}, expected {want.type}")
    return problems


def check_archive_schema(schema: pa.Schema, partition_columns: list[str], where: str) -> None:
    """Raise `ArchiveSchemaError` unless a table with `schema` and `partition_columns` takes
    archive rows as they are."""
    problems = schema_problems(schema)
    if partition_columns != list(PARTITION_BY):
        problems.append(f"partitioned by {partition_columns}, expected {list(PARTITION_BY)}")
    if problems:
        raise ArchiveSchemaError(f"{where} is not a certlake archive table: " + "; ".join(problems))


# The log's signed tree heads that the archived entries reproduced, and the evidence of each
# verification failure (see `heads_rows.py`): beside the skipped ranges, for the same reasons.
# A row below a log's largest verified `tree_size` is covered by a signed head; a row at or above
# it is not (yet). `kind` is one of "verified", "mismatch", "split-view", "served-differently".
HEADS_DIR: Final = "_certlake_heads"
INDEX_LIST: Final = pa.list_(pa.field("item", pa.int64(), nullable=True))
HEADS_SCHEMA: Final = pa.schema(
    [
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        # The head concerned: the verified one, the one the entries did not reproduce, or the
        # later of two heads that contradict each other.
        pa.field("tree_size", pa.int64(), nullable=False),
        pa.field("root_hash", pa.binary(), nullable=False),
        pa.field("timestamp_ms", pa.int64(), nullable=False),
        pa.field("signature", pa.binary(), nullable=False),
        # The earlier head of a split view; for other evidence, the last verified head if any.
        pa.field("other_tree_size", pa.int64(), nullable=True),
        pa.field("other_root_hash", pa.binary(), nullable=True),
        pa.field("other_timestamp_ms", pa.int64(), nullable=True),
        pa.field("other_signature", pa.binary(), nullable=True),
        pa.field("computed_root", pa.binary(), nullable=True),  # what the entries hashed to
        pa.field("first_index", pa.int64(), nullable=True),  # suspect range [first, end)
        pa.field("end_index", pa.int64(), nullable=True),
        pa.field("indices", INDEX_LIST, nullable=True),  # entries known to differ
        pa.field("detail", pa.string(), nullable=False),
        pa.field("recorded_us", SEEN_TYPE, nullable=False),
    ]
)
