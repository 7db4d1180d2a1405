"""When a buffering writer flushes: on a full batch, every `interval` seconds, and not at all
once it is closing (the caller then drains what is left). Shared by the live sink and the
backfill writer so both follow one rule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


async def flush_loop(
    *,
    wake: asyncio.Event,
    closing: Callable[[], bool],
    interval: float,
    full: Callable[[], bool],
    drain: Callable[[bool], Awaitable[None]],
) -> None:
    """Run until `closing()`. `wake` is set when the buffer may be full or when closing starts;
    `drain(full_only)` writes full batches only (size trigger) or everything (timer)."""
    loop = asyncio.get_running_loop()
    next_flush = loop.time() + interval
    while not closing():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), max(0.0, next_flush - loop.time()))
        wake.clear()
        if closing():
            break
        if loop.time() >= next_flush:
            await drain(False)
            next_flush = loop.time() + interval
        elif full():
            await drain(True)
