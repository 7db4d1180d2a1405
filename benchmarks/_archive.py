"""A large archive for `benchmarks/query.py`, built by the project's own tools from real
certificates, with known search targets.

Rows: a pool of `POOL_SIZE` records of real certificates the built-in test log issues
(`certlake.testlog.pool.CertPool`, half precertificates, ECDSA and RSA intermediates), each made
into an archive row by `certlake.certs.message.build_record` and `certlake.lake.rows.
messages_to_batch` (chain dictionary-encoded, as backfill hands rows to the writer). Building
every row that way costs ~100 µs, so the archive's rows are the pool's rows taken in turn (Arrow
`take`: `as_der`, `chain`, issuer, validity, algorithm, entry type) with the columns a search
reads or a reader would notice made new for each row with Arrow vectorized operations:

- `source_url`, `source_name`, `cert_index`, `cert_link`: 8 logs of different sizes and rates
  (indices from each log's own base up), rows of one log in 256-row chunks (a get-entries batch),
  chunks of the logs interleaved as their watchers deliver them;
- `seen` and `seen_date`: spread evenly over `DAYS` days in row order (the partition);
- `all_domains` (and `subject_aggregated`, `/CN=` its first name): 1–3 names (55/30/15 %) of a
  random 8-character label under one of 65,536 synthetic registered domains, the domain itself
  and its wildcard; `sha256`, `sha1` (= `fingerprint`), `serial_number`: random, so unique.

Search targets, at positions drawn at random over the whole archive (so in every part of it):
`EXAMPLE_ROWS` rows named `h{n}.example.com` (every fifth also `www.h{n}.example.com`: two names
that match, one row), and `EXACT_ROWS` rows named `exact-target.example.org` (every other also
`www.exact-target.example.org`, which the exact search must not count twice). No other name is
under `example.com` or is `exact-target.example.org`.

On disk ~400 bytes a row: the test CA's leaves share their issuer, extensions and a few leaf
keys, so `as_der` (1.25 KB) compresses ~5x, far better than real certificates do; neither a
search nor the fork's scan reads `as_der` or `chain`, so this changes the disk size, not what is
measured.

Commits: `ArchiveTable.append` (the sink's and backfill's path: zstd level 3, the sink's default;
each log's cursor moved past its last row) of `commit_rows` rows in row order, so each commit
writes a file per day it spans, as a live archive's are. Then the domain index is built
(`certlake.lake.domains.catch_up(uri, None, build=True)`) and clustered by key (`optimize.z_order
(["key"])` with `domains.index_writer`, then `vacuum` with no retention: what `certlake maintain`
does to it).
"""

from __future__ import annotations

import datetime as dt
import random
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from certlake.certs.message import build_record
from certlake.ct.entry import LogEntry, LogKind, LogSource
from certlake.lake.domains import INDEX_ROW_GROUP, KEY, catch_up, index_uri, index_writer
from certlake.lake.rows import WRITE_SCHEMA, messages_to_batch
from certlake.lake.schema import STRING_LIST
from certlake.lake.table import ArchiveTable
from certlake.testlog.pool import CertPool

# url, name, share of the rows (per mille), first index
LOGS: Final = (
    (
        "https://ct.googleapis.com/logs/us1/argon2025h2",
        "Google 'Argon2025h2' log",
        300,
        812_000_000,
    ),
    (
        "https://ct.googleapis.com/logs/eu1/xenon2025h2",
        "Google 'Xenon2025h2' log",
        180,
        640_000_000,
    ),
    ("https://oak.ct.letsencrypt.org/2025h2", "Let's Encrypt 'Oak2025h2'", 200, 402_000_000),
    ("https://ct.cloudflare.com/logs/nimbus2025", "Cloudflare 'Nimbus2025' Log", 120, 210_000_000),
    ("https://sabre2025h2.ct.sectigo.com", "Sectigo 'Sabre2025h2'", 80, 95_000_000),
    ("https://wyvern.ct.digicert.com/2025h2", "DigiCert 'Wyvern2025h2' Log", 60, 60_000_000),
    ("https://ct.trustasia.com/log2025b", "TrustAsia Log2025b", 40, 12_000_000),
    ("https://tuscolo2025h2.skylight.geomys.org", "Geomys 'Tuscolo2025h2'", 20, 3_000_000),
)
POOL_SIZE: Final = 4096  # a power of two: a row's pool record is its position's low bits
CHUNK: Final = 256
DAYS: Final = 30
START: Final = dt.datetime(2025, 11, 1, tzinfo=dt.UTC)
REGISTERED: Final = 65_536  # synthetic registered domains (a power of two, as POOL_SIZE)
EXAMPLE_ROWS: Final = 1_000
EXACT_ROWS: Final = 5
SUFFIX_QUERY: Final = "*.example.com"
EXACT_NAME: Final = "exact-target.example.org"
COMPRESSION_LEVEL: Final = 3  # delta_sink.compression_level's default

