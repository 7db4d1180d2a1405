"""`certlake serve` against a stand-in for the real CT ecosystem, end to end.

Real processes on loopback: `certlake testlog --logs 40 --operators 8 --max-entries 32
--total-rate 2000 --sequence-interval 1` (40 logs of 8 operators, Google-style 32-entry answers,
2,000 entries/s offered in total, a new tree head every second: entries appear in bursts), and
`certlake serve` with its default fetching settings (fresh start at the tree heads, no state
file; `--archive` also writes the Delta archive). This script is the client: one full-stream
WebSocket connection decoding every frame with orjson, checking that each log's indices arrive
exactly once and in order, and a poller that reads the test log's published tree sizes every
100 ms to know when each entry became visible.

Figures per run, over a measurement window after a warm-up:
- delivered: entries received / entries published in the window (each index of each log);
- lag: receipt time - the moment the entry's tree head was first seen by the poller (p50, p99,
  max); the poller's 100 ms period makes this up to 0.1 s short;
- order: duplicates and out-of-order arrivals over the whole run (must be 0);
- the server's CPU (share of one core) and peak RSS; each operator's rate, learned limit and
  refusals from `/api/logs`; logs reported `behind`.
The median over `--runs` runs is printed last, with the load average. With `--baseline-src DIR`
each run is followed by one of the certlake found in DIR (e.g. an earlier commit's `src/`) as
the server, against a test log started the same way, so the two are compared in the same run.
With `--without-verify` the baseline is this certlake with verification switched off
(`ct_log.verify: false`), in alternating order, and the summary gives the median of the runs'
CPU ratios: what verifying every entry costs.

    .venv/bin/python benchmarks/ecosystem.py [--runs 3] [--seconds 60] [--rate-limit Q]
                                             [--baseline-src /tmp/before/src | --without-verify]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import yaml

from _procs import CERTLAKE, start_testlog, wait_for

SERVING = re.compile(rb"certlake serving on http://[^:]+:(\d+)")
POLL = 0.1


def _key(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Observer:
    """The client and the tree-size poller, in one event loop."""

    def __init__(self) -> None:
        # per log: [(time first seen, published size)], sizes increasing
        self.heads: dict[str, list[tuple[float, int]]] = defaultdict(list)
        # per log: [(index, receipt time)] in arrival order
        self.got: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.frames = 0
        self.heartbeats = 0
        self.skipped = 0

    async def poll_heads(self, session: aiohttp.ClientSession, base: str, stop: float) -> None:
        while time.time() < stop:
            async with session.get(f"{base}/admin/stats") as resp:
                stats = await resp.json()
            now = time.time()
            for info in stats["logs"].values():
                key, size = _key(info["url"]), int(info["published_size"])
                seen = self.heads[key]
                if not seen or size > seen[-1][1]:
                    seen.append((now, size))
            await asyncio.sleep(POLL)

    async def read_stream(self, session: aiohttp.ClientSession, url: str, stop: float) -> None:
        async with session.ws_connect(url, max_msg_size=0, heartbeat=None) as ws:
            while time.time() < stop:
                try:
                    msg = await ws.receive(timeout=max(0.1, stop - time.time()))
                except TimeoutError:
                    break
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError(f"stream closed: {msg}")
                    continue
                now = time.time()
                self.frames += 1
                doc = orjson.loads(msg.data)
                if doc.get("message_type") == "heartbeat":
                    self.heartbeats += 1
                    self.skipped += int(doc.get("skipped", 0))
                    continue
                data = doc["data"]
                self.got[_key(data["source"]["url"])].append((int(data["cert_index"]), now))

    def published_at(self, key: str, index: int) -> float | None:
        heads = self.heads[key]
        sizes = [s for _, s in heads]
        i = bisect_right(sizes, index)
        return heads[i][0] if i < len(heads) else None

    def size_at(self, key: str, when: float) -> int:
        size = 0
        for t, s in self.heads[key]:
            if t > when:
                break
            size = s
        return size


def run_once(
    work: Path, args: argparse.Namespace, n: int, src: str | None = None, verify: bool = True
) -> dict[str, Any]:
    baseline = src is not None or not verify
    ready = work / f"testlog-{n}{'-baseline' if baseline else ''}.url"
    testlog_args = [
        "--seed", str(n), "--logs", str(args.logs), "--operators", str(args.operators),
        "--max-entries", str(args.max_entries), "--total-rate", str(args.total_rate),
        "--sequence-interval", str(args.sequence_interval),
    ]  # fmt: skip
    if args.rate_limit is not None:
        testlog_args += ["--rate-limit", str(args.rate_limit)]
    testlog, base = start_testlog(ready, testlog_args)
    server: subprocess.Popen[bytes] | None = None
    try:
        cfg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "ct_logs_url": f"{base}/log_list.json",
            "ct_log": {"state_file": None, "verify": verify},
            "delta_sink": {"enabled": args.archive, "table_path": str(work / f"table-{n}")},
        }
        tag = f"{n}{'-baseline' if baseline else ''}"
        cfg_path = work / f"config-{tag}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        text = work / f"serve-{tag}.log"
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = src
        with text.open("wb") as out:
            server = subprocess.Popen(
                [CERTLAKE, "serve", "--config", str(cfg_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            port = int(wait_for(lambda: SERVING.search(text.read_bytes()), "serve").group(1))
        except RuntimeError:
            sys.exit(f"certlake serve did not start:\n{text.read_text()[-3000:]}")
        return asyncio.run(_observe(base, port, server.pid, args))
    finally:
        for proc in (server, testlog):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


async def _observe(base: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    obs = Observer()
    start = time.time()
    t0 = start + args.warmup
    t1 = t0 + args.seconds
    stop = t1 + args.grace
    proc = psutil.Process(pid)
    async with aiohttp.ClientSession() as session:
        heads = asyncio.create_task(obs.poll_heads(session, base, stop))
        stream = asyncio.create_task(
            obs.read_stream(session, f"ws://127.0.0.1:{port}/full-stream", stop)
        )
        await asyncio.sleep(max(0.0, t0 - time.time()))
        cpu0, w0 = proc.cpu_times(), time.monotonic()
        await asyncio.sleep(max(0.0, t1 - time.time()))
        cpu1, w1 = proc.cpu_times(), time.monotonic()
        async with session.get(f"http://127.0.0.1:{port}/api/logs") as resp:
            api = await resp.json()
        await asyncio.gather(heads, stream)
        rss = proc.memory_info().rss
    offered = delivered = duplicates = disorder = 0
    lags: list[float] = []
    for key in obs.heads:
        lo, hi = obs.size_at(key, t0), obs.size_at(key, t1)
        offered += hi - lo
        got = obs.got.get(key, [])
        seen: set[int] = set()
        prev: int | None = None
        for index, when in got:
            if index in seen:
                duplicates += 1
            seen.add(index)
            if prev is not None and index != prev + 1:
                disorder += 1
            prev = index
            if lo <= index < hi:
                published = obs.published_at(key, index)
                if published is not None:
                    lags.append(when - published)
        delivered += sum(1 for i in range(lo, hi) if i in seen)
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (w1 - w0)
    operators = api.get("operators", {})
    return {
        "offered": offered,
        "delivered": delivered,
        "delivered_share": delivered / offered if offered else 0.0,
        "offered_per_second": offered / args.seconds,
        "duplicates": duplicates,
        "out_of_order": disorder,
        "skipped_by_server": obs.skipped,
        "lag_p50_s": _pct(lags, 0.50),
        "lag_p99_s": _pct(lags, 0.99),
        "lag_max_s": max(lags) if lags else float("nan"),
        "server_cpu_share": cpu,
        "server_rss_mb": rss / 2**20,
        "logs_behind": sum(1 for row in api["logs"] if row.get("behind")),
        "operators": {
            name: {k: o[k] for k in ("requests_per_second", "learned_limit", "refused", "requests")}
            for name, o in operators.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=40)
    parser.add_argument("--operators", type=int, default=8)
    parser.add_argument("--max-entries", type=int, default=32)
    parser.add_argument("--total-rate", type=float, default=2000.0)
    parser.add_argument("--sequence-interval", type=float, default=1.0)
    parser.add_argument("--rate-limit", type=float, default=None, help="per operator, req/s")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=8.0, help="wait for the window's tail")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--archive", action="store_true", help="also write the Delta archive")
    parser.add_argument("--baseline-src", help="also run the certlake in this src/ directory")
    parser.add_argument(
        "--without-verify", action="store_true", help="also run with ct_log.verify: false"
    )
    args = parser.parse_args()
    results = []
    baseline = []
    with tempfile.TemporaryDirectory(prefix="certlake-ecosystem-") as tmp:
        for n in range(args.runs):
            pair: list[tuple[bool, str | None, bool]] = [(False, None, True)]
            if args.baseline_src is not None:
                pair.append((True, args.baseline_src, True))
            elif args.without_verify:
                # Alternating which goes first, so that a machine getting busier (or quieter)
                # through a run does not favour one side.
                pair.insert(n % 2, (True, None, False))
            for is_baseline, src, verify in pair:
                r = run_once(Path(tmp), args, n, src, verify)
                (baseline if is_baseline else results).append(r)
                print(json.dumps({"run": n + 1, "baseline": is_baseline, **r}), flush=True)
    _summarize(results, args, "certlake")
    if baseline:
        label = "without verification" if args.without_verify else f"baseline ({args.baseline_src})"
        _summarize(baseline, args, label)
        ratios = [
            r["server_cpu_share"] / b["server_cpu_share"]
            for r, b in zip(results, baseline, strict=True)
        ]
        print(
            f"server CPU, this / {label}: median of the runs' ratios "
            f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)})"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _summarize(results: list[dict[str, Any]], args: argparse.Namespace, label: str) -> None:
    med = {
        k: statistics.median(r[k] for r in results)
        for k in (
            "delivered_share",
            "offered_per_second",
            "lag_p50_s",
            "lag_p99_s",
            "server_cpu_share",
            "server_rss_mb",
        )
    }
    worst = {k: max(r[k] for r in results) for k in ("duplicates", "out_of_order", "logs_behind")}
    print(
        f"\n{label}, median of {args.runs}: offered {med['offered_per_second']:.0f} entries/s, "
        f"delivered {100 * med['delivered_share']:.2f} %, lag p50 {med['lag_p50_s']:.2f} s / p99 "
        f"{med['lag_p99_s']:.2f} s, server CPU {100 * med['server_cpu_share']:.0f} % of a core, "
        f"RSS {med['server_rss_mb']:.0f} MB; worst run: {worst['duplicates']} duplicates, "
        f"{worst['out_of_order']} out of order, {worst['logs_behind']} logs behind"
    )


if __name__ == "__main__":
    main()
