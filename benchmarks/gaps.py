"""Gap detection (`certlake gaps` / backfill planning) with and without the runs cache, against a
two-column projected read of the same table.

    .venv/bin/python benchmarks/gaps.py [--dir DIR] [--rows N [N ...]] [--rows-per-file R]
                                        [--holes H] [--layout interleaved|clustered] [--lean]
                                        [--runs K] [--full-scan] [--build-only]

Builds once per set of parameters (cached under DIR, default /tmp/certlake-bench-gaps, one
directory per table) a Delta table of the archive schema that looks like a compacted live
archive: N rows in files of R rows, partitioned by day, zstd level 9 (the sink's default).
`interleaved` (the default) is the live sink's layout: every file is a slice of time holding rows
of six logs of different rates mixed in 256-row chunks; `clustered` is the same rows sorted by
log, each file holding one log's range. Rows are realistic in size (`as_der` 1.2-2.0 KB of
distinct base64 text, a two-certificate `chain` of ~1 KB JSON documents, distinct hashes,
serials, links, 1-3 domains); `--lean` makes those columns small (the key columns and the file
layout are the same) so that a 20 M-row table fits on disk and in the page cache. H holes (1-40
indices each; the same H whatever N) are cut out, and 40 rows of every tenth file are written
twice.

Then, each in its own process (time measured inside it, from opening the table; peak RSS = its
`VmHWM`), interleaved round by round, best of K kept:
- `keys`: the two-column projected read (`pyarrow` dataset of the table, `source_url` and
  `cert_index`, `to_table`): what every figure is compared with;
- `open`: opening the table and reading its files' statistics (`TableFiles.open`), which gap
  detection and every other reader pay first;
- catch-up gap detection over all six logs (`plan_gaps`, from = None): `off` without the cache
  (what it cost before it), `cold` with the cache removed first (the run that fills it), `warm`
  right after;
- historical gap detection of one log from 90 % of its range (`--from`, `--logs`), cold and warm;
- `record`: `known_runs.record` of every file into an empty cache (what `certlake maintain` pays
  after compacting everything);
- with `--full-scan`, a scan of every column of every row.
Every plan is checked against the holes the generator cut. With several N, the warm catch-up of
each is compared with the smallest's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
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
from certlake.lake.files import TableFiles
from certlake.lake.known_runs import RUNS_DIR, record
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
    der_bytes: tuple[int, int] = (1200, 2000),
) -> pa.Table:
    chunks: list[tuple[LogSpec, list[int]]] = []
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
            "as_der": variable_width(rng, [rng.randrange(*der_bytes) for _ in range(n)], B64),
            "chain": pa.array(
                [chains[i % len(chains)] for i in range(n)], ARCHIVE_SCHEMA.field("chain").type
            ),
        },
        schema=ARCHIVE_SCHEMA,
    )


def interleaved_files(
    specs: list[LogSpec], files: int, rng: random.Random
) -> Iterator[list[tuple[LogSpec, list[int]]]]:
    """The live sink's layout: each file a slice of time, holding its share of every log."""
    streams = {s.url: present_indices(s) for s in specs}
    totals = {s.url: s.count - sum(e - b + 1 for b, e in s.holes) for s in specs}
    for f in range(files):
        batches = []
        for spec in specs:
            share = totals[spec.url] // files + (totals[spec.url] % files if f == files - 1 else 0)
            idx = list(itertools.islice(streams[spec.url], share))
            if f % 10 == 9 and idx:  # rewritten rows, as a crashed writer or staging leaves them
                idx.extend(rng.sample(idx, min(40, len(idx))))
            batches.append((spec, idx))
        yield batches


def clustered_files(
    specs: list[LogSpec], rows_per_file: int, rng: random.Random
) -> Iterator[list[tuple[LogSpec, list[int]]]]:
    """The same rows clustered by log: each file a range of one log."""
    f = 0
    for spec in specs:
        stream = present_indices(spec)
        while idx := list(itertools.islice(stream, rows_per_file)):
            if f % 10 == 9:
                idx.extend(rng.sample(idx, min(40, len(idx))))
            f += 1
            yield [(spec, idx)]


