"""Fan-out benchmark (a kernel): one server process, one load-generator process, loopback WebSocket.

What it leaves out: there is no CT log, no fetching, no certificate parsing and no message
building — the hub publishes pre-built bytes from a smooth producer, and the load generator
counts frame headers without decoding them. It measures the hub and the WebSocket stack alone;
what clients of the real server get is benchmarks/server.py's to say.

    .venv/bin/python benchmarks/fanout.py                      # certlake's stack (hub + aiohttp)
    .venv/bin/python benchmarks/fanout.py --stack all          # the stack comparison
    .venv/bin/python benchmarks/fanout.py --stack hub-picows --clients 200

Stacks:
- `hub-aiohttp`: certlake.stream as shipped: the hub (frame once, drop-oldest backlogs,
  coalesced writes) behind aiohttp's upgrade handling.
- `hub-picows`: the same hub behind picows instead of aiohttp (needs `picows`).
- `aiohttp-frames`: aiohttp writing one frame per client per message, without awaiting
  (skipping a client whose transport is over the bound): the usual "non-blocking" fan-out.
- `picows-frames`: the same per-client frame writes through picows' `send` (needs `picows`).

For each stack it reports, on `--clients` clients of the lite stream with `--size`-byte
messages: server CPU share and RSS when idle; p50/p99 latency (publish to receipt, measured in
the load generator) at a fixed 100 msgs/s; then a rate ramp, each step `--step` seconds, and the
highest aggregate delivered msgs/s with zero drops (every client got every message, the server
dropped nothing, and the producer kept to the offered rate). The server is pinned to CPU 0 and
the load generator to CPU 1 when `taskset` exists. Each stack's run is bounded to about a
minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from certlake.stream.hub import HubConfig

HERE = Path(__file__).resolve().parent
STACKS = ("hub-aiohttp", "hub-picows", "aiohttp-frames", "picows-frames")
# The per-client bound on bytes handed to a transport, for every stack alike.
HIGH_WATER = 64 * 1024


# ---------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class BenchMessage:
    full: bytes
    lite: bytes
    domains: bytes


def payload_factory(size: int) -> Callable[[int], bytes]:
    """Lite-message-shaped JSON of `size` bytes carrying the publish time in `"seen"`."""
    head = b'{"data":{"cert_index":%d,"cert_link":"https://ct.example/ct/v1/get-entries","seen":'
    tail = b',"update_type":"X509LogEntry","leaf_cert":{"all_domains":["example.com"],"pad":"'
    end = b'"}},"message_type":"certificate_update"}\n'
    pad = b"x" * max(0, size - len(head) - len(tail) - len(end) - 30)
    template = head + b"%r" + tail + pad + end

    def make(index: int) -> bytes:
        return template % (index, time.time())

    return make


def _usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss = pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = usage.ru_maxrss * 1024
    return {"user": usage.ru_utime, "sys": usage.ru_stime, "rss": rss, "t": time.monotonic()}


class Server:
    """A stack under test: something to publish into, and a drop counter."""

    publish: Callable[[bytes], None]

    def dropped(self) -> int:
        raise NotImplementedError


async def start_hub_aiohttp(port: int, coalesce: float) -> Server:
    from aiohttp import web

    from certlake.stream.fanout import Fanout
    from certlake.stream.hub import HubConfig
    from certlake.stream.web import add_stream_routes

    fanout = Fanout(HubConfig(high_water=HIGH_WATER, coalesce=coalesce))
    fanout.start()
    app = web.Application()
    add_stream_routes(app, fanout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    return _hub_server(fanout)


async def start_hub_picows(port: int, coalesce: float) -> Server:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    from certlake.stream.fanout import Fanout
    from certlake.stream.hub import Client, HubConfig, StreamKind, Wire

    fanout = Fanout(HubConfig(high_water=HIGH_WATER, coalesce=coalesce))
    fanout.start()

    class Sink:
        __slots__ = ("_transport", "_ws")

        def __init__(self, ws: WSTransport) -> None:
            self._ws = ws
            self._transport = ws.underlying_transport

        def write(self, data: bytes) -> None:
            if not self._transport.is_closing():
                self._transport.write(data)

        def buffered(self) -> int:
            return self._transport.get_write_buffer_size()

        def abort(self) -> None:
            self._ws.disconnect(graceful=False)

    class Listener(WSListener):
        client: Client | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.client = fanout.connect(StreamKind.LITE, Wire.WEBSOCKET, Sink(transport))

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if self.client is not None:
                fanout.disconnect(self.client)

    await ws_create_server(lambda _request: Listener(), "127.0.0.1", port, backlog=1024)
    return _hub_server(fanout)


def _hub_server(fanout: Any) -> Server:
    server = Server()
    hub = fanout.hub

    def publish(payload: bytes) -> None:
        fanout.publish(BenchMessage(payload, payload, payload))

    server.publish = publish
    server.dropped = lambda: hub.stats.dropped  # type: ignore[method-assign]
    return server


async def start_aiohttp_frames(port: int, coalesce: float) -> Server:
    from aiohttp import web

    sockets: dict[Any, asyncio.Transport] = {}
    drops = [0]

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert isinstance(request.transport, asyncio.Transport)
        sockets[ws] = request.transport
        try:
            async for _ in ws:
                pass
        finally:
            del sockets[ws]
        return ws

    def publish(payload: bytes) -> None:
        for ws, transport in sockets.items():
            if transport.get_write_buffer_size() > HIGH_WATER or transport.is_closing():
                drops[0] += 1
            else:
                ws._writer._write_websocket_frame(payload, 1, 0)

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    server = Server()
    server.publish = publish
    server.dropped = lambda: drops[0]  # type: ignore[method-assign]
    return server


async def start_picows_frames(port: int, coalesce: float) -> Server:
    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    transports: set[WSTransport] = set()
    drops = [0]

    class Listener(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            transports.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            transports.discard(transport)

    def publish(payload: bytes) -> None:
        for transport in transports:
            if transport.underlying_transport.get_write_buffer_size() > HIGH_WATER:
                drops[0] += 1
            else:
                transport.send(WSMsgType.TEXT, payload)

    await ws_create_server(lambda _request: Listener(), "127.0.0.1", port, backlog=1024)
    server = Server()
    server.publish = publish
    server.dropped = lambda: drops[0]  # type: ignore[method-assign]
    return server


async def serve(stack: str, port: int, size: int, coalesce: float) -> None:
    starters = {
        "hub-aiohttp": start_hub_aiohttp,
        "hub-picows": start_hub_picows,
        "aiohttp-frames": start_aiohttp_frames,
        "picows-frames": start_picows_frames,
    }
    await run_commands(await starters[stack](port, coalesce), payload_factory(size))


async def run_commands(server: Server, make: Callable[[int], bytes]) -> None:
    """Obey the orchestrator on stdin: `usage`, `run RATE SECONDS` (publish `make(i)` at RATE
    for SECONDS, then report), `quit`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("listening", flush=True)
    index = 0
    while line := (await reader.readline()).decode().split():
        if line[0] == "usage":
            print(json.dumps(_usage()), flush=True)
        elif line[0] == "run":
            rate, seconds = float(line[1]), float(line[2])
            total = int(rate * seconds)
            dropped0, sent = server.dropped(), 0
            start = time.monotonic()
            while sent < total:
                due = min(total, int(rate * (time.monotonic() - start)) + 1) - sent
                for _ in range(due):
                    server.publish(make(index))
                    index += 1
                sent += due
                await asyncio.sleep(0.001)
            print(
                json.dumps(
                    {
                        "published": sent,
                        "dropped": server.dropped() - dropped0,
                        "start": start,
                        "seconds": time.monotonic() - start,
                    }
                ),
                flush=True,
            )
        elif line[0] == "quit":
            break


