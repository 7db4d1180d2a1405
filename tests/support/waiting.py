"""Waiting in a test for something another task or process brings about."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

# Polling starts fast, so that a condition met at once costs nothing, and slows down to this, so
# that a slow one probed over HTTP does not load a machine shared with other tests.
_MAX_INTERVAL = 0.05


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    what: str = "the condition",
) -> None:
    """Return once `condition()` (a plain or an async predicate) is true; fail after `within`
    seconds, naming `what` was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    interval = 0.002
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
        interval = min(2 * interval, _MAX_INTERVAL)