def build(
    table_dir: Path,
    specs: list[LogSpec],
    files: int,
    rows_per_file: int,
    layout: str,
    lean: bool,
    rng: random.Random,
) -> None:
    if lean:
        chains = [[f"intermediate {k} " * 8, "bench root " * 8] for k in range(4)]
    else:
        chains = [
            [chain_doc(rng, f"Intermediate {k}"), chain_doc(rng, "Bench Root")] for k in range(4)
        ]
    der_bytes = (100, 200) if lean else (1200, 2000)
    plans = (
        interleaved_files(specs, files, rng)
        if layout == "interleaved"
        else clustered_files(specs, rows_per_file, rng)
    )
    seen_us = 1_760_000_000_000_000
    for f, batches in enumerate(plans):
        day = f"2025-11-{1 + f * 12 // files:02d}" if f < files else "2025-11-12"
        table = file_rows(rng, batches, chains, day, seen_us, der_bytes)
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


class _Opened(logging.Handler):
    """Collects what gap detection says it opened."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0
        self.read = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "gap detection read the table":
            self.opened += int(getattr(record, "files_opened", 0))
            self.read += int(getattr(record, "files_read", 0))


def child(args: argparse.Namespace) -> None:
    specs = [LogSpec(**s) for s in json.loads((args.dir / "specs.json").read_text())]
    table = str(args.dir / "table")
    mode = args.child
    handler = _Opened()
    presence_log = logging.getLogger("certlake.backfill.presence")
    presence_log.addHandler(handler)
    presence_log.setLevel(logging.INFO)
    result: dict[str, Any] = {"mode": mode}
    started = time.perf_counter()
    if mode == "scan":
        rows = bytes_ = 0
        scanner = DeltaTable(table).to_pyarrow_dataset().scanner(use_threads=True)
        for batch in scanner.to_batches():
            rows += batch.num_rows
            bytes_ += batch.nbytes
        result["seconds"] = time.perf_counter() - started
        result.update(rows=rows, arrow_bytes=bytes_)
    elif mode == "keys":
        keys = DeltaTable(table).to_pyarrow_dataset().to_table(columns=["source_url", "cert_index"])
        result["seconds"] = time.perf_counter() - started
        result.update(rows=keys.num_rows, arrow_bytes=keys.nbytes)
    elif mode == "open":
        files = TableFiles.open(table, None, "main")
        result["seconds"] = time.perf_counter() - started
        result["files_total"] = 0 if files is None else files.stats.num_rows
    elif mode == "record":
        done = record(table, None)
        result["seconds"] = time.perf_counter() - started
        result.update(files_opened=done.files, rows=done.rows, runs=done.runs)
    else:
        kind, cache = mode.rsplit("-", 1)
        ceilings = {s.url: s.ceiling for s in specs}
        if kind == "catch-up":
            plan = plan_gaps(table, None, ceilings, None, runs_cache=cache != "off")
            expected = {s.url: expected_catch_up(s) for s in specs}
        else:
            spec = specs[0]
            start = spec.base + spec.count * 9 // 10
            plan = plan_gaps(
                table, None, ceilings, start, log_filter=spec.url, runs_cache=cache != "off"
            )
            expected = {spec.url: expected_historical(spec, start)}
        result["seconds"] = time.perf_counter() - started
        got = {g.url: list(g.missing) for g in plan.logs}
        if got != expected:
            raise SystemExit(f"{mode}: plan differs from the holes cut by the generator")
        result.update(
            missing=plan.missing_count,
            ranges=sum(len(g.missing) for g in plan.logs),
            files_needed=handler.read,
            files_opened=handler.opened,
            files_total=plan.sources[0].files_total,
        )
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)
    # deltalake 1.6.6 was seen to abort at interpreter exit after a read through pyarrow
    # ("terminate called without an active exception"): the figures are out, leave now.
    os._exit(0)


def measure(table_dir: Path, mode: str) -> dict[str, Any]:
    if mode.endswith("-cold") or mode == "record":
        shutil.rmtree(table_dir / "table" / RUNS_DIR, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, __file__, "--dir", str(table_dir), "--child", mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Each round measures these in this order: a cold run leaves the cache its warm run reads.
ROUND = (
    "keys",
    "open",
    "catch-up-off",
    "catch-up-cold",
    "catch-up-warm",
    "historical-off",
    "historical-cold",
    "historical-warm",
    "record",
)


def prepare(args: argparse.Namespace, rows: int) -> Path:
    """The table for `rows` rows under args.dir, built if not there yet."""
    files = max(1, round(rows / args.rows_per_file))
    params = {
        "rows": rows,
        "files": files,
        "rows_per_file": args.rows_per_file,
        "holes": args.holes,
        "layout": args.layout,
        "lean": args.lean,
        "version": 3,
    }
    name = f"{args.layout}-{rows}-{files}-{args.holes}" + ("-lean" if args.lean else "")
    table_dir: Path = args.dir / name
    marker = table_dir / "params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(table_dir, ignore_errors=True)
        table_dir.mkdir(parents=True)
        rng = random.Random(7)
        specs = make_specs(rows, args.holes, rng)
        print(f"building {rows} rows in {files} files under {table_dir}", file=sys.stderr)
        started = time.perf_counter()
        build(table_dir / "table", specs, files, args.rows_per_file, args.layout, args.lean, rng)
        print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        (table_dir / "specs.json").write_text(json.dumps([s.__dict__ for s in specs]))
        marker.write_text(json.dumps(params))
    return table_dir


def run_table(args: argparse.Namespace, table_dir: Path) -> dict[str, Any]:
    specs = json.loads((table_dir / "specs.json").read_text())
    table = table_dir / "table"
    actions = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True))
    modes = [*ROUND, "scan"] if args.full_scan else list(ROUND)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    print(f"measuring {table_dir.name} (each run in a fresh process)", file=sys.stderr)
    for n in range(args.runs):
        for mode in modes:
            if mode == "scan" and n >= max(1, args.runs - 1):
                continue
            results[mode].append(measure(table_dir, mode))
        print(
            f"  round {n + 1}: "
            + ", ".join(f"{m} {results[m][-1]['seconds']:.3f} s" for m in modes if results[m]),
            file=sys.stderr,
        )
    best = {m: min(r, key=lambda x: float(x["seconds"])) for m, r in results.items() if r}
    keys = float(best["keys"]["seconds"])
    cache = table / RUNS_DIR
    cache_rows = DeltaTable(str(cache)).to_pyarrow_table().num_rows if cache.exists() else 0
    figures: dict[str, Any] = {
        "table": table_dir.name,
        "rows": sum(actions.column("num_records").to_pylist()),
        "files": actions.num_rows,
        "table_bytes": du(table) - (du(cache) if cache.exists() else 0),
        "two_column_bytes": column_bytes(table, {"source_url", "cert_index"}),
        "holes": sum(len(s["holes"]) for s in specs),
        "runs_cache_rows": cache_rows,
        "runs_cache_bytes": du(cache) if cache.exists() else 0,
        "all_seconds": {
            m: [round(float(r["seconds"]), 4) for r in rs] for m, rs in results.items()
        },
    }
    for mode, result in best.items():
        figures[mode] = result
        if mode != "keys":
            figures[f"{mode}_vs_keys"] = round(float(result["seconds"]) / keys, 4)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/certlake-bench-gaps"))
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000_000])
    parser.add_argument("--rows-per-file", type=int, default=41_667)  # 5 M rows: 120 files
    parser.add_argument("--holes", type=int, default=1_200)
    parser.add_argument("--layout", choices=["interleaved", "clustered"], default="interleaved")
    parser.add_argument("--lean", action="store_true", help="small as_der and chain columns")
    parser.add_argument("--runs", type=int, default=3, help="rounds of measurements; best kept")
    parser.add_argument("--full-scan", action="store_true", help="also scan every column")
    parser.add_argument("--build-only", action="store_true", help="build the tables and stop")
    parser.add_argument("--child", choices=[*ROUND, "scan"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    tables = [prepare(args, rows) for rows in args.rows]
    if args.build_only:
        return
    figures = [run_table(args, t) for t in tables]
    out: dict[str, Any] = {
        "tables": figures,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if len(figures) > 1:
        base = figures[0]
        out["scaling"] = {
            f["table"]: {
                "rows_vs_first": round(f["rows"] / base["rows"], 2),
                "keys_vs_first": round(f["keys"]["seconds"] / base["keys"]["seconds"], 2),
                "catch_up_warm_vs_first": round(
                    f["catch-up-warm"]["seconds"] / base["catch-up-warm"]["seconds"], 2
                ),
                "historical_warm_vs_first": round(
                    f["historical-warm"]["seconds"] / base["historical-warm"]["seconds"], 2
                ),
                # what is left once the table is open (its log replayed: that grows with
                # commits, here one per file, and every reader of the table pays it)
                "catch_up_warm_past_open_vs_first": round(
                    (f["catch-up-warm"]["seconds"] - f["open"]["seconds"])
                    / (base["catch-up-warm"]["seconds"] - base["open"]["seconds"]),
                    2,
                ),
            }
            for f in figures[1:]
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