_HEX: Final = b"0123456789ABCDEF"
_HI: Final = bytes(_HEX[i >> 4] for i in range(256))
_LO: Final = bytes(_HEX[i & 15] for i in range(256))
_ALNUM: Final = bytes((string.ascii_lowercase + string.digits).encode()[i % 36] for i in range(256))
_WORDS: Final = (
    "alpha", "bravo", "cloud", "delta", "forge", "grid", "harbor", "jade", "kite", "lumen",
    "metro", "nova", "orbit", "pixel", "quartz", "relay", "summit", "tango", "umbra", "vista",
)  # fmt: skip
_TLDS: Final = ("com", "net", "org", "io", "dev", "de", "co.uk", "fr", "nl", "com.br", "shop")


@dataclass
class Targets:
    """Where the search targets are: row position → what it is named."""

    example: dict[int, int]  # position → n of h{n}.example.com
    exact: list[int]
    found: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # query → its keys


def choose_targets(rows: int, seed: int) -> Targets:
    rng = random.Random(seed)
    positions = rng.sample(range(rows), EXAMPLE_ROWS + EXACT_ROWS)
    example = {p: n for n, p in enumerate(positions[:EXAMPLE_ROWS])}
    return Targets(example, sorted(positions[EXAMPLE_ROWS:]))


def make_pool(seed: int, size: int = POOL_SIZE) -> pa.Table:
    """`size` archive rows of real certificates the test log issues (`WRITE_SCHEMA`)."""
    source = LogSource("https://ct.certlake.test/pool", "certlake pool log", LogKind.RFC6962)
    records = []
    for index, cert in enumerate(CertPool(seed, size).take(size)):
        entry = LogEntry(
            index,
            1_762_000_000_000 + index,
            cert.entry_type,
            cert.cert_der,
            cert.chain,
            cert.tbs,
            cert.issuer_key_hash,
        )
        link = f"{source.url}/ct/v1/get-entries?start={index}&end={index}"
        records.append(build_record(entry, source, 1_762_000_000.0 + index, link))
    return pa.Table.from_batches([messages_to_batch(records, schema=WRITE_SCHEMA)])


# --- vectorized columns ---------------------------------------------------------------------


def _fixed(data: bytes, n: int, width: int) -> pa.Array:
    offsets = pa.array(range(0, n * width + 1, width), pa.int32())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets.buffers()[1], pa.py_buffer(data)])


def _hex(rng: random.Random, n: int, nbytes: int, *, colons: bool) -> pa.Array:
    """`n` random upper-case hex strings of `nbytes` bytes (`AB:CD:...` with `colons`, as
    certstream's hashes; plain, as its serial numbers)."""
    raw = rng.randbytes(n * nbytes)
    step = 3 if colons else 2
    out = bytearray(n * nbytes * step)
    out[0::step] = raw.translate(_HI)
    out[1::step] = raw.translate(_LO)
    if colons:
        out[2::step] = b":" * (n * nbytes)
        return pc.utf8_slice_codeunits(_fixed(bytes(out), n, 3 * nbytes), 0, 3 * nbytes - 1)
    return _fixed(bytes(out), n, 2 * nbytes)


def _uniform(rng: random.Random, n: int, k: int) -> pa.Array:
    """`n` random integers in [0, k) (int64)."""
    u32 = pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(rng.randbytes(4 * n))])
    scaled = pc.shift_right(pc.multiply(u32.cast(pa.uint64()), k), 32)
    return scaled.cast(pa.int64())


def _registered() -> pa.Array:
    rng = random.Random(5)
    names = dict.fromkeys(
        f"{rng.choice(_WORDS)}{rng.randrange(10**6)}.{rng.choice(_TLDS)}"
        for _ in range(REGISTERED * 2)
    )
    return pa.array(list(names)[:REGISTERED], pa.string())


def _weighted_logs(rng: random.Random, n: int) -> pa.Array:
    """Each of `n` chunks' log (0..7), by the logs' shares."""
    u = _uniform(rng, n, 1000)
    log = pa.repeat(pa.scalar(0, pa.int64()), n)
    bound = 0
    for _, _, share, _ in LOGS[:-1]:
        bound += share
        log = pc.add(log, pc.greater_equal(u, bound).cast(pa.int64()))
    return log


