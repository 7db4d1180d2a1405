"""Archive sink throughput on one core: messages → Arrow → zstd Parquet → Delta commit.

    .venv/bin/python benchmarks/sink.py [--rows N] [--distinct N] [--batch-size N] [--level L]

The process is pinned to one CPU (delta-rs's worker threads included), so the figures are what
one core sustains. Rows are real messages from `build_message` over certificates issued by
`certlake.testlog.certs.CertFactory` (the `benchmarks/parse.py` mix: half precertificates, 80 %
ECDSA / 20 % RSA intermediate, 1–50 SANs); `--distinct` different certificates are cycled with
distinct indices, so as_der and hashes repeat only every `--distinct` rows (a larger distance
than zstd's window at the default level).

Three measurements:
1. conversion only (`split_malformed`: CertMessage rows → Arrow);
2. conversion + commit (`ArchiveTable.append` with one transaction identifier per log, as the
   sink commits), in chunks of `--batch-size`;
3. the live sink end to end: `offer()` on the event loop, flushes in the writer thread, `close()`;
   also the cost of `offer()` to the producer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import deltalake
import psutil
import pyarrow as pa
from prometheus_client import CollectorRegistry

from certlake.certs.message import CertMessage, build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.lake.rows import split_malformed
from certlake.lake.sink import DeltaSink
from certlake.lake.table import ArchiveTable
from certlake.testlog.certs import CertFactory

LOGS = [
    LogSource(f"https://ct{i}.certlake.test/bench", f"certlake bench log {i}", LogKind.RFC6962)
    for i in range(4)
]


def distinct_messages(count: int, seed: int = 1) -> list[CertMessage]:
    factory = CertFactory(seed)
    out: list[CertMessage] = []
    for index in range(count):
        signer = "rsa" if index % 5 == 4 else "ec"
        if index % 2:
            pre = factory.issue_precert(signer=signer)
            entry = LogEntry(
                index, 1_750_000_000_000 + index, EntryType.PRECERT, pre.precert_der, pre.chain,
                tbs=pre.tbs, issuer_key_hash=pre.issuer_key_hash,
            )  # fmt: skip
        else:
            cert = factory.issue(signer=signer)
            entry = LogEntry(index, 1_750_000_000_000 + index, EntryType.X509, cert.der, cert.chain)
        out.append(build_message(entry, LOGS[0], time.time(), f"{LOGS[0].url}/ct/v1/get-entries"))
    return out


def rows(pool: list[CertMessage], count: int) -> list[CertMessage]:
    """`count` rows over 4 logs, each log's indices consecutive (as watchers produce them)."""
    now = time.time()
    out = []
    for i in range(count):
        log = LOGS[i % len(LOGS)]
        out.append(
            pool[i % len(pool)]._replace(
                cert_index=i // len(LOGS),
                source_url=log.url,
                source_name=log.name,
                seen=now + i * 1e-4,
            )
        )
    return out


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Rate:
    """Rows per second of wall time and of process CPU time (all threads; the process is pinned
    to one CPU, so CPU time is the core's time spent on it, whatever else the machine runs)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __enter__(self) -> Rate:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = self.rows / (time.perf_counter() - self._wall)
        self.cpu = self.rows / (time.process_time() - self._cpu)

    def __str__(self) -> str:
        return f"{self.cpu:>9,.0f} rows/s of CPU, {self.wall:>9,.0f} rows/s of wall time"


def best(runs: list[Rate]) -> Rate:
    return max(runs, key=lambda r: r.cpu)


def bench_convert(data: list[CertMessage], batch: int) -> Rate:
    with Rate(len(data)) as rate:
        for lo in range(0, len(data), batch):
            split_malformed(data[lo : lo + batch])
    return rate


def bench_write(data: list[CertMessage], batch: int, level: int, where: Path) -> tuple[Rate, int]:
    table = ArchiveTable.open_or_create(str(where), compression_level=level)
    with Rate(len(data)) as rate:
        for n, lo in enumerate(range(0, len(data), batch)):
            part = data[lo : lo + batch]
            converted, _ = split_malformed(part)
            versions = {m.source_url: m.cert_index + 1 for m in part}
            table.append(converted, versions=versions, commit_id=f"bench-{n}")
    size = sum(f.stat().st_size for f in where.rglob("*.parquet"))
    return rate, size


async def bench_sink(
    data: list[CertMessage], batch: int, level: int, where: Path
) -> tuple[Rate, float]:
    sink = DeltaSink(
        str(where),
        registry=CollectorRegistry(),
        batch_size=batch,
        flush_interval=3600,
        compression_level=level,
        compaction_interval=0,
    )
    await sink.start([log.url for log in LOGS])
    offer_time = 0.0
    with Rate(len(data)) as rate:
        for lo in range(0, len(data), 1000):
            t = time.perf_counter()
            for msg in data[lo : lo + 1000]:
                sink.offer(msg)
            offer_time += time.perf_counter() - t
            await asyncio.sleep(0)  # the live loop yields between fetch batches
        await sink.close()
    if sink.stats.rows_written != len(data):
        raise SystemExit(f"sink wrote {sink.stats.rows_written} of {len(data)} rows")
    return rate, offer_time / len(data) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--level", type=int, default=9, help="zstd level (config default 9)")
    parser.add_argument("--passes", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    t = time.perf_counter()
    pool = distinct_messages(args.distinct)
    data = rows(pool, args.rows)
    row_bytes = sum(len(m.as_der) + sum(map(len, m.chain)) for m in pool) / len(pool)
    print(
        f"built {len(pool)} distinct messages, {len(data)} rows in {time.perf_counter() - t:.1f} s"
        f" (as_der + chain: {row_bytes / 1000:.1f} KB per row)"
    )
    print(
        f"python {platform.python_version()}, pyarrow {pa.__version__}, "
        f"deltalake {deltalake.__version__}, 1 CPU, zstd level {args.level}, "
        f"batch {args.batch_size}"
    )
    base_rss = rss_mb()
    passes = range(args.passes)
    print(f"conversion only:      {best([bench_convert(data, args.batch_size) for _ in passes])}")
    tmp = Path(tempfile.mkdtemp(prefix="certlake-bench-sink-"))
    try:
        writes = [bench_write(data, args.batch_size, args.level, tmp / f"w{n}") for n in passes]
        print(f"conversion + commit:  {best([w[0] for w in writes])}")
        print(f"  on disk: {writes[0][1] / len(data):,.0f} bytes/row")
        sinks = [
            asyncio.run(bench_sink(data, args.batch_size, args.level, tmp / f"s{n}"))
            for n in passes
        ]
        print(f"live sink end to end: {best([s[0] for s in sinks])}")
        print(f"  offer(): {min(s[1] for s in sinks):.2f} µs per message on the event loop")
    finally:
        shutil.rmtree(tmp)
    print(
        f"RSS: {base_rss:,.0f} MB with the rows in memory, {rss_mb():,.0f} MB after, "
        f"peak {peak_rss_mb():,.0f} MB"
    )


if __name__ == "__main__":
    main()
