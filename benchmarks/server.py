"""The live server end to end: real `certlake serve`, real test log, real clients that decode
every frame. This, not benchmarks/fanout.py (a kernel: the hub alone on pre-built bytes), is
what says whether clients get every message.

Processes on loopback:
- `certlake testlog --logs L --operators K --max-entries 32 --total-rate R
  --sequence-interval 1`: Google-style 32-entry answers, and each log's new entries published by
  one tree head a second, so they arrive in bursts;
- `certlake serve` with its default settings (fresh start at the tree heads, no state file;
  `--archive` also writes the Delta archive in a temporary directory);
- client processes (`_streamclient.py`, uvloop, orjson) holding the connections, each decoding
  every frame and keeping, per connection and log, the runs of indices it received.

Per run, over `--seconds` after `--warmup`: for every connection, which of the indices the test
log published in the window it received (a missed one is lost, whatever the reason: dropped by
the server, never fetched, or still in flight `--grace` seconds after the window), duplicates and
reorderings, what heartbeats reported as `skipped`; seen→receipt latency (the message's `seen`,
set when the server built it, to the moment the client parsed it; p50/p99 over every message);
the CPU of every certlake serve process (summed: the server and any worker process) per message
delivered, and the peak of their summed RSS (sampled every 0.25 s). The median over `--runs` runs
is printed last, with the load average. The clients' CPU is printed too: on this 2-core machine
they compete with the server, so a case's figures hold for a server that has what is left.

Cases (`--case`, repeatable; default all):
- `lite200`: 2,000 entries/s × 200 lite clients;
- `full20`: 1,000 entries/s × 20 full-stream clients;
- `lite5000`: 5,000 entries/s × 10 lite clients (ingest bound);
- `cpu100`: 1,000 entries/s × 100 lite clients (CPU per delivered message);
- `slow`: `cpu100` with one more connection that stops reading at the window's start and reads
  again at its end: it alone loses messages, is told how many (the `skipped` of the heartbeats
  it then reads, against what it lost), and the others' p99 is compared with `cpu100`'s.

    .venv/bin/python benchmarks/server.py [--case lite200 ...] [--runs 3] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from _live import (
    Case,
    ProcWatch,
    bursty_testlog,
    line,
    measure,
    serve_config,
    start_serve,
    stop_all,
    summarize,
)

CASES = {
    "lite200": Case(2000, 200, "/"),
    "full20": Case(1000, 20, "/full-stream"),
    "lite5000": Case(5000, 10, "/"),
    "cpu100": Case(1000, 100, "/"),
    "slow": Case(1000, 100, "/", paused=1),
}


def run_once(work: Path, name: str, case: Case, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One run of `case` against one `certlake serve`."""
    tag = f"{name}-{n}"
    testlog, base = bursty_testlog(work, tag, case, args, n)
    server = None
    watch: ProcWatch | None = None
    try:
        cfg = serve_config(work, tag, base, args)
        server, port = start_serve(work, tag, cfg)
        watch = ProcWatch([server.pid])
        return {"case": name, **measure(base, [port], {"server": watch}, case, args)}
    finally:
        if watch is not None:
            watch.stop()
        stop_all([server, testlog])


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """The options of a measured window (`_live.measure`), shared with cluster.py."""
    parser.add_argument("--logs", type=int, default=40)
    parser.add_argument("--operators", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=4.0, help="wait for the window's tail")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--build-workers", type=int, default=None, help="default: serve's own")
    parser.add_argument("--archive", action=argparse.BooleanOptionalAction, default=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    add_window_args(parser)
    args = parser.parse_args()
    names = args.case or list(CASES)
    summary = []
    with tempfile.TemporaryDirectory(prefix="certlake-server-bench-") as tmp:
        for name in names:
            results = []
            for n in range(args.runs):
                r = run_once(Path(tmp), name, CASES[name], args, n)
                results.append(r)
                print(json.dumps({"run": n + 1, **r}), flush=True)
            summary.append((name, *summarize(results), results))
    archive = "on" if args.archive else "off"
    print(f"\nmedian of {args.runs} runs, {args.seconds:.0f} s each, archive {archive}")
    for name, med, worst, results in summary:
        print(line(name, CASES[name], med, worst))
        for r in results:
            for p in r["paused"]:
                print(
                    f"    paused connection: lost {p['lost']}, told skipped "
                    f"{p['skipped_reported']}, closed {p['closed']}"
                )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
