"""A running `certlake serve` and `certlake testlog` seen from a test: the full stream
collected, the server's `/api/logs`, and the test log's admin endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

Seen = list[tuple[str, int]]


@contextlib.asynccontextmanager
async def full_stream(base: str) -> AsyncIterator[Seen]:
    """Collect (log url, index) of every certificate on /full-stream while the block runs."""
    seen: Seen = []
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(base.replace("http", "ws", 1) + "/full-stream", heartbeat=None)

    async def reader() -> None:
        async for msg in ws:
            doc = orjson.loads(msg.data)
            if doc["message_type"] == "certificate_update":
                seen.append((doc["data"]["source"]["url"], doc["data"]["cert_index"]))

    task = asyncio.create_task(reader())
    try:
        yield seen
    finally:
        # Frames already received are read to the end (the server may be dead by now: what
        # it sent before dying must still count), then the reader is stopped.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await task
        await ws.close()
        await session.close()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def grow(testlog: str, n: int) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{testlog}/admin/grow?n={n}") as r:
        assert r.status == 200, await r.text()


async def set_faults(testlog: str, faults: list[str]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{testlog}/admin/faults", json={"faults": faults}) as r,
    ):
        assert r.status == 200, await r.text()


async def logs_at(server: str) -> dict[str, int | None]:
    """Each watched log's cursor, by URL."""
    doc = await get_json(f"{server}/api/logs")
    return {log["url"]: log["cursor"] for log in doc["logs"]}


async def heads_known(server: str, n: int) -> bool:
    """Whether `n` logs are watched and each has read its first tree head."""
    try:
        cursors = await logs_at(server)
    except aiohttp.ClientError:
        return False
    return len(cursors) == n and all(c is not None for c in cursors.values())
