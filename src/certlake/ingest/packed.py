"""Fetched entries as plain tuples for a worker process, and back: what the live pipeline's and
backfill's build workers are handed.

Crossing the process boundary is made cheap (measured, docs/benchmarks.md "backfill"): a chunk
goes out packed as plain tuples. An RFC 6962 element goes out as served, its base64 text not yet
decoded: decoding it (base64, then the TLS structures: ~18 µs per entry) is CPU work the workers
do, leaving the event loop only to read. A static log's entries arrive decoded from their tile;
each distinct chain is then packed once (entries of one CA share it, and pickle writes it once
per chunk). The Merkle leaf bytes and a precert's logged TBS are left out: messages and rows do
not need them (a precert's fields come from the pre-certificate).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from certlake.ct.client.reader import (
    UNHASHABLE,
    FetchedEntry,
    RawEntry,
    Unparseable,
    served_leaf_hash,
)
from certlake.ct.entry import EntryType, LogEntry, LogSource
from certlake.ct.leaf import decode_get_entries_element, served_leaf_hash_of
from certlake.ct.merkle import leaf_hash
from certlake.ct.tls import DecodeError
from certlake.ct.urls import get_entries_link

# (index, timestamp_ms, entry type, cert DER, chain, cert_link, leaf hash) of a decoded entry;
# (index, leaf_input, extra_data) of an RFC 6962 element as served; (index, (why it does not
# decode, leaf hash)).
PackedEntry = tuple[int, int, int, bytes, tuple[bytes, ...], str, bytes]
PackedRaw = tuple[int, object, object]
Packed = list[PackedEntry | PackedRaw | tuple[int, tuple[str, bytes]]]


def pack(items: Iterable[FetchedEntry | Unparseable | RawEntry]) -> Packed:
    """`items` as plain tuples for another process."""
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


class Unpacked(NamedTuple):
    """One packed item, decoded: the entry, or why there is none (`reason`, then `entry` is
    None), and the leaf hash as served either way."""

    cert_index: int
    entry: LogEntry | None
    cert_link: str
    leaf_hash: bytes
    reason: str


def unpacked(source: LogSource, packed: Packed) -> Iterator[Unpacked]:
    """Each packed item decoded, in order."""
    for item in packed:
        if len(item) == 2:
            index, (reason, hash_) = item
            yield Unpacked(index, None, "", hash_, reason)
            continue
        if len(item) == 3:
            index, leaf_input, extra_data = item
            try:
                entry = decode_get_entries_element(index, leaf_input, extra_data)
            except DecodeError as e:
                hash_ = served_leaf_hash_of(leaf_input) or UNHASHABLE
                yield Unpacked(index, None, "", hash_, str(e))
                continue
            yield Unpacked(
                index, entry, get_entries_link(source.url, index), leaf_hash(entry.leaf_input), ""
            )
            continue
        index, ts, kind, der, chain, cert_link, hash_ = item
        yield Unpacked(
            index, LogEntry(index, ts, EntryType(kind), der, chain), cert_link, hash_, ""
        )


def worker_init() -> None:
    """Set up a build worker process: Ctrl-C on a terminal reaches the whole process group, but
    only the parent decides what an interrupt means (it stops fetching and writes, or streams,
    what the workers built)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_workers(processes: int) -> ProcessPoolExecutor:
    """`processes` build workers. Spawned, not forked: a fork would copy the parent's event loop,
    threads and sockets, and its memory would be counted again in each child."""
    return ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
    )
