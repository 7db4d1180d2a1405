"""Entries → archive rows, a chunk at a time: backfill's CPU-heavy step, run in worker processes.

Pure: `build_record` (exactly the archive fields of the live path's `build_message`) and the same
`lake/rows.split_malformed`, so backfilled rows are the live sink's rows (delta-backfill.AC4.2).

Crossing the process boundary is made cheap (measured, docs/benchmarks.md "backfill"): a chunk
goes out packed as plain tuples of bytes, each distinct chain once (entries of one CA share it,
and pickle then writes it once per chunk) — about 2 µs per entry to pickle and 5 to rebuild,
against 7 and 9 for the dataclasses, and 1.5 KB instead of 3.7 KB — and comes back as one Arrow
table, whose buffers pickle whole rather than row by row.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_record
from certlake.ct.client.reader import FetchedEntry, Unparseable
from certlake.ct.entry import EntryType, LogEntry, LogSource
from certlake.lake.rows import split_malformed
from certlake.lake.txn import SkipKind, SkippedRange

# (index, timestamp_ms, entry type, cert DER, chain, cert_link), or (index, why it does not
# decode).
PackedEntry = tuple[int, int, int, bytes, tuple[bytes, ...], str]
Packed = list[PackedEntry | tuple[int, str]]


@dataclass(frozen=True, slots=True)
class BuiltRows:
    """The rows of a chunk, and the indices that became no row: entries or certificates that do
    not decode (`SkipKind.UNPARSEABLE`) and messages that do not fit the schema
    (`SkipKind.MALFORMED`)."""

    rows: pa.Table
    skipped: tuple[SkippedRange, ...]


def pack(items: Iterable[FetchedEntry | Unparseable]) -> Packed:
    """`items` as plain tuples for another process. The Merkle leaf bytes and a precert's logged
    TBS are left out: rows do not need them (a precert's fields come from the pre-certificate)."""
    chains: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
    out: Packed = []
    for item in items:
        if isinstance(item, Unparseable):
            out.append((item.index, item.error))
            continue
        e = item.entry
        chain = chains.setdefault(e.chain, e.chain)
        out.append((e.index, e.timestamp_ms, int(e.entry_type), e.cert_der, chain, item.cert_link))
    return out


def build_rows(source: LogSource, packed: Packed, seen: float) -> BuiltRows:
    """The archive rows of a packed chunk fetched at `seen`."""
    messages: list[CertMessage] = []
    skipped: list[SkippedRange] = []
    for item in packed:
        if len(item) == 2:
            index, reason = item
        else:
            index, ts, kind, der, chain, cert_link = item
            entry = LogEntry(index, ts, EntryType(kind), der, chain)
            try:
                messages.append(build_record(entry, source, seen, cert_link))
                continue
            except CertificateParseError as e:
                reason = f"certificate: {e}"
        skipped.append(SkippedRange(source.url, index, index, SkipKind.UNPARSEABLE, reason))
    rows, malformed = split_malformed(messages)
    skipped.extend(
        SkippedRange(m.source_url, m.cert_index, m.cert_index, SkipKind.MALFORMED, reason)
        for m, reason in malformed
    )
    return BuiltRows(rows, tuple(skipped))


def worker_init() -> None:
    """Set up a build worker process: Ctrl-C on a terminal reaches the whole process group, but
    only the parent decides what an interrupt means (it stops fetching and writes what the
    workers built)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