class Generator:
    """The archive's rows in order, `commit` rows at a time."""

    def __init__(self, rows: int, seed: int, targets: Targets, pool: pa.Table) -> None:
        self.rows = rows
        self.rng = random.Random(seed)
        self.targets = targets
        self.pool = pool
        self.registered = _registered()
        self.next_index = [base for _, _, _, base in LOGS]
        self.step_us = DAYS * 86_400_000_000 // rows
        self.start_us = int(START.timestamp() * 1_000_000)
        self.urls = pa.array([u for u, _, _, _ in LOGS], pa.string())
        self.names = pa.array([name for _, name, _, _ in LOGS], pa.string())
        self.position = 0

    def commit(self, n: int) -> tuple[pa.Table, dict[str, int]]:
        """The next `n` rows (`WRITE_SCHEMA`) and each log's cursor after them."""
        first = self.position
        self.position += n
        rng = self.rng
        local = pa.array(range(n), pa.int64())
        positions = pc.add(local, first)
        chunk_logs = _weighted_logs(rng, (n + CHUNK - 1) // CHUNK)
        log = pc.take(chunk_logs, pc.shift_right(local, 8))
        index = pa.repeat(pa.scalar(0, pa.int64()), n)
        for number in range(len(LOGS)):
            mine = pc.equal(log, number)
            rank = pc.cumulative_sum(mine.cast(pa.int64()))
            index = pc.if_else(mine, pc.add(rank, self.next_index[number] - 1), index)
            self.next_index[number] += int(pc.sum(mine.cast(pa.int64())).as_py() or 0)
        urls = pc.take(self.urls, log)
        index_text = index.cast(pa.string())
        seen_us = pc.add(pc.multiply(positions, self.step_us), self.start_us)
        seen = seen_us.cast(pa.timestamp("us", tz="UTC"))
        names, domains = self._domains(rng, n, first)
        pool = self.pool.take(pc.bit_wise_and(positions, POOL_SIZE - 1))
        sha1 = _hex(rng, n, 20, colons=True)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            "cert_index": index,
            "update_type": pool.column("update_type"),
            "seen": seen,
            "seen_date": pc.cast(pc.cast(seen, pa.date32()), pa.string()),
            "source_name": pc.take(self.names, log),
            "source_url": urls,
            "cert_link": pc.binary_join_element_wise(
                urls, "/ct/v1/get-entries?start=", index_text, "&end=", index_text, ""
            ),
            "serial_number": _hex(rng, n, 16, colons=False),
            "fingerprint": sha1,
            "sha256": _hex(rng, n, 32, colons=True),
            "sha1": sha1,
            "subject_aggregated": pc.binary_join_element_wise("/CN=", names, ""),
            "all_domains": domains,
        }
        for name in (
            "not_before",
            "not_after",
            "is_ca",
            "signature_algorithm",
            "issuer_aggregated",
            "as_der",
            "chain",
        ):
            columns[name] = pool.column(name)
        table = pa.table({name: columns[name] for name in WRITE_SCHEMA.names}, schema=WRITE_SCHEMA)
        self._note_targets(table, first, n)
        versions = {u: i for (u, _, _, _), i in zip(LOGS, self.next_index, strict=True)}
        return table, versions

    def _domains(self, rng: random.Random, n: int, first: int) -> tuple[pa.Array, pa.Array]:
        """Each row's first name and its `all_domains`."""
        label = _fixed(rng.randbytes(n * 8).translate(_ALNUM), n, 8)
        registered = pc.take(self.registered, _uniform(rng, n, REGISTERED))
        name1 = pc.binary_join_element_wise(label, registered, ".")
        name2 = registered
        name3 = pc.binary_join_element_wise("*", registered, ".")
        byte = _uniform(rng, n, 256)
        count = pc.add(
            pc.add(pc.greater_equal(byte, 141).cast(pa.int64()), 1),
            pc.greater_equal(byte, 218).cast(pa.int64()),
        )
        # The targets of this commit: their own names instead.
        mine = sorted(
            [(p - first, ("example", self.targets.example[p])) for p in self.targets.example]
            + [(p - first, ("exact", k)) for k, p in enumerate(self.targets.exact)]
        )
        mine = [(p, what) for p, what in mine if 0 <= p < n]
        if mine:
            mask = pc.is_in(pa.array(range(n), pa.int64()), pa.array([p for p, _ in mine]))
            first_names, second_names, counts = [], [], []
            for _, (kind, k) in mine:
                if kind == "example":
                    first_names.append(f"h{k}.example.com")
                    second_names.append(f"www.h{k}.example.com")
                    counts.append(2 if k % 5 == 0 else 1)
                else:
                    first_names.append(EXACT_NAME)
                    second_names.append(f"www.{EXACT_NAME}")
                    counts.append(2 if k % 2 else 1)
            name1 = pc.replace_with_mask(name1, mask, pa.array(first_names, pa.string()))
            name2 = pc.replace_with_mask(name2, mask, pa.array(second_names, pa.string()))
            count = pc.replace_with_mask(count, mask, pa.array(counts, pa.int64()))
        # Flat names: slot s of row r is value s * n + r of [name1, name2, name3], if s < count.
        slots = pa.array(range(3 * n), pa.int64())
        row = pc.divide(slots, 3)
        slot = pc.subtract(slots, pc.multiply(row, 3))
        keep = pc.less(slot, pc.take(count, row))
        values = pc.take(
            pa.concat_arrays([name1, name2, name3]),
            pc.filter(pc.add(pc.multiply(slot, n), row), keep),
        )
        offsets = pc.cumulative_sum(pa.concat_arrays([pa.array([0], pa.int64()), count]))
        domains = pa.ListArray.from_arrays(offsets.cast(pa.int32()), values, type=STRING_LIST)
        return name1, domains

    def _note_targets(self, table: pa.Table, first: int, n: int) -> None:
        """Record the keys the two searches must find."""
        keys = table.select(["cert_index", "source_url"])
        for query, positions in (
            (SUFFIX_QUERY, list(self.targets.example)),
            (EXACT_NAME, self.targets.exact),
        ):
            local = sorted(p - first for p in positions if first <= p < first + n)
            if local:
                picked = keys.take(pa.array(local, pa.int64())).to_pylist()
                self.targets.found.setdefault(query, []).extend(
                    (r["cert_index"], r["source_url"]) for r in picked
                )


