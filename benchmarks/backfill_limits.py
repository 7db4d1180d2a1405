"""Backfill against logs shaped like the real ones: 32-entry answers and per-operator limits.

Real processes on loopback: `certlake testlog --logs 1 --static-share 0 --max-entries 32
[--rate-limit Q]` (one RFC 6962 log whose answers hold at most 32 entries, aligned like
Google's, behind an operator limit of Q requests/s answered with 429 + Retry-After), and
`certlake backfill --from 0` (ceiling N from a state file) with its default fetching settings
into an empty Delta table.

Cases: Q = 40 requests/s (ceiling 1,280 entries/s), Q = 1 (ceiling 32 entries/s), and no limit.
For each run: entries/s over the job's own elapsed time, as a share of the ceiling; the share of
requests the test log answered 429; the table checked (every index once). In the same run, a
naive sequential fetcher (one `get-entries` at a time, Retry-After honoured, nothing built or
written) reads the same log for the same time, for the ratio; and with `--baseline-src DIR`, the
same backfill by the certlake found in DIR (e.g. a checkout of an earlier commit: its `src/`),
against the same test log. Median of `--runs` runs.

    .venv/bin/python benchmarks/backfill_limits.py [--runs 3] [--cases 40,1,none]
                                                   [--baseline-src /tmp/before/src]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from deltalake import DeltaTable

from _procs import CERTLAKE, backfill_config, start_testlog

CAP = 32
BASELINE_ENTRIES = 3200


def _testlog(work: Path, entries: int, limit: float | None) -> tuple[Any, str]:
    args = ["--initial-size", str(entries), "--logs", "1", "--static-share", "0"]
    args += ["--max-entries", str(CAP)]
    if limit is not None:
        args += ["--rate-limit", str(limit)]
    return start_testlog(work / "testlog-ready", args)


async def _stats(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/admin/stats") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


def _requests(stats: dict[str, Any]) -> tuple[int, int]:
    ops = stats.get("operators", {})
    return (
        sum(o.get("requests", 0) for o in ops.values()),
        sum(o.get("rate_limited", 0) for o in ops.values()),
    )


async def naive(base: str, url: str, seconds: float) -> float:
    """Entries/s of one get-entries at a time, honouring Retry-After."""
    got, start = 0, time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - start < seconds:
            params = {"start": got, "end": got + 255}
            async with s.get(f"{url}/ct/v1/get-entries", params=params) as resp:
                if resp.status == 200:
                    got += len((await resp.json())["entries"])
                    continue
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
    return got / (time.monotonic() - start)


def _backfill(
    work: Path, base: str, url: str, entries: int, src: str | None, verify: bool = True
) -> tuple[dict[str, Any], Path]:
    """One `certlake backfill` (from `src` when given) of every index below `entries`."""
    table = work / ("table" if src is None and verify else "table-baseline")
    shutil.rmtree(table, ignore_errors=True)
    config = backfill_config(work, base, {url: entries}, table, ct_log={"verify": verify})
    summary = work / "summary.json"
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    proc = subprocess.run(
        [CERTLAKE, "backfill", "--config", str(config), "--from", "0",
         "--summary-json", str(summary)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"backfill exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(summary.read_text())
    return doc, table


def run_once(
    work: Path, limit: float | None, entries: int, baseline: str | None, verify: bool = True
) -> dict[str, Any]:
    """`baseline`: an older certlake's src/ to compare with; `verify=False`: compare with this
    one without verification."""
    testlog, base = _testlog(work, entries, limit)
    try:
        stats = asyncio.run(_stats(base))
        (info,) = stats["logs"].values()
        url = info["url"]
        before = _requests(asyncio.run(_stats(base)))
        doc, table = _backfill(work, base, url, entries, None)
        after = _requests(asyncio.run(_stats(base)))
        rows = DeltaTable(str(table)).to_pyarrow_table(columns=["cert_index"])
        counts = Counter(rows["cert_index"].to_pylist())
        assert set(counts) == set(range(entries)), "not every index arrived"
        assert max(counts.values()) == 1, "an index was written twice"
        rate = doc["records_written"] / doc["elapsed_secs"]
        requests, refused = after[0] - before[0], after[1] - before[1]
        naive_rate = asyncio.run(naive(base, url, min(30.0, doc["elapsed_secs"])))
        old_rate = None
        if baseline is not None or not verify:
            # The same test log, its limiter's bucket given time to refill first; under a
            # limit fewer entries, as an older certlake may take far longer for them.
            time.sleep(2)
            count = entries if limit is None else min(entries, BASELINE_ENTRIES)
            old, _ = _backfill(work, base, url, count, baseline, verify)
            old_rate = old["records_written"] / old["elapsed_secs"]
    finally:
        testlog.terminate()
        testlog.wait(timeout=30)
    ceiling = None if limit is None else limit * CAP
    return {
        "entries": doc["records_written"],
        "elapsed": doc["elapsed_secs"],
        "rate": rate,
        "share_of_ceiling": None if ceiling is None else rate / ceiling,
        "requests": requests,
        "refused_share": refused / requests if requests else 0.0,
        "naive_rate": naive_rate,
        "ratio_to_naive": rate / naive_rate if naive_rate else None,
        "baseline_rate": old_rate,
        "ratio_to_baseline": None if old_rate is None else rate / old_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default="40,1,none", help="operator limits, req/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="target job length")
    parser.add_argument("--unlimited-entries", type=int, default=200_000)
    parser.add_argument("--baseline-src", help="also run the certlake in this src/ directory")
    parser.add_argument(
        "--without-verify", action="store_true", help="also run with ct_log.verify: false"
    )
    args = parser.parse_args()
    print(
        f"{time.strftime('%a %b %d %H:%M UTC %Y', time.gmtime())}, nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    for case in args.cases.split(","):
        limit = None if case == "none" else float(case)
        entries = args.unlimited_entries if limit is None else int(limit * CAP * args.seconds)
        results = []
        for n in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="certlake-bench-limits-") as tmp:
                r = run_once(Path(tmp), limit, entries, args.baseline_src, not args.without_verify)
            results.append(r)
            print(json.dumps({"limit": limit, "run": n + 1, **r}), flush=True)
        keys = ("rate", "refused_share", "naive_rate", "ratio_to_naive", "ratio_to_baseline")
        med = {
            k: statistics.median([r[k] for r in results if r[k] is not None] or [float("nan")])
            for k in keys
        }
        share = (
            ""
            if limit is None
            else f" = {100 * med['rate'] / (limit * CAP):.1f} % of the {limit * CAP:,.0f} ceiling"
        )
        print(
            f"limit {case} req/s: median {med['rate']:,.0f} entries/s{share}; "
            f"{100 * med['refused_share']:.2f} % of requests refused; naive sequential "
            f"{med['naive_rate']:,.0f} entries/s (x{med['ratio_to_naive']:.1f})"
            + (
                f"; baseline certlake x{med['ratio_to_baseline']:.3f}"
                if args.baseline_src or args.without_verify
                else ""
            ),
            flush=True,
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