# ---------------------------------------------------------------- orchestrator


class Child:
    """A pinned subprocess spoken to one line at a time."""

    def __init__(self, argv: list[str], cpu: int | None) -> None:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, line: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"child {self.proc.args!r} exited with {self.proc.wait()}")
        return out.strip()

    def ask(self, line: str) -> dict[str, Any]:
        self.send(line)
        result: dict[str, Any] = json.loads(self.read())
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def core_ticks(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU. Unlike the process's rusage this includes softirq time:
    on loopback the kernel processes the receiving side of TCP there, charged to no process."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = [int(v) for v in line.split()[1:]]
            idle = fields[3] + fields[4]  # idle + iowait
            return sum(fields) - idle, sum(fields)
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def core_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def cpu_share(before: dict[str, float], after: dict[str, float]) -> float:
    busy = after["user"] + after["sys"] - before["user"] - before["sys"]
    return busy / (after["t"] - before["t"])


def measure(stack: str, args: argparse.Namespace) -> dict[str, Any]:
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    port = args.port
    server = Child(
        [sys.executable, __file__, "--serve", stack, "--port", str(port),
         "--size", str(args.size), "--coalesce", str(args.coalesce)],
        0 if pin else None,
    )  # fmt: skip
    loadgen: Child | None = None
    try:
        if server.read() != "listening":
            raise RuntimeError("server did not start")
        loadgen = Child(
            [sys.executable, str(HERE / "_loadgen.py"), "--port", str(port),
             "--clients", str(args.clients)],
            1 if pin else None,
        )  # fmt: skip
        if loadgen.read() != "ready":
            raise RuntimeError("load generator did not connect")
        result: dict[str, Any] = {"stack": stack, "clients": args.clients, "size": args.size}

        before, core_before = server.ask("usage"), core_ticks(0)
        time.sleep(3)
        after, core_after = server.ask("usage"), core_ticks(0)
        result["idle_cpu"] = cpu_share(before, after)
        result["idle_cpu0"] = core_share(core_before, core_after)
        result["idle_rss_mb"] = after["rss"] / 2**20

        loadgen.send("latency on")
        loadgen.send("reset")
        before, core_before = server.ask("usage"), core_ticks(0)
        run = server.ask(f"run 100 {args.latency_seconds}")
        after, core_after = server.ask("usage"), core_ticks(0)
        time.sleep(0.3)
        report = loadgen.ask("report")
        loadgen.send("latency off")
        expected = run["published"] * args.clients
        result["latency"] = {
            "rate": 100,
            "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"],
            "max_ms": report["max_ms"],
            "complete": report["frames"] == expected and run["dropped"] == 0,
            "cpu": cpu_share(before, after),
            "cpu0": core_share(core_before, core_after),
            "rss_mb": after["rss"] / 2**20,
        }

        steps: list[dict[str, Any]] = []
        good: float | None = None
        bad: float | None = None
        rates = iter(args.rates)
        rate: float | None = next(rates, None)
        bisecting = False
        while rate is not None:
            step = ramp_step(server, loadgen, rate, args)
            steps.append(step)
            print(f"  {stack} {rate:g} msgs/s: {step}", file=sys.stderr, flush=True)
            if step["ok"]:
                good = rate
            else:
                bad = rate
            if bisecting or (bad is not None and good is None):
                rate = None
            elif bad is not None and good is not None:
                # One step halfway between the last good rate and the first bad one.
                rate, bisecting = (good + bad) / 2, True
            else:
                rate = next(rates, None)
        ok = [s for s in steps if s["ok"]]
        best = max(ok, key=lambda s: s["delivered_per_s"]) if ok else None
        result["steps"] = steps
        result["max_delivered_per_s"] = best["delivered_per_s"] if best else 0
        result["load_cpu"] = best["server_cpu"] if best else None
        result["load_cpu0"] = best["cpu0_busy"] if best else None
        result["load_rate"] = best["rate"] if best else None
        result["load_rss_mb"] = best["server_rss_mb"] if best else None
        result["limit"] = "none reached" if bad is None else f"failed at {bad:g} msgs/s"
        return result
    finally:
        if loadgen is not None:
            loadgen.stop()
        server.stop()