def commit_rows_for(rows: int) -> int:
    """Rows per commit: 1 M (a quick run's archive still gets eight commits)."""
    return max(CHUNK, min(1_000_000, rows // 8 // CHUNK * CHUNK))


def build(
    uri: str, rows: int, seed: int, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Write the archive and its index at `uri`; returns what was built and how long it took."""
    started = time.perf_counter()
    pool = make_pool(seed)
    pool_seconds = time.perf_counter() - started
    log(f"pool of {pool.num_rows} real records in {pool_seconds:.1f} s")
    targets = choose_targets(rows, seed)
    generator = Generator(rows, seed, targets, pool)
    archive = ArchiveTable.open_or_create(uri, compression_level=COMPRESSION_LEVEL)
    per_commit = commit_rows_for(rows)
    commits = 0
    write_started = time.perf_counter()
    while generator.position < rows:
        n = min(per_commit, rows - generator.position)
        made = time.perf_counter()
        table, versions = generator.commit(n)
        generated = time.perf_counter() - made
        archive.append(table, versions=versions, commit_id=f"bench-{commits}")
        commits += 1
        written = time.perf_counter() - made - generated
        log(
            f"commit {commits}: {generator.position:,}/{rows:,} rows"
            f" (made in {generated:.1f} s, written in {written:.1f} s)"
        )
        del table
    write_seconds = time.perf_counter() - write_started
    index_started = time.perf_counter()
    caught = catch_up(uri, None, build=True)
    index_seconds = time.perf_counter() - index_started
    log(f"domain index built in {index_seconds:.1f} s: {caught}")
    clustered = cluster(uri, log)
    return {
        "rows": rows,
        "commits": commits,
        "commit_rows": per_commit,
        "pool_seconds": pool_seconds,
        "write_seconds": write_seconds,
        "index_seconds": index_seconds,
        "index_rows": None if caught is None else caught.index_rows,
        **clustered,
        "targets": {q: sorted(keys) for q, keys in targets.found.items()},
    }


def cluster(uri: str, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Cluster the domain index by key as `certlake maintain` does (`optimize.z_order` with the
    index's writer properties: zstd, `INDEX_ROW_GROUP`-row groups), then vacuum it with no
    retention (no reader of older versions to keep)."""
    started = time.perf_counter()
    index = DeltaTable(index_uri(uri))
    z_order = index.optimize.z_order(
        [KEY], writer_properties=index_writer(COMPRESSION_LEVEL), max_concurrent_tasks=1
    )
    vacuumed = index.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    seconds = time.perf_counter() - started
    log(
        f"index clustered by key (z_order with the index's writer properties + vacuum, as"
        f" `certlake maintain` does) in {seconds:.1f} s: {z_order.get('numFilesRemoved')} files"
        f" -> {z_order.get('numFilesAdded')}, {len(vacuumed)} vacuumed"
    )
    counts = ("numFilesAdded", "numFilesRemoved", "totalConsideredFiles")
    return {
        "cluster_seconds": seconds,
        "index_row_group": INDEX_ROW_GROUP,
        "z_order": {k: z_order.get(k) for k in counts},
    }


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
