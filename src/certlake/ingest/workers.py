"""Worker processes that run one function on batches, driven from the event loop without threads.

Why not `concurrent.futures.ProcessPoolExecutor` (which backfill uses): it moves every call and
every result through a helper thread in the parent, which needs the GIL for each hop. Against the
live server's event loop, which holds the GIL for most of each 5 ms switch interval while it fans
out, those hops were the bottleneck: with the executor, 5,000 entries/s in 32-entry answers
(~160 batches/s) stayed at ~55 % delivered, the parent at half a core and the workers nearly idle
(benchmarks/server.py, lite5000). Here the parent writes each call to the worker's pipe and reads
the result from another, both through the event loop's own non-blocking pipe transports; the
worker is a plain loop of `recv_bytes`, call, `send_bytes`.

Each worker answers its calls in the order it got them, so its futures are resolved in that
order. A worker that dies fails what it was given (`WorkerLost`); the caller decides what to do
with the batch (the live pipeline builds it itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import multiprocessing
import pickle
import signal
import struct
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# multiprocessing.Connection's framing: a signed 32-bit big-endian length, then the bytes (a
# length of -1 announces a 64-bit one, for messages of 2 GiB and more).
_LEN = struct.Struct("!i")
_LEN64 = struct.Struct("!Q")


# Linux pipes hold 64 KiB; a batch and its messages are several hundred KiB, and every refill of
# a full pipe costs a wake-up on both sides.
PIPE_SIZE = 1024 * 1024  # Linux's default /proc/sys/fs/pipe-max-size
SENT = 2  # calls in a worker's pipe at once


def _widen(end: Connection) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or above the user's limit
        fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class WorkerLost(RuntimeError):
    """The worker process ended before it answered."""


def _worker_main(fn: Callable[..., Any], requests: Connection, results: Connection) -> None:
    # Ctrl-C on a terminal reaches the whole process group, but only the parent decides what an
    # interrupt means; the parent ends a worker by closing its request pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            args = pickle.loads(requests.recv_bytes())
        except EOFError:
            return
        results.send_bytes(pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL))


class _Worker(asyncio.Protocol):
    """The parent's side of one worker: its request transport and its result stream."""

    def __init__(self) -> None:
        self.waiting: deque[tuple[asyncio.Future[Any], int]] = deque()  # sent, in order
        self.queued: deque[tuple[asyncio.Future[Any], int, bytes]] = deque()  # not sent yet
        self.load = 0  # work units given (sent or queued) and not answered
        self.buf = bytearray()
        self.requests: asyncio.WriteTransport | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.lost = False

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, pos)
            head = _LEN.size
            if size == -1:
                if len(buf) - pos < head + _LEN64.size:
                    break
                (size,) = _LEN64.unpack_from(buf, pos + head)
                head += _LEN64.size
            if len(buf) - pos < head + size:
                break
            result = pickle.loads(memoryview(buf)[pos + head : pos + head + size])
            pos += head + size
            future, units = self.waiting.popleft()
            self.load -= units
            if not future.done():
                future.set_result(result)
        if pos:
            del buf[:pos]
            self.send_queued()

    def send(self, future: asyncio.Future[Any], units: int, data: bytes) -> None:
        self.queued.append((future, units, data))
        self.load += units
        self.send_queued()

    def send_queued(self) -> None:
        """Keep `SENT` calls in the worker's pipe: enough that it never waits for the next, and
        no more, so that a backlog waits here, in whole messages, not in the pipe transport's
        buffer (which moves all it holds on every partial write)."""
        while self.queued and len(self.waiting) < SENT and self.requests is not None:
            future, units, data = self.queued.popleft()
            if len(data) < 2**31 - 1:
                self.requests.write(_LEN.pack(len(data)) + data)
            else:
                self.requests.write(_LEN.pack(-1) + _LEN64.pack(len(data)) + data)
            self.waiting.append((future, units))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        code = self.process.exitcode if self.process is not None else None
        lost = [f for f, _ in self.waiting] + [f for f, _, _ in self.queued]
        self.waiting.clear()
        self.queued.clear()
        self.load = 0
        for future in lost:
            if not future.done():
                future.set_exception(WorkerLost(f"build worker ended (exit code {code})"))


class WorkerPool:
    """`processes` spawned workers running `fn`. Spawned, not forked: a fork would copy the
    parent's event loop, threads and sockets, and its memory would be counted again in each
    child. Use from one event loop: `start`, then `submit`, then `close`."""

    def __init__(self, fn: Callable[..., Any], processes: int) -> None:
        if processes < 1:
            raise ValueError(f"a worker pool needs at least one process, got {processes}")
        self._fn = fn
        self._processes = processes
        self._workers: list[_Worker] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self._processes):
            req_r, req_w = ctx.Pipe(duplex=False)
            res_r, res_w = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_worker_main, args=(self._fn, req_r, res_w), daemon=True, name="build"
            )
            for end in (req_w, res_r):
                _widen(end)
            await asyncio.to_thread(process.start)
            req_r.close()
            res_w.close()
            worker = _Worker()
            worker.process = process
            worker.requests, _ = await loop.connect_write_pipe(asyncio.Protocol, req_w)
            await loop.connect_read_pipe(lambda w=worker: w, res_r)  # type: ignore[misc]
            self._workers.append(worker)

    def submit(self, units: int, *args: Any) -> asyncio.Future[Any]:
        """`fn(*args)` in the least loaded worker; `units` is the call's size (e.g. entries)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        live = [w for w in self._workers if not w.lost]
        if not live:
            future.set_exception(WorkerLost("no build worker is running"))
            return future
        worker = min(live, key=lambda w: w.load)
        worker.send(future, units, pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
        return future

    async def close(self) -> None:
        """End every worker: what they were given is answered first."""
        given = [f for w in self._workers for f, _ in w.waiting]
        given += [f for w in self._workers for f, _, _ in w.queued]
        if given:
            await asyncio.wait(given)
        for worker in self._workers:
            if worker.requests is not None:
                worker.requests.close()
        for worker in self._workers:
            if worker.process is not None:
                await asyncio.to_thread(worker.process.join, 30)
                if worker.process.is_alive():
                    worker.process.kill()
        self._workers = []