def ramp_step(
    server: Child, loadgen: Child, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    loadgen.send("reset")
    before, core_before = server.ask("usage"), core_ticks(0)
    run = server.ask(f"run {rate} {args.step}")
    after, core_after = server.ask("usage"), core_ticks(0)
    expected = run["published"] * args.clients
    deadline = time.monotonic() + args.drain
    while True:
        report = loadgen.ask("report")
        if report["frames"] >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    complete = report["frames"] == expected
    if not complete:
        # A failed step leaves frames in flight; let them land so they do not count in the next.
        while (frames := loadgen.ask("report")["frames"]) != report["frames"]:
            report["frames"] = frames
            time.sleep(0.3)
    elapsed = report["last_frame_at"] - run["start"]
    # A fan-out that keeps the producer busy drops nothing but slows the feed: below 95 % of the
    # offered rate counts as a failure too.
    kept_up = run["published"] / run["seconds"] >= 0.95 * rate
    return {
        "rate": rate,
        "ok": complete and kept_up and run["dropped"] == 0 and report["skipped"] == 0,
        "publish_rate": round(run["published"] / run["seconds"]),
        "delivered_per_s": round(report["frames"] / elapsed) if elapsed > 0 else 0,
        "server_dropped": run["dropped"],
        "client_skipped": report["skipped"],
        "missing": expected - report["frames"],
        "server_cpu": round(cpu_share(before, after), 3),
        "cpu0_busy": round(core_share(core_before, core_after), 3),
        "server_rss_mb": round(after["rss"] / 2**20, 1),
        "loadgen_cpu": round(report["cpu_share"], 3),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="hub-aiohttp", choices=(*STACKS, "all"))
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--size", type=int, default=1500)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--step", type=float, default=3.0, help="seconds per ramp step")
    parser.add_argument("--drain", type=float, default=1.0, help="seconds allowed after a step")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(r) for r in s.split(",")],
        default=[100, 200, 400, 800, 1200, 1600, 2400, 3200],
        help="messages/s published per ramp step (each goes to every client)",
    )
    parser.add_argument(
        "--coalesce", type=float, default=HubConfig().coalesce, help="hub stacks' write window, s"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.size, args.coalesce))
        return

    load_before = os.getloadavg()
    results = []
    for stack in STACKS if args.stack == "all" else (args.stack,):
        results.append(measure(stack, args))
        args.port += 1  # a fresh port: the previous server's sockets may linger in TIME_WAIT
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print("cpu = server process (user+sys); cpu0 = the server's core, softirq included")
    header = (
        f"{'stack':<15} {'max msgs/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'idle cpu':>8} "
        f"{'idle MB':>7} {'100/s cpu':>9} {'100/s cpu0':>10} {'max cpu':>7} {'max cpu0':>8} "
        f"{'max MB':>6}  limit"
    )
    print(header)
    for r in results:
        lat = r["latency"]
        load_mb = "-" if r["load_rss_mb"] is None else f"{r['load_rss_mb']:.0f}"
        print(
            f"{r['stack']:<15} {r['max_delivered_per_s']:>10,} {lat['p50_ms']:>7.1f} "
            f"{lat['p99_ms']:>7.1f} {r['idle_cpu']:>8.1%} {r['idle_rss_mb']:>7.0f} "
            f"{_pct(lat['cpu']):>9} {_pct(lat['cpu0']):>10} {_pct(r['load_cpu']):>7} "
            f"{_pct(r['load_cpu0']):>8} {load_mb:>6}  {r['limit']}"
        )
    if args.json:
        payload = {"load_average": [load_before, load_after], "results": results}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
