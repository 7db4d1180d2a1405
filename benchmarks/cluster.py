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

`--part edges`: the live stream through NATS JetStream. `certlake testlog --logs 40 --operators 8
--max-entries 32 --total-rate 1000 --sequence-interval 1` (32-entry answers, each log's entries
published by one tree head a second: bursts), a real `nats-server -js`, one ingest `certlake
serve` relaying to it (archive on) and two `certlake serve --edge`; `--clients` lite clients
(`_streamclient.py`, decoding every frame) split over the edges. Measured as benchmarks/server.py
measures (`_live.measure`): of every index the test log published in the window, what each
connection received, seen→receipt latency (`seen` is set on the ingest node, so this spans
ingest → NATS → edge → client), CPU of ingest, edges and nats-server apart. Before the clients
connect, the edges' CPU is measured with none (`--idle` s): what following the stream costs an
edge, against what each delivered message adds, gives the arithmetic of N edges. In the same
run, alternating, one single `certlake serve` with the clients on it. Median of `--runs`.

    .venv/bin/python benchmarks/cluster.py --part edges [--runs 3] [--clients 100] [--edges 2]

`--part relay` is a kernel: the ingest node's JetStream relay alone (`stream/jetstream.py`) in
this process, publishing `--entries` entries of real size (three payloads, ~9.9 KB framed, as
the edges run measured at NATS) to a real nats-server and waiting for every acknowledgement:
CPU per entry and entries/s. It leaves out everything else the ingest node does meanwhile.

    .venv/bin/python benchmarks/cluster.py --part relay [--runs 3] [--entries 16000]
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
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from deltalake import DeltaTable

from _live import (
    Case,
    ProcWatch,
    bursty_testlog,
    cpu_spent,
    line,
    measure,
    serve_config,
    start_serve,
    stop_all,
    summarize,
)
from _procs import CERTLAKE, start_testlog
from server import add_window_args
from server import run_once as single_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.dask_cluster import DaskCluster
from support.nats import NatsServer, find_nats_server, free_port

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


