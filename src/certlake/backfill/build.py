"""Entries → archive rows, a chunk at a time: backfill's CPU-heavy step, run in worker processes.

Pure: `build_record` (exactly the archive fields of the live path's `build_message`) and the same
`lake/rows.split_malformed`, so backfilled rows are the live sink's rows (delta-backfill.AC4.2).

Crossing the process boundary is made cheap (measured, docs/benchmarks.md "backfill"): a chunk
goes out packed as plain tuples, and comes back as one Arrow table, whose buffers pickle whole
rather than row by row. An RFC 6962 element goes out as served, its base64 text not yet
decoded: decoding it (base64, then the TLS structures: ~18 µs per entry) is CPU work the
workers do, leaving the event loop only to read. A static log's entries arrive decoded from
their tile; each distinct chain is then packed once (entries of one CA share it, and pickle
writes it once per chunk).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_record
from certlake.ct.client.reader import (
    UNHASHABLE,
    FetchedEntry,
    RawEntry,
    Unparseable,
    served_leaf_hash,
)
from certlake.ct.compact import CompactRange
from certlake.ct.entry import EntryType, LogEntry, LogSource
from certlake.ct.leaf import decode_get_entries_element, served_leaf_hash_of
from certlake.ct.merkle import leaf_hash
from certlake.ct.tls import DecodeError
from certlake.ct.urls import get_entries_link
from certlake.lake.rows import TRANSPORT_SCHEMA, split_malformed
from certlake.lake.txn import SkipKind, SkippedRange

# (index, timestamp_ms, entry type, cert DER, chain, cert_link, leaf hash) of a decoded entry;
# (index, leaf_input, extra_data) of an RFC 6962 element as served; (index, (why it does not
# decode, leaf hash)).
PackedEntry = tuple[int, int, int, bytes, tuple[bytes, ...], str, bytes]
PackedRaw = tuple[int, object, object]
Packed = list[PackedEntry | PackedRaw | tuple[int, tuple[str, bytes]]]


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


def pack(items: Iterable[FetchedEntry | Unparseable | RawEntry]) -> Packed:
    """`items` as plain tuples for another process. The Merkle leaf bytes and a precert's logged
    TBS are left out: rows do not need them (a precert's fields come from the pre-certificate)."""
    chains: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
    out: Packed = []
    for item in items:
        if isinstance(item, RawEntry):
            out.append((item.index, item.leaf_input, item.extra_data))
            continue
        if isinstance(item, Unparseable):
            out.append((item.index, (item.error, served_leaf_hash(item))))
            continue
        e = item.entry
        chain = chains.setdefault(e.chain, e.chain)
        out.append(
            (
                e.index,
                e.timestamp_ms,
                int(e.entry_type),
                e.cert_der,
                chain,
                item.cert_link,
                served_leaf_hash(item),
            )
        )
    return out


def build_rows(source: LogSource, packed: Packed, seen: float) -> BuiltRows:
    """The archive rows of a packed chunk fetched at `seen`."""
    messages: list[CertMessage] = []
    skipped: list[SkippedRange] = []
    leaves: CompactRange | None = None
    first_leaf: bytes | None = None
    for item in packed:
        if len(item) == 2:
            index, (reason, hash_) = item
        else:
            try:
                if len(item) == 3:
                    index, leaf_input, extra_data = item
                    try:
                        entry = decode_get_entries_element(index, leaf_input, extra_data)
                    except DecodeError:
                        hash_ = served_leaf_hash_of(leaf_input) or UNHASHABLE
                        raise
                    hash_ = leaf_hash(entry.leaf_input)
                    cert_link = get_entries_link(source.url, index)
                else:
                    index, ts, kind, der, chain, cert_link, hash_ = item
                    entry = LogEntry(index, ts, EntryType(kind), der, chain)
            except DecodeError as e:
                reason = str(e)
            else:
                reason = ""
        if leaves is None:
            leaves, first_leaf = CompactRange(index), hash_
        leaves.append(hash_)
        if not reason:
            try:
                messages.append(build_record(entry, source, seen, cert_link))
                continue
            except CertificateParseError as e:
                reason = f"certificate: {e}"
        skipped.append(SkippedRange(source.url, index, index, SkipKind.UNPARSEABLE, reason))
    rows, malformed = split_malformed(messages, schema=TRANSPORT_SCHEMA)
    skipped.extend(
        SkippedRange(m.source_url, m.cert_index, m.cert_index, SkipKind.MALFORMED, reason)
        for m, reason in malformed
    )
    return BuiltRows(rows, tuple(skipped), leaves, first_leaf)


def worker_init() -> None:
    """Set up a build worker process: Ctrl-C on a terminal reaches the whole process group, but
    only the parent decides what an interrupt means (it stops fetching and writes what the
    workers built)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
