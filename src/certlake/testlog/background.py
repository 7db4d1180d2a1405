"""Run a `TestLogServer` on its own event loop in a background thread.

Tests and benchmarks whose client side owns the main loop (or runs `asyncio.run` per example, as
hypothesis tests do) still need the log to answer while they block; a thread keeps the server
real — same sockets, same code — without a subprocess per example.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from certlake.testlog.server import TestLogServer

T = TypeVar("T")


class BackgroundTestLog:
    """`with BackgroundTestLog(initial_size=1000) as bg:` then `bg.server.rfc6962_url`, and
    `bg.call(lambda s: s.grow(10))` to act on the server from its own loop."""

    def __init__(self, **server_args: Any) -> None:
        self.server = TestLogServer(**server_args)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundTestLog:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=120)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def call(self, fn: Callable[[TestLogServer], T]) -> T:
        """Run `fn(server)` on the server's loop and return its result."""

        async def run() -> T:
            return fn(self.server)

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=60)
