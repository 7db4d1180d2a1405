"""Entries → archive rows, a chunk at a time: backfill's CPU-heavy step, run in worker processes.

Pure: `build_record` (exactly the archive fields of the live path's `build_message`) and the same
`lake/rows.split_malformed`, so backfilled rows are the live sink's rows (delta-backfill.AC4.2).

A chunk goes out packed (`ingest/packed.py`: plain tuples, RFC 6962 elements undecoded) and
comes back as one Arrow table, whose buffers pickle whole rather than row by row (measured,
docs/benchmarks.md "backfill").
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_record
from certlake.ct.compact import CompactRange
from certlake.ct.entry import LogSource
from certlake.ingest.packed import Packed, unpacked
from certlake.lake.rows import WRITE_SCHEMA, split_malformed
from certlake.lake.txn import SkipKind, SkippedRange


@dataclass(frozen=True, slots=True)
class BuiltRows:
    """The rows of a chunk, and the indices that became no row: entries or certificates that do
    not decode (`SkipKind.UNPARSEABLE`) and messages that do not fit the schema
    (`SkipKind.MALFORMED`). `leaves` is the chunk's compact Merkle range (every entry's leaf
    hash as served, rows or not) and `first_leaf` its first leaf hash: what backfill checks
    against the log's signed head (`backfill/verify.py`); None when the chunk was empty."""

    rows: pa.Table
    skipped: tuple[SkippedRange, ...]
    leaves: CompactRange | None = None
    first_leaf: bytes | None = None


def build_rows(source: LogSource, packed: Packed, seen: float) -> BuiltRows:
    """The archive rows of a packed chunk fetched at `seen`."""
    messages: list[CertMessage] = []
    skipped: list[SkippedRange] = []
    leaves: CompactRange | None = None
    first_leaf: bytes | None = None
    for index, entry, cert_link, hash_, reason in unpacked(source, packed):
        if leaves is None:
            leaves, first_leaf = CompactRange(index), hash_
        leaves.append(hash_)
        if entry is not None:
            try:
                messages.append(build_record(entry, source, seen, cert_link))
                continue
            except CertificateParseError as e:
                reason = f"certificate: {e}"
        skipped.append(SkippedRange(source.url, index, index, SkipKind.UNPARSEABLE, reason))
    rows, malformed = split_malformed(messages, schema=WRITE_SCHEMA)
    skipped.extend(
        SkippedRange(m.source_url, m.cert_index, m.cert_index, SkipKind.MALFORMED, reason)
        for m, reason in malformed
    )
    return BuiltRows(rows, tuple(skipped), leaves, first_leaf)
