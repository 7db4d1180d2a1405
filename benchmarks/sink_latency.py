"""The live stream's latency with the Delta sink on vs off (issue: p99 within 10%).

Real processes on loopback: `certlake testlog` growing at `--rate` entries/s per log (two logs),
`certlake serve` with `delta_sink.enabled` false or true, and benchmarks/_loadgen.py with
`--clients` WebSocket clients on the lite stream timing each message against its `seen` field
(set when the message is built, right after the entry is fetched). Runs alternate off/on so that
machine noise hits both alike.

    .venv/bin/python benchmarks/sink_latency.py [--rate 400] [--clients 50] [--seconds 25]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from _procs import CERTLAKE, start_testlog, wait_for

HERE = Path(__file__).resolve().parent
SERVING = re.compile(rb"certlake serving on http://[^:]+:(\d+)")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_once(work: Path, log_list: str, sink: bool, args: argparse.Namespace) -> dict[str, Any]:
    tag = "on" if sink else "off"
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "ct_logs_url": log_list,
        "ct_log": {
            "state_file": str(work / f"state-{tag}.json"),
            "poll_interval_ms": 200,
            "default_operator_rate_limit_ms": 0,
        },
        "delta_sink": {
            "enabled": sink,
            "table_path": str(work / f"table-{tag}"),
            "batch_size": args.batch,
            "flush_interval_secs": 5,
        },
    }
    cfg_path = work / f"config-{tag}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    text = work / f"serve-{tag}.log"
    log = text.open("wb")
    server = subprocess.Popen(
        [CERTLAKE, "serve", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        try:
            port = int(wait_for(lambda: SERVING.search(text.read_bytes()), "serve").group(1))
        except RuntimeError:
            sys.exit(f"certlake serve did not start:\n{text.read_text()[-2000:]}")
        gen = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_loadgen.py"),
                "--port",
                str(port),
                "--clients",
                str(args.clients),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert gen.stdin is not None and gen.stdout is not None
        assert gen.stdout.readline().strip() == "ready"
        time.sleep(2)  # let the watchers settle at the tree head
        gen.stdin.write("reset\nlatency on\n")
        gen.stdin.flush()
        time.sleep(args.seconds)
        gen.stdin.write("report\n")
        gen.stdin.flush()
        report: dict[str, Any] = json.loads(gen.stdout.readline())
        gen.stdin.write("quit\n")
        gen.stdin.flush()
        gen.wait(timeout=30)
        report["server_peak_rss_mb"] = _rss_kb(server.pid) / 1024
        return report
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400.0, help="entries/s per test log")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000, help="delta_sink.batch_size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certlake-sink-latency-") as tmp:
        work = Path(tmp)
        testlog, base = start_testlog(work / "testlog.url", ["--rate", str(args.rate)])
        try:
            results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for sink in (False, True):
                    r = run_once(work, f"{base}/log_list.json", sink, args)
                    results["on" if sink else "off"].append(r)
                    print(
                        f"sink {'on ' if sink else 'off'}: {r['latency_n']} samples, "
                        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                        f"max {r['max_ms']:.1f} ms, server peak RSS "
                        f"{r['server_peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
        finally:
            testlog.send_signal(signal.SIGTERM)
            testlog.wait(timeout=30)
    p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in results.items()}
    p50 = {k: statistics.median(r["p50_ms"] for r in v) for k, v in results.items()}
    print(
        f"\nmedian over rounds: p50 off {p50['off']:.1f} ms / on {p50['on']:.1f} ms; "
        f"p99 off {p99['off']:.1f} ms / on {p99['on']:.1f} ms; "
        f"p99 on/off = {p99['on'] / p99['off']:.2f}"
    )
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
