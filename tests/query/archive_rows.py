"""Archive rows made to order for search tests: only the columns a search reads carry meaning;
the rest are filled as a writer would (non-null)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from certlake.lake.schema import ARCHIVE_SCHEMA
from certlake.lake.table import ArchiveTable


@dataclass(frozen=True)
class Row:
    url: str
    index: int
    seen_date: str
    domains: tuple[str, ...]
    issuer: str = "C=US, O=Let's Encrypt, CN=R11"


def rows_table(rows: Sequence[Row]) -> pa.Table:
    seen = [dt.datetime.fromisoformat(r.seen_date + "T12:00:00+00:00") for r in rows]
    columns = {
        "cert_index": [r.index for r in rows],
        "update_type": ["X509LogEntry"] * len(rows),
        "seen": seen,
        "seen_date": [r.seen_date for r in rows],
        "source_name": [r.url.rsplit("/", 2)[-2] or r.url for r in rows],
        "source_url": [r.url for r in rows],
        "cert_link": [f"{r.url}ct/v1/get-entries?start={r.index}&end={r.index}" for r in rows],
        "serial_number": [f"{r.index:032X}" for r in rows],
        "fingerprint": [f"FP:{r.url}:{r.index}" for r in rows],
        "sha256": [f"{hash((r.url, r.index)) & (2**64 - 1):064x}" for r in rows],
        "sha1": [f"{hash((r.index, r.url)) & (2**64 - 1):040x}" for r in rows],
        "not_before": [1_700_000_000 + r.index for r in rows],
        "not_after": [1_710_000_000 + r.index for r in rows],
        "is_ca": [False] * len(rows),
        "signature_algorithm": ["sha256, rsa"] * len(rows),
        "subject_aggregated": [f"/CN={r.domains[0] if r.domains else ''}" for r in rows],
        "issuer_aggregated": [r.issuer for r in rows],
        "all_domains": [list(r.domains) for r in rows],
        "as_der": ["MIIB"] * len(rows),
        "chain": [[] for _ in rows],
    }
    return pa.table(columns, schema=ARCHIVE_SCHEMA)


def append(uri: str, rows: Sequence[Row], commit_id: str = "test") -> None:
    """One archive commit of `rows`, with each log's cursor moved past its last row."""
    table = ArchiveTable.open_or_create(uri, compression_level=1)
    cursors: dict[str, int] = {}
    for r in rows:
        cursors[r.url] = max(cursors.get(r.url, 0), r.index + 1)
    table.append(rows_table(rows), versions=cursors, commit_id=commit_id)
