"""`certlake merge` of a large staging table into a larger main table, against a plain append.

    .venv/bin/python benchmarks/merge.py [--dir DIR] [--main-rows N] [--staging-rows N]
                                         [--overlap F] [--batch-rows N] [--runs R]

Builds once (cached in DIR, default /tmp/certlake-bench-merge; rebuilt when the parameters
change), with rows of realistic size made as `benchmarks/gaps.py` makes them:

- main: `--main-rows` rows in 100 files, like a compacted live archive (every file holds a time
  slice of six logs of different rates, mixed in 256-row chunks), with four outages per log cut
  out: the holes hold `(1 - overlap) * staging-rows` indices in all;
- staging: what a backfill of those outages writes: each outage's range widened on both sides so
  that `overlap * staging-rows` rows are already in main, fetched by four concurrent fetchers
  (256-row chunks of four ranges interleaved) and committed in files of 10,000 rows.

Then, each in a fresh process on a fresh copy of the tables (hard links; the copies' `_delta_log`
is copied), best of `--runs`:
- append: staging streamed and appended to main in commits of `--batch-rows` rows, no
  de-duplication (what merging costs at least: reading staging and writing its rows);
- merge: `certlake.merge.run.merge_command` with the same commit size; afterwards main must
  hold every key exactly once and staging must be gone.
Peak RSS is the child's `VmHWM`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from certlake.lake.schema import PARTITION_BY
from certlake.lake.table import ArchiveTable, writer_properties

sys.path.insert(0, str(Path(__file__).parent))
from gaps import LOGS, LogSpec, chain_doc, du, file_rows, peak_rss_mb

Range = tuple[int, int]  # inclusive
MAIN_FILES = 100
OUTAGES = 4
FETCHERS = 4
STAGING_FILE_ROWS = 10_000
CHUNK = 256
LEVEL = 3  # delta_sink.compression_level's default


# --- building -------------------------------------------------------------------------------------


def plan(main_rows: int, staging_rows: int, overlap: float) -> dict[str, Any]:
    """Per log: its index range, the outages cut out of main, the ranges backfill fetched."""
    new_rows = int(staging_rows * (1 - overlap))
    old_rows = staging_rows - new_rows
    logs = []
    for n, (url, name, share, base) in enumerate(LOGS):
        if n == len(LOGS) - 1:  # the last log takes what rounding left
            main_share = main_rows - sum(x["count"] - x["hole_rows"] for x in logs)
            holes_total = new_rows - sum(x["hole_rows"] for x in logs)
            pad_total = old_rows - sum(x["pad_rows"] for x in logs)
        else:
            main_share = int(main_rows * share)
            holes_total, pad_total = int(new_rows * share), int(old_rows * share)
        count = main_share + holes_total
        holes: list[Range] = []
        fetched: list[Range] = []
        for k in range(OUTAGES):
            size = holes_total // OUTAGES + (holes_total % OUTAGES if k == 0 else 0)
            pad = pad_total // (2 * OUTAGES)
            extra = pad_total - 2 * OUTAGES * pad if k == 0 else 0
            start = base + count * (2 * k + 1) // (2 * OUTAGES)
            holes.append((start, start + size - 1))
            fetched.append((start - pad - extra, start + size - 1 + pad))
        logs.append(
            {
                "url": url,
                "name": name,
                "base": base,
                "count": count,
                "holes": holes,
                "fetched": fetched,
                "hole_rows": holes_total,
                "pad_rows": pad_total,
            }
        )
    return {"logs": logs, "new_rows": new_rows, "old_rows": old_rows}


def present(log: dict[str, Any]) -> Iterator[int]:
    cursor = log["base"]
    for s, e in log["holes"]:
        yield from range(cursor, s)
        cursor = e + 1
    yield from range(cursor, log["base"] + log["count"])


def spec(log: dict[str, Any]) -> LogSpec:
    return LogSpec(log["url"], log["name"], log["base"], log["count"], log["holes"], 0)


def build_main(path: Path, layout: dict[str, Any], rng: random.Random, chains: Any) -> None:
    indices = {x["url"]: list(present(x)) for x in layout["logs"]}
    seen_us = 1_760_000_000_000_000
    for f in range(MAIN_FILES):
        batches = []
        for log in layout["logs"]:
            idx = indices[log["url"]]
            lo, hi = len(idx) * f // MAIN_FILES, len(idx) * (f + 1) // MAIN_FILES
            batches.append((spec(log), idx[lo:hi]))
        table = file_rows(rng, batches, chains, f"2025-11-{1 + f * 12 // MAIN_FILES:02d}", seen_us)
        seen_us += table.num_rows
        write_deltalake(
            str(path),
            table,
            mode="append",
            partition_by=list(PARTITION_BY),
            writer_properties=writer_properties(LEVEL),
        )
        print(f"  main file {f + 1}/{MAIN_FILES}", file=sys.stderr, flush=True)


def fetch_order(layout: dict[str, Any]) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """256-row chunks as FETCHERS concurrent fetchers deliver them, outage ranges in turn."""
    queue = [
        (log, r) for k in range(OUTAGES) for log in layout["logs"] for r in [log["fetched"][k]]
    ]
    active: list[tuple[dict[str, Any], Iterator[int]]] = []
    while queue or active:
        while queue and len(active) < FETCHERS:
            log, (s, e) = queue.pop(0)
            active.append((log, iter(range(s, e + 1))))
        for item in list(active):
            chunk = [i for _, i in zip(range(CHUNK), item[1], strict=False)]
            if chunk:
                yield item[0], chunk
            if len(chunk) < CHUNK:
                active.remove(item)


def build_staging(path: Path, layout: dict[str, Any], rng: random.Random, chains: Any) -> None:
    pending: list[tuple[dict[str, Any], list[int]]] = []
    rows, files = 0, 0
    seen_us = 1_770_000_000_000_000

    def flush() -> None:
        nonlocal pending, rows, files, seen_us
        batches = [(spec(log), idx) for log, idx in pending]
        table = file_rows(rng, batches, chains, "2025-11-24", seen_us)
        seen_us += table.num_rows
        write_deltalake(
            str(path),
            table,
            mode="append",
            partition_by=list(PARTITION_BY),
            writer_properties=writer_properties(LEVEL),
        )
        files += 1
        pending, rows = [], 0

    for log, chunk in fetch_order(layout):
        pending.append((log, chunk))
        rows += len(chunk)
        if rows >= STAGING_FILE_ROWS:
            flush()
    if pending:
        flush()
    print(f"  staging: {files} files", file=sys.stderr, flush=True)


# --- measuring (children) -------------------------------------------------------------------------


def copy_table(src: Path, dst: Path) -> None:
    """A copy sharing the data files (never modified in place) with its own log."""
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    shutil.rmtree(dst / "_delta_log")
    shutil.copytree(src / "_delta_log", dst / "_delta_log")


def child_append(main: str, staging: str, batch_rows: int) -> dict[str, Any]:
    """Staging's rows appended to main as they are read, a commit every `batch_rows` rows."""
    writer = ArchiveTable.open_or_create(main, compression_level=LEVEL)
    pending: list[pa.RecordBatch] = []
    rows = commits = 0
    dataset = DeltaTable(staging).to_pyarrow_dataset()
    for fragment in dataset.get_fragments():
        for batch in fragment.to_batches(schema=dataset.schema, batch_size=2048, batch_readahead=1):
            pending.append(batch)
            rows += batch.num_rows
            if rows >= batch_rows:
                table = pa.Table.from_batches(pending)
                writer.append(table, versions={}, commit_id=f"append {commits}")
                pending, rows, commits = [], 0, commits + 1
    if pending:
        writer.append(pa.Table.from_batches(pending), versions={}, commit_id="append last")
    return {"batches": commits + bool(pending)}


