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
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from _procs import CERTLAKE, start_testlog, wait_for

SERVING = re.compile(rb"certlake serving on http://[^:]+:(\d+)")
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    rate: float
    clients: int
    path: str
    paused: int = 0  # extra connections that stop reading


CASES = {
    "lite200": Case(2000, 200, "/"),
    "full20": Case(1000, 20, "/full-stream"),
    "lite5000": Case(5000, 10, "/"),
    "cpu100": Case(1000, 100, "/"),
    "slow": Case(1000, 100, "/", paused=1),
}


class Clients:
    """The client processes of one run; their connections split evenly among them."""

    def __init__(self, port: int, case: Case, processes: int) -> None:
        total = case.clients + case.paused
        shares = [
            total // processes + (1 if i < total % processes else 0) for i in range(processes)
        ]
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "_streamclient.py"),
                    "--port",
                    str(port),
                    "--clients",
                    str(n),
                    "--path",
                    case.path,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in shares
            if n
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process did not connect")
        self.paused = case.paused

    def send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def pause(self) -> None:
        # The paused connections are the first of the first process.
        assert self.procs[0].stdin is not None
        self.procs[0].stdin.write(f"pause {self.paused}\n")
        self.procs[0].stdin.flush()

    def report(self) -> list[dict[str, Any]]:
        self.send("report")
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            out.append(json.loads(proc.stdout.readline()))
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(BrokenPipeError):
                    self.send("quit")
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


class ServerWatch:
    """CPU and peak RSS of the serve process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def procs(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu(self) -> dict[int, float]:
        out = {}
        for p in self.procs():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            rss = pss = 0
            for p in self.procs():
                try:
                    full = p.memory_full_info()
                    rss += full.rss
                    pss += full.pss
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def published(base: str) -> dict[str, int]:
    """Each test log's published tree size, by URL as the server names it in messages."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/admin/stats", timeout=10) as resp:
        stats = orjson.loads(resp.read())
    return {info["url"]: int(info["published_size"]) for info in stats["logs"].values()}


