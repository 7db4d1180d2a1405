"""What the end-to-end live-stream benchmarks share (`server.py`, `cluster.py --part edges`):
starting `certlake serve` processes, the client processes that decode every frame
(`_streamclient.py`), the CPU and memory of the processes under test, and one measured window:
which of the indices the test log published each connection received, seen→receipt latency, CPU
per delivered message."""

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
import threading
import time
import urllib.request
from collections.abc import Sequence
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


class Clients:
    """The client processes of one run; their connections split evenly among them, process i
    connecting to `ports[i % len(ports)]` (so with as many processes as ports, one per port)."""

    def __init__(self, ports: Sequence[int], case: Case, processes: int) -> None:
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
                    str(ports[i % len(ports)]),
                    "--clients",
                    str(n),
                    "--path",
                    case.path,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i, n in enumerate(shares)
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


class ProcWatch:
    """CPU and peak RSS of some processes and all their descendants, taken together."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def procs(self) -> list[psutil.Process]:
        out = []
        for root in self.roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                out += [root, *root.children(recursive=True)]
        return out

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


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)


def bursty_testlog(
    work: Path, tag: str, case: Case, args: argparse.Namespace, seed: int
) -> tuple[subprocess.Popen[bytes], str]:
    """`certlake testlog` at the case's rate over `args.logs` logs of `args.operators`
    operators, shaped like the real logs: Google-style 32-entry answers, and each log's new
    entries published by one tree head a second, so they arrive in bursts."""
    return start_testlog(
        work / f"testlog-{tag}.url",
        ["--seed", str(seed), "--logs", str(args.logs), "--operators", str(args.operators),
         "--max-entries", "32", "--total-rate", str(case.rate), "--sequence-interval", "1"],
    )  # fmt: skip


def serve_config(
    work: Path, tag: str, base: str, args: argparse.Namespace, **stream: Any
) -> dict[str, Any]:
    """`certlake serve`'s defaults on any port of 127.0.0.1, the test log at `base`, no state
    file (a fresh start at the tree heads), the archive (`args.archive`) in `work`."""
    return {
        "host": "127.0.0.1",
        "port": 0,
        "ct_logs_url": f"{base}/log_list.json",
        "ct_log": {"state_file": None},
        "delta_sink": {"enabled": args.archive, "table_path": str(work / f"table-{tag}")},
        "stream": {"build_workers": args.build_workers, **stream},
    }


def start_serve(
    work: Path, tag: str, cfg: dict[str, Any], *flags: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`certlake serve --config CFG FLAGS`, and its port once it says where clients connect."""
    cfg_path = work / f"config-{tag}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    text = work / f"serve-{tag}.log"
    with text.open("wb") as out:
        proc = subprocess.Popen(
            [CERTLAKE, "serve", "--config", str(cfg_path), *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = int(wait_for(lambda: SERVING.search(text.read_bytes()), tag).group(1))
    except RuntimeError:
        proc.kill()
        sys.exit(f"certlake serve {' '.join(flags)} did not start:\n{text.read_text()[-3000:]}")
    return proc, port


def stop_all(procs: Sequence[subprocess.Popen[bytes] | None]) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def published(base: str) -> dict[str, int]:
    """Each test log's published tree size, by URL as the server names it in messages."""
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


def measure(
    base: str,
    ports: Sequence[int],
    watches: dict[str, ProcWatch],
    case: Case,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Connect the case's clients to `ports`, warm up `args.warmup` s, count over `args.seconds`
    (plus `args.grace` for the window's tail), and say what every connection received of what
    the test log at `base` published in the window; CPU and peak RSS of each of `watches`."""
    clients = Clients(ports, case, args.client_processes)
    try:
        time.sleep(args.warmup)
        clients.send("reset")
        if case.paused:
            clients.pause()
        sizes0, t0 = published(base), time.monotonic()
        cpu0 = {name: w.cpu() for name, w in watches.items()}
        time.sleep(args.seconds)
        sizes1, t1 = published(base), time.monotonic()
        cpu1 = {name: w.cpu() for name, w in watches.items()}
        if case.paused:
            clients.send("resume")
        time.sleep(args.grace)
        reports = clients.report()
        load = os.getloadavg()[0]
    finally:
        clients.close()
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
    seconds = t1 - t0
    shares = {name: cpu_spent(cpu0[name], cpu1[name]) / seconds for name in watches}
    return {
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
        "server_cpu_share": sum(shares.values()),
        **{f"cpu_share_{name}": share for name, share in shares.items()},
        # every message the clients that keep up received in the window, whatever it was
        "server_us_per_message": 1e6 * sum(shares.values()) * seconds / max(delivered, 1),
        # each group's own peak, summed (no more than the peak of the sum)
        "peak_rss_mb": sum(w.peak_rss for w in watches.values()) / 2**20,
        "peak_pss_mb": sum(w.peak_pss for w in watches.values()) / 2**20,
        **{f"peak_rss_mb_{name}": w.peak_rss / 2**20 for name, w in watches.items()},
        "client_cpu_share": sum(r["cpu_share"] for r in reports),
        "paused": [
            {"lost": c["lost"], "skipped_reported": c["skipped"], "closed": c["closed"]}
            for c in paused
        ],
        "load_1min": load,
    }


WORST_KEYS = ("lost_worst_client", "duplicates", "out_of_order", "closed")


def summarize(results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int]]:
    """Medians over runs (of every numeric figure the runs share), and the worst of the
    counts that must be zero."""
    keys = [k for k, v in results[0].items() if isinstance(v, int | float) and k not in WORST_KEYS]
    med = {k: statistics.median(r[k] for r in results) for k in keys}
    worst = {k: max(r[k] for r in results) for k in WORST_KEYS}
    return med, worst


def line(label: str, case: Case, med: dict[str, float], worst: dict[str, int]) -> str:
    return (
        f"{label}: {med['offered_per_second']:.0f} entries/s × {case.clients} {case.path}: "
        f"delivered {100 * med['delivered_share']:.3f} %, worst client lost "
        f"{worst['lost_worst_client']} (worst run), p50/p99 {med['p50_ms']:.0f}/"
        f"{med['p99_ms']:.0f} ms, server CPU {100 * med['server_cpu_share']:.0f} % of a core "
        f"= {med['server_us_per_message']:.2f} µs/message, peak RSS {med['peak_rss_mb']:.0f} MB"
        f" (PSS {med['peak_pss_mb']:.0f}), clients' CPU {100 * med['client_cpu_share']:.0f} %,"
        f" dup/reorder/closed {worst['duplicates']}/{worst['out_of_order']}/{worst['closed']},"
        f" load {med['load_1min']:.2f}"
    )