def child_merge(main: str, staging: str, batch_rows: int, expected: int) -> dict[str, Any]:
    from certlake.merge.run import merge_command

    summary = Path(staging + ".summary.json")
    code = merge_command(
        main, staging, batch_rows=batch_rows, compression_level=LEVEL, summary_json=summary
    )
    figures: dict[str, Any] = json.loads(summary.read_text())
    if code != 0:
        raise SystemExit(f"merge exited {code}")
    figures["peak_rss_mb_before_check"] = peak_rss_mb()
    keys = DeltaTable(main).to_pyarrow_table(columns=["source_url", "cert_index"])
    distinct = keys.group_by(["source_url", "cert_index"]).aggregate([]).num_rows
    if keys.num_rows != expected or distinct != expected or os.path.exists(staging):
        raise SystemExit(f"merge result wrong: {keys.num_rows} rows, {distinct} distinct")
    return figures


def child(args: argparse.Namespace) -> None:
    work = args.dir / "work"
    started = time.perf_counter()
    if args.child == "append":
        result = child_append(str(work / "main"), str(work / "staging"), args.batch_rows)
        result["seconds"] = time.perf_counter() - started
        result["peak_rss_mb"] = peak_rss_mb()
    else:
        expected = int(json.loads((args.dir / "expected.json").read_text()))
        result = child_merge(str(work / "main"), str(work / "staging"), args.batch_rows, expected)
        result["seconds"] = result.pop("seconds")
        result["peak_rss_mb"] = result.pop("peak_rss_mb_before_check")
    print(json.dumps(result))


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    work = args.dir / "work"
    work.mkdir(exist_ok=True)
    copy_table(args.dir / "main", work / "main")
    copy_table(args.dir / "staging", work / "staging")
    (work / "staging.summary.json").unlink(missing_ok=True)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--dir",
            str(args.dir),
            "--batch-rows",
            str(args.batch_rows),
            "--child",
            mode,
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    shutil.rmtree(work)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(f"  {mode}: {result['seconds']:.1f} s, {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/certlake-bench-merge"))
    parser.add_argument("--main-rows", type=int, default=10_000_000)
    parser.add_argument("--staging-rows", type=int, default=1_000_000)
    parser.add_argument("--overlap", type=float, default=0.3, help="share of staging in main")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="rows per commit")
    parser.add_argument("--runs", type=int, default=2, help="runs of each measurement; best kept")
    parser.add_argument("--child", choices=["append", "merge"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    params = {
        "main_rows": args.main_rows,
        "staging_rows": args.staging_rows,
        "overlap": args.overlap,
        "version": 1,
    }
    marker = args.dir / "params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        rng = random.Random(11)
        chains = [
            [chain_doc(rng, f"Intermediate {k}"), chain_doc(rng, "Bench Root")] for k in range(4)
        ]
        layout = plan(args.main_rows, args.staging_rows, args.overlap)
        print(f"building under {args.dir}", file=sys.stderr)
        started = time.perf_counter()
        build_main(args.dir / "main", layout, rng, chains)
        build_staging(args.dir / "staging", layout, rng, chains)
        print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        (args.dir / "expected.json").write_text(str(args.main_rows + layout["new_rows"]))
        (args.dir / "layout.json").write_text(json.dumps(layout))
        marker.write_text(json.dumps(params))
    main_dt, staging_dt = DeltaTable(str(args.dir / "main")), DeltaTable(str(args.dir / "staging"))
    main_rows = main_dt.to_pyarrow_dataset().count_rows()
    staging_keys = staging_dt.to_pyarrow_table(columns=["source_url", "cert_index"])
    print("measuring (each run in a fresh process, on fresh copies)", file=sys.stderr)
    append = min((measure(args, "append") for _ in range(args.runs)), key=lambda r: r["seconds"])
    merge = min((measure(args, "merge") for _ in range(args.runs)), key=lambda r: r["seconds"])
    figures = {
        "main_rows": main_rows,
        "main_files": len(main_dt.get_add_actions(flatten=True)),
        "main_bytes": du(args.dir / "main"),
        "staging_rows": staging_keys.num_rows,
        "staging_files": len(staging_dt.get_add_actions(flatten=True)),
        "staging_bytes": du(args.dir / "staging"),
        "staging_distinct": staging_keys.group_by(["source_url", "cert_index"])
        .aggregate([])
        .num_rows,
        "staging_max_index": pc.max(staging_keys.column("cert_index")).as_py(),
        "batch_rows": args.batch_rows,
        "append": append,
        "merge": merge,
        "merge_vs_append": merge["seconds"] / append["seconds"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
