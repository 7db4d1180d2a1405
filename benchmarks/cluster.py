"""certlake beyond one machine, end to end on loopback (issue 17).

`--part backfill`: `certlake backfill --dask` against `certlake testlog --logs 2 --operators 2
--static-share 0 --max-entries 32 --rate-limit Q` (two RFC 6962 logs of two operators, 32-entry
answers, each operator limiting each client address to Q requests/s, 429 + Retry-After past it),
into a staging table, then `certlake merge`. A real `dask scheduler` and 1 or 2 `dask worker`
processes, each on its own loopback address (127.0.0.2, 127.0.0.3) and reading the logs from it
(`CERTSTREAM_CT_LOG_SOURCE_ADDRESS`), as workers on separate machines would. For each run: the
command's wall time, entries/s over it, and the table checked after the merge (every index of
both logs exactly once). Each worker count is run `--runs` times, alternating, and the medians
compared: the ceiling is Q × 32 entries/s per operator per address, so two workers should reach
about twice one worker's rate.

    .venv/bin/python benchmarks/cluster.py --part backfill [--runs 3] [--entries 16000] [--q 10]
                                          [--split 2000] [--nthreads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from deltalake import DeltaTable

from _procs import CERTLAKE, start_testlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.dask_cluster import DaskCluster

HOSTS = ["127.0.0.2", "127.0.0.3"]
CAP = 32


def _config(work: Path, base: str, split: int) -> Path:
    doc: dict[str, Any] = {
        "ct_logs_url": f"{base}/log_list.json",
        "log_level": "warning",
        "ct_log": {"state_file": None},
        "delta_sink": {"table_path": str(work / "main")},
        # Items small enough that every worker has items of both operators at once.
        "backfill": {"range_split_size": split},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _check(table: Path, logs: int, entries: int) -> str:
    t = DeltaTable(str(table)).to_pyarrow_table(columns=["source_url", "cert_index"])
    counts = Counter(zip(t["source_url"].to_pylist(), t["cert_index"].to_pylist(), strict=True))
    per_log = Counter(url for url, _ in counts)
    ok = max(counts.values()) == 1 and len(per_log) == logs
    ok = ok and all({i for u, i in counts if u == url} == set(range(entries)) for url in per_log)
    return "every index once" if ok else f"WRONG: {per_log}, max count {max(counts.values())}"


def _one_run(
    work: Path, base: str, workers: int, entries: int, split: int, nthreads: int
) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cluster = DaskCluster(work).start(HOSTS[:workers], nthreads=nthreads)
    try:
        config = _config(work, base, split)
        summary = work / "summary.json"
        started = time.monotonic()
        done = subprocess.run(
            [CERTLAKE, "backfill", "--config", str(config), "--to", str(entries),
             "--dask", cluster.address, "--staging-path", str(work / "staging"),
             "--summary-json", str(summary)],
            capture_output=True, text=True,
        )  # fmt: skip
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"backfill exited {done.returncode}:\n{done.stderr[-3000:]}")
        merged = subprocess.run(
            [CERTLAKE, "merge", "--config", str(config), "--staging-path", str(work / "staging")],
            capture_output=True, text=True,
        )  # fmt: skip
        if merged.returncode != 0:
            raise SystemExit(f"merge exited {merged.returncode}:\n{merged.stderr[-3000:]}")
        doc = json.loads(summary.read_text())
    finally:
        cluster.close()
    written = doc["records_written"]
    retries = sum(sum(e["retries"].values()) for e in doc["logs"])
    return {
        "workers": workers,
        "wall": wall,
        "rate": written / wall,
        "written": written,
        "retries": retries,
        "per_worker": {a: w["records_written"] for a, w in doc["workers"].items()},
        "check": _check(work / "main", 2, entries),
        "load": os.getloadavg()[0],
    }


def backfill_part(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="certlake-bench-cluster-"))
    testlog, base = start_testlog(
        root / "testlog-ready",
        ["--initial-size", str(args.entries), "--logs", "2", "--operators", "2",
         "--static-share", "0", "--max-entries", str(CAP), "--rate-limit", str(args.q),
         "--sequence-interval", "0"],
    )  # fmt: skip
    ceiling = 2 * args.q * CAP  # entries/s one address can read: Q requests/s × 2 operators
    print(f"certlake backfill --dask: 2 logs × {args.entries:,} entries, 2 operators, "
          f"Q = {args.q} requests/s per operator per address (one address: {ceiling:,.0f} "
          f"entries/s at most); {platform.node()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        for run in range(args.runs):
            for workers in (1, 2):
                r = _one_run(
                    root / f"run-{run}-{workers}", base, workers, args.entries, args.split,
                    args.nthreads,
                )  # fmt: skip
                results[workers].append(r)
                print(
                    f"  run {run + 1}, {workers} worker(s): {r['wall']:.1f} s wall, "
                    f"{r['rate']:,.0f} entries/s ({r['rate'] / (workers * ceiling):.0%} of "
                    f"{workers} × the one-address ceiling), {r['retries']} retried reads, "
                    f"per worker {r['per_worker']}, {r['check']}, load {r['load']:.2f}",
                    flush=True,
                )
    finally:
        testlog.terminate()
        testlog.wait()
        shutil.rmtree(root, ignore_errors=True)
    one = statistics.median(r["rate"] for r in results[1])
    two = statistics.median(r["rate"] for r in results[2])
    print(f"median entries/s: 1 worker {one:,.0f}, 2 workers {two:,.0f}: {two / one:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["backfill"], default="backfill")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--entries", type=int, default=16_000, help="per log")
    parser.add_argument("--q", type=float, default=10.0, help="requests/s per operator, address")
    parser.add_argument("--nthreads", type=int, default=1, help="threads per Dask worker")
    parser.add_argument("--split", type=int, default=2_000, help="backfill.range_split_size")
    args = parser.parse_args()
    backfill_part(args)


if __name__ == "__main__":
    main()
