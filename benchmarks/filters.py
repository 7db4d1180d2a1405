r"""Filter benchmark: what a narrowly filtered client costs the server, next to an unfiltered one.

    .venv/bin/python benchmarks/filters.py                    # 500 clients, 200 msgs/s
    .venv/bin/python benchmarks/filters.py --rate 400 --passes 5

Two configurations of the same server (certlake's hub behind aiohttp, as shipped) under the same
message rate, one after the other:
- `unfiltered`: `--clients` WebSocket clients on `/`, each receiving every message;
- `filtered`: as many clients on `/?domain=*.match.example` (or `/?<--filter>`), a filter that
  1 % of the messages match: each message carries three names, every hundredth all under
  match.example. `--filter 'domain=re:\.match\.example$'` measures a regex instead, which the
  hub cannot index: it runs once per message per client.

For each it reports the server process's CPU share (user+sys) and CPU 0's busy share (softirq
included) while publishing `--rate` msgs/s for `--seconds`, best of `--passes`, and checks that
every client received exactly what its filter lets through. The server is pinned to CPU 0 and
the load generator (`_loadgen.py`) to CPU 1 when `taskset` exists. The machinery — child
processes, the command loop, the load generator, the CPU counters — is `fanout.py`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fanout import (
    HERE,
    HIGH_WATER,
    Child,
    Server,
    core_share,
    core_ticks,
    cpu_share,
    payload_factory,
    run_commands,
)

MATCH_EVERY = 100  # one message in a hundred matches the filter


@dataclass(frozen=True, slots=True)
class Message:
    """A stream message with the fields filters read; payload bytes as `fanout.py` makes them."""

    full: bytes
    lite: bytes
    domains: bytes
    all_domains: list[str]
    issuer_aggregated: str
    source_url: str
    source_name: str
    update_type: str
    sha256: str
    serial_number: str


def names_for(index: int) -> list[str]:
    shop = f"shop{index % 977}"
    if index % MATCH_EVERY == 0:
        return [f"{shop}.match.example", f"www.{shop}.match.example", "match.example"]
    return [f"{shop}.example.com", f"www.{shop}.example.com", f"cdn{index}.{shop}.example.net"]


async def start_server(port: int) -> Server:
    from aiohttp import web

    from certlake.stream.fanout import Fanout
    from certlake.stream.hub import HubConfig
    from certlake.stream.web import add_stream_routes

    fanout = Fanout(HubConfig(high_water=HIGH_WATER))
    fanout.start()
    app = web.Application()
    add_stream_routes(app, fanout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    counter = [0]

    def publish(payload: bytes) -> None:
        index = counter[0]
        counter[0] += 1
        names = names_for(index)
        fanout.publish(
            Message(
                full=payload,
                lite=payload,
                domains=b'{"data":%b,"message_type":"dns_entries"}' % json.dumps(names).encode(),
                all_domains=names,
                issuer_aggregated="/C=US/O=Let's Encrypt/CN=R11",
                source_url="https://ct.example/logs/2026h1",
                source_name="Example 2026h1",
                update_type="PrecertLogEntry" if index % 2 else "X509LogEntry",
                sha256=f"{index:064x}",
                serial_number=f"{index:032x}",
            )
        )

    server = Server()
    server.publish = publish
    server.dropped = lambda: fanout.hub.stats.dropped  # type: ignore[method-assign]
    return server


async def serve(port: int, size: int) -> None:
    await run_commands(await start_server(port), payload_factory(size))


def measure(path: str, filtered: bool, args: argparse.Namespace, port: int) -> dict[str, Any]:
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server = Child(
        [sys.executable, __file__, "--serve", "--port", str(port), "--size", str(args.size)],
        0 if pin else None,
    )
    loadgen: Child | None = None
    try:
        if server.read() != "listening":
            raise RuntimeError("server did not start")
        loadgen = Child(
            [sys.executable, str(HERE / "_loadgen.py"), "--port", str(port),
             "--clients", str(args.clients), "--path", path],
            1 if pin else None,
        )  # fmt: skip
        if loadgen.read() != "ready":
            raise RuntimeError("load generator did not connect")
        before, core_before = server.ask("usage"), core_ticks(0)
        time.sleep(2)
        after, core_after = server.ask("usage"), core_ticks(0)
        result: dict[str, Any] = {
            "path": path,
            "idle_cpu": cpu_share(before, after),
            "idle_cpu0": core_share(core_before, core_after),
            "passes": [],
        }
        sent = 0
        for _ in range(args.passes):
            loadgen.send("reset")
            before, core_before = server.ask("usage"), core_ticks(0)
            run = server.ask(f"run {args.rate} {args.seconds}")
            after, core_after = server.ask("usage"), core_ticks(0)
            first, published = sent, run["published"]
            sent += published
            # Messages first..sent-1 were published; every MATCH_EVERY-th one matches.
            matching = (sent - 1) // MATCH_EVERY - (first - 1) // MATCH_EVERY
            expected = (matching if filtered else published) * args.clients
            deadline = time.monotonic() + 5
            while (report := loadgen.ask("report"))["frames"] < expected:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            result["passes"].append(
                {
                    "published": run["published"],
                    "publish_rate": run["published"] / run["seconds"],
                    "frames": report["frames"],
                    "expected_frames": expected,
                    "complete": report["frames"] == expected and run["dropped"] == 0,
                    "cpu": cpu_share(before, after),
                    "cpu0": core_share(core_before, core_after),
                }
            )
        best = min(result["passes"], key=lambda p: p["cpu"])
        complete = all(p["complete"] for p in result["passes"])
        result |= {"cpu": best["cpu"], "cpu0": best["cpu0"], "complete": complete}
        return result
    finally:
        if loadgen is not None:
            loadgen.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s published")
    parser.add_argument("--seconds", type=float, default=8.0, help="per pass")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--size", type=int, default=1500)
    parser.add_argument("--port", type=int, default=18865)
    parser.add_argument("--filter", default="domain=*.match.example", help="the query string")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.port, args.size))
        return

    load_before = os.getloadavg()
    results = [
        measure("/", False, args, args.port),
        measure(f"/?{args.filter}", True, args, args.port + 1),
    ]
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    passes = f"best of {args.passes} × {args.seconds:g} s"
    print(f"{args.clients} clients, {args.rate:g} msgs/s, {passes}")
    print(f"{'clients':<34} {'idle cpu':>8} {'cpu':>6} {'cpu0':>6}  all delivered")
    for r in results:
        print(
            f"{r['path']:<34} {r['idle_cpu']:>8.1%} {r['cpu']:>6.1%} {r['cpu0']:>6.1%}  "
            f"{'yes' if r['complete'] else 'NO'}"
        )
    unfiltered, filtered = results
    print(f"filtered / unfiltered server cpu: {filtered['cpu'] / unfiltered['cpu']:.1%}")
    if args.json:
        payload = {"load_average": [load_before, load_after], "args": vars(args) | {"json": None}}
        args.json.write_text(json.dumps(payload | {"results": results}, indent=2))


if __name__ == "__main__":
    main()