def _varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def edges_run(work: Path, case: Case, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One run: test log, nats-server, ingest, `args.edges` edges, the clients on the edges."""
    binary = find_nats_server()
    if binary is None:
        raise SystemExit("nats-server is missing: run scripts/test-setup")
    tag = f"edges-{n}"
    testlog, base = bursty_testlog(work, tag, case, args, n)
    (work / f"nats-{tag}").mkdir()
    nats = NatsServer(binary, work / f"nats-{tag}" / "js", free_port(), monitor_port=free_port())
    procs: list[subprocess.Popen[bytes] | None] = []
    watches: dict[str, ProcWatch] = {}
    try:
        nats.start()
        assert nats.popen is not None and nats.monitor_port is not None
        cfg = serve_config(work, tag, base, args, nats_url=nats.url)
        ingest, _ = start_serve(work, f"{tag}-ingest", cfg)
        procs.append(ingest)
        ports = []
        for i in range(args.edges):
            edge, port = start_serve(work, f"{tag}-edge{i}", cfg, "--edge")
            procs.append(edge)
            ports.append(port)
        watches = {
            "ingest": ProcWatch([ingest.pid]),
            "edges": ProcWatch([p.pid for p in procs[1:] if p is not None]),
            "nats": ProcWatch([nats.popen.pid]),
        }
        idle0, t0 = watches["edges"].cpu(), time.monotonic()
        time.sleep(args.idle)
        idle_share = cpu_spent(idle0, watches["edges"].cpu()) / (time.monotonic() - t0)
        varz0, v0 = _varz(nats.monitor_port), time.monotonic()
        r = measure(base, ports, watches, case, args)
        varz1, v1 = _varz(nats.monitor_port), time.monotonic()
        return {
            "case": "edges",
            **r,
            "edge_idle_cpu_share": idle_share / args.edges,
            "nats_out_mb_per_second": (varz1["out_bytes"] - varz0["out_bytes"]) / (v1 - v0) / 1e6,
            "nats_in_mb_per_second": (varz1["in_bytes"] - varz0["in_bytes"]) / (v1 - v0) / 1e6,
        }
    finally:
        for w in watches.values():
            w.stop()
        stop_all([*reversed(procs), testlog])
        nats.stop()


def edges_part(args: argparse.Namespace) -> None:
    case = Case(args.rate, args.clients, "/")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"{args.rate:.0f} entries/s in bursts, {args.clients} lite clients: {args.edges} edges "
        f"(+ ingest, nats-server) against one single server; {platform.node()}, "
        f"{os.cpu_count()} cores, {when}"
    )
    results: dict[str, list[dict[str, Any]]] = {"single": [], "edges": []}
    with tempfile.TemporaryDirectory(prefix="certlake-bench-edges-") as tmp:
        for n in range(args.runs):
            for kind in ("single", "edges"):
                if kind == "single":
                    r = single_run(Path(tmp), "single", case, args, n)
                else:
                    r = edges_run(Path(tmp), case, args, n)
                results[kind].append(r)
                print(json.dumps({"run": n + 1, **r}), flush=True)
    print(f"\nmedian of {args.runs} runs, {args.seconds:.0f} s each, archive on the ingest node")
    meds = {}
    for kind, rs in results.items():
        med, worst = summarize(rs)
        meds[kind] = med
        print(line(kind, case, med, worst))
    e = meds["edges"]
    print(
        f"edges run: ingest {100 * e['cpu_share_ingest']:.0f} %, {args.edges} edges "
        f"{100 * e['cpu_share_edges']:.0f} %, nats-server {100 * e['cpu_share_nats']:.0f} % of a "
        f"core; peak RSS ingest {e['peak_rss_mb_ingest']:.0f} MB, edges "
        f"{e['peak_rss_mb_edges']:.0f} MB, nats {e['peak_rss_mb_nats']:.0f} MB; "
        f"NATS in/out {e['nats_in_mb_per_second']:.2f}/"
        f"{e['nats_out_mb_per_second']:.2f} MB/s"
    )
    _arithmetic(e, args)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _arithmetic(e: dict[str, float], args: argparse.Namespace) -> None:
    """What N edges on N machines would carry, from this run's measured costs: an edge's cost is
    following the stream (measured with no client) plus a cost per delivered message."""
    rate = e["offered_per_second"]
    follow = e["edge_idle_cpu_share"]  # of a core, per edge, at `rate`
    per_edge = e["cpu_share_edges"] / args.edges
    delivered_per_edge = rate * e["delivered_share"] * e["clients"] / args.edges
    per_message_us = 1e6 * max(per_edge - follow, 0.0) / max(delivered_per_edge, 1.0)
    budget = 0.7  # of a core: the headroom the bursts need to keep p99 low
    per_core = (budget - follow) / (per_message_us / 1e6 * rate)
    nats_per_edge = e["nats_out_mb_per_second"] / args.edges
    print(
        f"arithmetic: an edge following {rate:.0f} entries/s with no client uses "
        f"{100 * follow:.1f} % of a core; each delivered message adds {per_message_us:.2f} µs; so "
        f"one edge core at {100 * budget:.0f} % carries ≈ {per_core:.0f} lite clients of the whole "
        f"stream, and N edges on N machines ≈ N × {per_core:.0f}. NATS sends each edge "
        f"{nats_per_edge:.2f} MB/s (N edges: N × that from the NATS server, whose CPU here was "
        f"{100 * e['cpu_share_nats'] / args.edges:.1f} % of a core per edge); the ingest node's "
        f"cost ({100 * e['cpu_share_ingest']:.0f} % of a core) does not grow with N."
    )


def _relay_once(url: str, entries: int) -> tuple[float, float]:
    from prometheus_client import CollectorRegistry

    from certlake.certs.message import Streamed
    from certlake.config.schema import StreamConfig
    from certlake.stream.jetstream import JetStreamRelay

    payloads = [os.urandom(n) for n in (7_000, 2_500, 400)]  # full, lite, domains-only

    def entry(i: int) -> Streamed:
        return Streamed(*payloads, i, "X", "n", "https://log.test/", "h", "h1", "1", "i", ["a.b"])

    async def run() -> tuple[float, float]:
        relay = JetStreamRelay(
            StreamConfig(nats_url=url, nats_buffer=entries + 1), CollectorRegistry()
        )
        await relay.start()
        relay.offer(entry(-1))  # connected, the stream created: then the clock starts
        await relay.flushed()
        batch = [entry(i) for i in range(entries)]
        cpu, wall = time.process_time(), time.monotonic()
        for s in batch:
            relay.offer(s)
        await relay.flushed()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        await relay.close()
        return 1e6 * cpu / entries, entries / wall

    return asyncio.run(run())


def relay_part(args: argparse.Namespace) -> None:
    binary = find_nats_server()
    if binary is None:
        raise SystemExit("nats-server is missing: run scripts/test-setup")
    print(f"kernel: the JetStream relay alone, {args.entries:,} entries of ~9.9 KB per run; "
          f"{platform.node()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    cpus, rates = [], []
    with tempfile.TemporaryDirectory(prefix="certlake-bench-relay-") as tmp:
        for n in range(args.runs):
            nats = NatsServer(binary, Path(tmp) / f"js-{n}", free_port()).start()
            try:
                cpu, rate = _relay_once(nats.url, args.entries)
            finally:
                nats.stop()
            cpus.append(cpu)
            rates.append(rate)
            print(f"  run {n + 1}: {cpu:.1f} µs CPU per entry, {rate:,.0f} entries/s, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    print(f"median: {statistics.median(cpus):.1f} µs CPU per entry, "
          f"{statistics.median(rates):,.0f} entries/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["backfill", "edges", "relay"], default="backfill")
    add_window_args(parser)  # --runs, --seconds, … of the edges part
    parser.add_argument("--entries", type=int, default=16_000, help="per log; relay: in all")
    parser.add_argument("--q", type=float, default=10.0, help="requests/s per operator, address")
    parser.add_argument("--nthreads", type=int, default=1, help="threads per Dask worker")
    parser.add_argument("--split", type=int, default=2_000, help="backfill.range_split_size")
    parser.add_argument("--rate", type=float, default=1000.0, help="edges: entries/s")
    parser.add_argument("--clients", type=int, default=100, help="edges: lite clients")
    parser.add_argument("--edges", type=int, default=2)
    parser.add_argument("--idle", type=float, default=10.0, help="edges: s with no client")
    args = parser.parse_args()
    {"backfill": backfill_part, "edges": edges_part, "relay": relay_part}[args.part](args)


if __name__ == "__main__":
    main()