def _norm(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


def covered(runs: list[list[int]], lo: int, hi: int) -> int:
    """How many of [lo, hi) the runs hold (runs may overlap only if there were duplicates)."""
    spans = sorted((max(a, lo), min(b + 1, hi)) for a, b in runs)
    total, reach = 0, lo
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def percentile(histogram: dict[int, int], q: float) -> float:
    n = sum(histogram.values())
    if not n:
        return float("nan")
    want, seen = q * n, 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= want:
            return float(ms)
    return float(max(histogram))


def run_once(work: Path, name: str, case: Case, args: argparse.Namespace, n: int) -> dict[str, Any]:
    tag = f"{name}-{n}"
    testlog, base = start_testlog(
        work / f"testlog-{tag}.url",
        ["--seed", str(n), "--logs", str(args.logs), "--operators", str(args.operators),
         "--max-entries", "32", "--total-rate", str(case.rate), "--sequence-interval", "1"],
    )  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    clients: Clients | None = None
    watch: ServerWatch | None = None
    try:
        cfg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "ct_logs_url": f"{base}/log_list.json",
            "ct_log": {"state_file": None},
            "delta_sink": {"enabled": args.archive, "table_path": str(work / f"table-{tag}")},
            "stream": {"build_workers": args.build_workers},
        }
        cfg_path = work / f"config-{tag}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        text = work / f"serve-{tag}.log"
        with text.open("wb") as out:
            server = subprocess.Popen(
                [CERTLAKE, "serve", "--config", str(cfg_path)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            port = int(wait_for(lambda: SERVING.search(text.read_bytes()), "serve").group(1))
        except RuntimeError:
            sys.exit(f"certlake serve did not start:\n{text.read_text()[-3000:]}")
        watch = ServerWatch(server.pid)
        clients = Clients(port, case, args.client_processes)
        time.sleep(args.warmup)
        clients.send("reset")
        if case.paused:
            clients.pause()
        sizes0, cpu0, t0 = published(base), watch.cpu(), time.monotonic()
        time.sleep(args.seconds)
        sizes1, cpu1, t1 = published(base), watch.cpu(), time.monotonic()
        if case.paused:
            clients.send("resume")
        time.sleep(args.grace)
        reports = clients.report()
        load = os.getloadavg()[0]
    finally:
        if clients is not None:
            clients.close()
        if watch is not None:
            watch.stop()
        for proc in (server, testlog):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    window = {_norm(u): (sizes0.get(u, 0), size) for u, size in sizes1.items()}
    offered = sum(hi - lo for lo, hi in window.values())
    keeping, paused = [], []
    histogram: dict[int, int] = {}
    for proc_report in reports:
        for ms, count in proc_report["histogram"].items():
            histogram[int(ms)] = histogram.get(int(ms), 0) + count
        for conn in proc_report["conns"]:
            runs = {_norm(u): r for u, r in conn["runs"].items()}
            got = sum(covered(runs.get(k, []), lo, hi) for k, (lo, hi) in window.items())
            row = {
                "delivered": got,
                "lost": offered - got,
                "skipped": conn["skipped"],
                "duplicates": conn["duplicates"],
                "out_of_order": conn["out_of_order"],
                "closed": conn["closed"],
            }
            (paused if conn["paused"] else keeping).append(row)
    delivered = sum(c["delivered"] for c in keeping)
    cpu = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)
    seconds = t1 - t0
    return {
        "case": name,
        "offered_per_second": offered / seconds,
        "clients": len(keeping),
        "delivered_share": delivered / (offered * len(keeping)) if offered else 0.0,
        "lost_worst_client": max(c["lost"] for c in keeping),
        "lost_total": sum(c["lost"] for c in keeping),
        "skipped_reported": sum(c["skipped"] for c in keeping),
        "duplicates": sum(c["duplicates"] for c in keeping),
        "out_of_order": sum(c["out_of_order"] for c in keeping),
        "closed": sum(1 for c in keeping if c["closed"]),
        "p50_ms": percentile(histogram, 0.50),
        "p99_ms": percentile(histogram, 0.99),
        "server_cpu_share": cpu / seconds,
        # every message the clients that keep up received in the window, whatever it was
        "server_us_per_message": 1e6 * cpu / max(delivered, 1),
        "peak_rss_mb": watch.peak_rss / 2**20,
        "peak_pss_mb": watch.peak_pss / 2**20,
        "client_cpu_share": sum(r["cpu_share"] for r in reports),
        "paused": [
            {"lost": c["lost"], "skipped_reported": c["skipped"], "closed": c["closed"]}
            for c in paused
        ],
        "load_1min": load,
    }


MEDIAN_KEYS = (
    "offered_per_second", "delivered_share", "lost_worst_client", "p50_ms", "p99_ms",
    "server_cpu_share", "server_us_per_message", "peak_rss_mb", "peak_pss_mb", "client_cpu_share",
    "load_1min",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--logs", type=int, default=40)
    parser.add_argument("--operators", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=4.0, help="wait for the window's tail")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--build-workers", type=int, default=None, help="default: serve's own")
    parser.add_argument("--archive", action=argparse.BooleanOptionalAction, default=True)
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
            med = {k: statistics.median(r[k] for r in results) for k in MEDIAN_KEYS}
            worst = {
                k: max(r[k] for r in results)
                for k in ("lost_worst_client", "duplicates", "out_of_order", "closed")
            }
            summary.append((name, med, worst, results))
    archive = "on" if args.archive else "off"
    print(f"\nmedian of {args.runs} runs, {args.seconds:.0f} s each, archive {archive}")
    for name, med, worst, results in summary:
        case = CASES[name]
        print(
            f"{name}: {med['offered_per_second']:.0f} entries/s × {case.clients} {case.path}: "
            f"delivered {100 * med['delivered_share']:.3f} %, worst client lost "
            f"{worst['lost_worst_client']} (worst run), p50/p99 {med['p50_ms']:.0f}/"
            f"{med['p99_ms']:.0f} ms, server CPU {100 * med['server_cpu_share']:.0f} % of a core "
            f"= {med['server_us_per_message']:.2f} µs/message, peak RSS {med['peak_rss_mb']:.0f} MB"
            f" (PSS {med['peak_pss_mb']:.0f}), clients' CPU {100 * med['client_cpu_share']:.0f} %,"
            f" dup/reorder/closed {worst['duplicates']}/{worst['out_of_order']}/{worst['closed']},"
            f" load {med['load_1min']:.2f}"
        )
        for r in results:
            for p in r["paused"]:
                print(
                    f"    paused connection: lost {p['lost']}, told skipped "
                    f"{p['skipped_reported']}, closed {p['closed']}"
                )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
