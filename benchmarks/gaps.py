"""Gap detection (`certlake gaps` / backfill planning) against a full scan of the same table.

    .venv/bin/python benchmarks/gaps.py [--dir DIR] [--rows N] [--files F] [--holes H]

Builds once (cached in DIR, default /tmp/certlake-bench-gaps; rebuilt when the parameters
change) a Delta table of the archive schema that looks like a compacted live archive: F files,
each holding rows of six logs of different rates interleaved in 256-row chunks, partitioned by
day, zstd level 9 (the sink's default). Every row is realistic in size: `as_der` 1.2-2.0 KB of
distinct base64 text, a two-certificate `chain` of ~1 KB JSON documents (four distinct chains,
repeated as the few big CAs repeat), distinct hashes, serials, links and 1-3 domains. H holes
(1-40 indices each) are cut out, and a few hundred rows are written twice.

Then, each in its own process (peak RSS = that process's `ru_maxrss`):
- catch-up gap detection over all six logs (`plan_gaps`, from = None);
- historical gap detection of one log from 90 % of its range (`--from`, `--logs`);
- a full scan reading every column of every row (what a SQL `GROUP BY` over whole rows costs).
The plans are checked against the holes the generator cut.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

from certlake.backfill.presence import plan_gaps
from certlake.lake.schema import ARCHIVE_SCHEMA, PARTITION_BY
from certlake.lake.table import writer_properties
from certlake.ranges import Range, union_ranges

# url, name, share of the rows, first index
LOGS = (
    (
        "https://ct.googleapis.com/logs/us1/argon2025h2",
        "Google 'Argon2025h2' log",
        0.34,
        812_000_000,
    ),
    ("https://oak.ct.letsencrypt.org/2025h2", "Let's Encrypt 'Oak2025h2'", 0.26, 402_000_000),
    ("https://ct.cloudflare.com/logs/nimbus2025", "Cloudflare 'Nimbus2025' Log", 0.16, 210_000_000),
    ("https://sabre2025h2.ct.sectigo.com", "Sectigo 'Sabre2025h2'", 0.12, 95_000_000),
    ("https://wyvern.ct.digicert.com/2025h2", "DigiCert 'Wyvern2025h2' Log", 0.08, 60_000_000),
    ("https://tuscolo2025h2.skylight.geomys.org", "Geomys 'Tuscolo2025h2'", 0.04, 3_000_000),
)
CHUNK = 256  # rows of one log in a row: a get-entries batch
HEX = bytes(b"0123456789abcdef"[i % 16] for i in range(256))
B64 = bytes(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i % 64] for i in range(256)
)


@dataclass
class LogSpec:
    url: str
    name: str
    base: int
    count: int  # indices base .. base+count-1, minus holes
    holes: list[Range]
    ceiling: int


# --- building the table ---------------------------------------------------------------------------


def make_specs(rows: int, holes: int, rng: random.Random) -> list[LogSpec]:
    specs = []
    for n, (url, name, share, base) in enumerate(LOGS):
        count = int(rows * share)
        cut: list[Range] = []
        for _ in range(int(holes * share) + 1):
            start = rng.randrange(base + 1, base + count - 50)  # never the first or last index
            cut.append((start, start + rng.randrange(40)))
        merged = union_ranges(cut)
        top = base + count - 1
        # ceilings as a state file would give them: at the head, behind it (rows past the
        # ceiling), and ahead of the table (its last entries never archived)
        ceiling = (top + 1, top - count // 8, top + count // 50)[n % 3]
        specs.append(LogSpec(url, name, base, count, merged, ceiling))
    return specs


def present_indices(spec: LogSpec) -> Iterator[int]:
    cursor = spec.base
    for s, e in spec.holes:
        yield from range(cursor, s)
        cursor = e + 1
    yield from range(cursor, spec.base + spec.count)


def fixed_width(rng: random.Random, n: int, width: int, alphabet: bytes) -> pa.Array:
    data = rng.randbytes(n * width).translate(alphabet)
    offsets = pa.array(range(0, n * width + 1, width), pa.int32())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets.buffers()[1], pa.py_buffer(data)])


def variable_width(rng: random.Random, lengths: list[int], alphabet: bytes) -> pa.Array:
    data = rng.randbytes(sum(lengths)).translate(alphabet)
    offsets = pa.array([0, *itertools.accumulate(lengths)], pa.int32())
    return pa.Array.from_buffers(
        pa.string(), len(lengths), [None, offsets.buffers()[1], pa.py_buffer(data)]
    )


def chain_doc(rng: random.Random, cn: str) -> str:
    pem_ish = rng.randbytes(560).translate(B64).decode()
    return json.dumps(
        {
            "subject": {
                "CN": cn,
                "O": "Bench CA",
                "C": "US",
                "aggregated": f"/C=US/O=Bench/CN={cn}",
            },
            "issuer": {"CN": "Bench Root", "O": "Bench CA", "aggregated": "/O=Bench CA/CN=Root"},
            "extensions": {"basicConstraints": "CA:TRUE", "keyUsage": "Certificate Signing"},
            "not_before": 1700000000,
            "not_after": 1900000000,
            "serial_number": rng.randbytes(16).hex(),
            "fingerprint": rng.randbytes(20).hex(),
            "sha256": rng.randbytes(32).hex(),
            "signature_algorithm": "sha256, rsa",
            "is_ca": True,
            "as_der": pem_ish,
        }
    )


def file_rows(
    rng: random.Random,
    batches: list[tuple[LogSpec, list[int]]],
    chains: list[list[str]],
    day: str,
    seen_us: int,
) -> pa.Table:
    chunks = []
    for spec, idx in batches:
        chunks.extend((spec, idx[i : i + CHUNK]) for i in range(0, len(idx), CHUNK))
    rng.shuffle(chunks)  # logs interleave as their watchers deliver batches
    urls, names, indices = [], [], []
    for spec, part in chunks:
        urls.extend([spec.url] * len(part))
        names.extend([spec.name] * len(part))
        indices.extend(part)
    n = len(indices)
    domains = [f"{rng.randbytes(6).hex()}.example{i % 97}.com" for i in range(n)]
    return pa.table(
        {
            "cert_index": pa.array(indices, pa.int64()),
            "update_type": pa.array(
                ["X509LogEntry", "PrecertLogEntry"] * (n // 2) + ["X509LogEntry"] * (n % 2)
            ),
            "seen": pa.array(range(seen_us, seen_us + n), pa.int64()).cast(
                ARCHIVE_SCHEMA.field("seen").type
            ),
            "seen_date": pa.array([day] * n),
            "source_name": pa.array(names),
            "source_url": pa.array(urls),
            "cert_link": pa.array(
                [
                    f"{u}/ct/v1/get-entries?start={i}&end={i}"
                    for u, i in zip(urls, indices, strict=True)
                ]
            ),
            "serial_number": fixed_width(rng, n, 32, HEX),
            "fingerprint": fixed_width(rng, n, 59, HEX),
            "sha256": fixed_width(rng, n, 64, HEX),
            "sha1": fixed_width(rng, n, 40, HEX),
            "not_before": pa.array([1_750_000_000 + i % 86_400 for i in range(n)], pa.int64()),
            "not_after": pa.array([1_757_776_000 + i % 86_400 for i in range(n)], pa.int64()),
            "is_ca": pa.array([False] * n),
            "signature_algorithm": pa.array(
                ["ecdsa-with-SHA256", "sha256, rsa"][i % 2] for i in range(n)
            ),
            "subject_aggregated": pa.array([f"/CN={d}" for d in domains]),
            "issuer_aggregated": pa.array(
                ["/C=US/O=Let's Encrypt/CN=E6", "/C=US/O=Google Trust Services/CN=WR1"][i % 2]
                for i in range(n)
            ),
            "all_domains": pa.array(
                [[d, f"www.{d}", f"api.{d}"][: 1 + i % 3] for i, d in enumerate(domains)]
            ),
            "as_der": variable_width(rng, [1200 + rng.randrange(800) for _ in range(n)], B64),
            "chain": pa.array(
                [chains[i % len(chains)] for i in range(n)], ARCHIVE_SCHEMA.field("chain").type
            ),
        },
        schema=ARCHIVE_SCHEMA,
    )


def build(table_dir: Path, specs: list[LogSpec], files: int, rng: random.Random) -> None:
    chains = [[chain_doc(rng, f"Intermediate {k}"), chain_doc(rng, "Bench Root")] for k in range(4)]
    streams = {s.url: present_indices(s) for s in specs}
    totals = {s.url: s.count - sum(e - b + 1 for b, e in s.holes) for s in specs}
    seen_us = 1_760_000_000_000_000
    for f in range(files):
        batches = []
        for spec in specs:
            share = totals[spec.url] // files + (totals[spec.url] % files if f == files - 1 else 0)
            idx = list(itertools.islice(streams[spec.url], share))
            if f % 10 == 9 and idx:  # rewritten rows, as a crashed writer or staging leaves them
                idx.extend(rng.sample(idx, min(40, len(idx))))
            batches.append((spec, idx))
        day = f"2025-11-{1 + f * 12 // files:02d}"
        table = file_rows(rng, batches, chains, day, seen_us)
        seen_us += table.num_rows
        write_deltalake(
            str(table_dir),
            table,
            mode="append",
            partition_by=list(PARTITION_BY),
            writer_properties=writer_properties(9),
        )
        print(f"  file {f + 1}/{files}: {table.num_rows} rows", file=sys.stderr, flush=True)


# --- expectations (independent of certlake.backfill) ----------------------------------------------


def expected_catch_up(spec: LogSpec) -> list[Range]:
    lo, hi = spec.base, min(spec.base + spec.count - 1, spec.ceiling - 1)
    return [(max(s, lo), min(e, hi)) for s, e in spec.holes if s <= hi and e >= lo]


def expected_historical(spec: LogSpec, start: int) -> list[Range]:
    hi, top = spec.ceiling - 1, spec.base + spec.count - 1
    out = [(max(s, start), min(e, hi)) for s, e in spec.holes if s <= hi and e >= start]
    if top < hi:
        out.append((max(top + 1, start), hi))
    return union_ranges(out)


# --- measurements (each in a child process) -------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS. Not `getrusage`'s ru_maxrss: Linux carries that across fork and
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def column_bytes(table: Path, columns: set[str]) -> int:
    """Compressed bytes of `columns` over all data files (what a projected read fetches)."""
    total = 0
    for path in table.rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                if group.column(c).path_in_schema in columns:
                    total += group.column(c).total_compressed_size
    return total


def child(args: argparse.Namespace) -> None:
    specs = [LogSpec(**s) for s in json.loads((args.dir / "specs.json").read_text())]
    table = str(args.dir / "table")
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if args.child == "scan":
        rows = bytes_ = 0
        scanner = DeltaTable(table).to_pyarrow_dataset().scanner(use_threads=True)
        for batch in scanner.to_batches():
            rows += batch.num_rows
            bytes_ += batch.nbytes
        result.update(rows=rows, arrow_bytes=bytes_)
    else:
        ceilings = {s.url: s.ceiling for s in specs}
        if args.child == "catch-up":
            plan = plan_gaps(table, None, ceilings, None)
            expected = {s.url: expected_catch_up(s) for s in specs}
        else:
            spec = specs[0]
            start = spec.base + spec.count * 9 // 10
            plan = plan_gaps(table, None, ceilings, start, log_filter=spec.url)
            expected = {spec.url: expected_historical(spec, start)}
        got = {g.url: list(g.missing) for g in plan.logs}
        if got != expected:
            raise SystemExit(f"{args.child}: plan differs from the holes cut by the generator")
        source = plan.sources[0]
        result.update(
            missing=plan.missing_count,
            ranges=sum(len(g.missing) for g in plan.logs),
            files_read=source.files_read,
            files_total=source.files_total,
        )
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--dir", str(args.dir), "--child", mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def best(args: argparse.Namespace, mode: str, runs: int) -> dict[str, Any]:
    results = [measure(args, mode) for _ in range(runs)]
    print(f"  {mode}: " + ", ".join(f"{r['seconds']:.2f} s" for r in results), file=sys.stderr)
    return min(results, key=lambda r: float(r["seconds"]))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/certlake-bench-gaps"))
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--holes", type=int, default=1_200)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement; best kept")
    parser.add_argument(
        "--child", choices=["catch-up", "historical", "scan"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    params = {"rows": args.rows, "files": args.files, "holes": args.holes, "version": 2}
    marker = args.dir / "params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        rng = random.Random(7)
        specs = make_specs(args.rows, args.holes, rng)
        print(f"building {args.rows} rows in {args.files} files under {args.dir}", file=sys.stderr)
        started = time.perf_counter()
        build(args.dir / "table", specs, args.files, rng)
        print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        (args.dir / "specs.json").write_text(json.dumps([s.__dict__ for s in specs]))
        marker.write_text(json.dumps(params))
    specs = json.loads((args.dir / "specs.json").read_text())
    table = args.dir / "table"
    dt = DeltaTable(str(table))
    actions = pa.table(dt.get_add_actions(flatten=True))
    rows = sum(actions.column("num_records").to_pylist())
    print("measuring (each run in a fresh process)", file=sys.stderr)
    scan = best(args, "scan", max(1, args.runs - 1))
    catch_up = best(args, "catch-up", args.runs)
    historical = best(args, "historical", args.runs)
    figures = {
        "rows": rows,
        "files": actions.num_rows,
        "table_bytes": du(table),
        "two_column_bytes": column_bytes(table, {"source_url", "cert_index"}),
        "holes": sum(len(s["holes"]) for s in specs),
        "scan": scan,
        "catch_up": catch_up,
        "historical": historical,
        "catch_up_vs_scan": catch_up["seconds"] / scan["seconds"],
        "historical_vs_scan": historical["seconds"] / scan["seconds"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
