"""The HTTP shell every CT read goes through: one aiohttp session, a User-Agent with a contact
URL, per-operator politeness, and errors mapped to `FetchError`.

aiohttp is the asyncio HTTP client here because the server side of certlake uses it too and it
decodes `Content-Encoding: gzip` itself; static-ct logs may send gzip without being asked, so a
body that still starts with the gzip magic is gunzipped as well (ct-protocols.md §2.6).
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Mapping
from types import TracebackType

import aiohttp

from certlake import __version__
from certlake.ct.backoff import parse_retry_after
from certlake.ct.errors import FetchError, NotFound

# Skylight and other log front ends treat clients without a contact in the UA as anonymous and
# squeeze them into one shared rate limit (ct-protocols.md §2.6).
USER_AGENT = f"certlake/{__version__} (+https://github.com/certlake/certlake)"
_GZIP_MAGIC = b"\x1f\x8b"


class OperatorBudget:
    """Politeness shared by all logs of one operator: at most `concurrency` requests in flight
    and at least `min_interval` seconds between request starts."""

    def __init__(self, concurrency: int = 2, min_interval: float = 0.0) -> None:
        self._sem = asyncio.Semaphore(concurrency)
        self._min_interval = min_interval
        self._next_start = 0.0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        await self._sem.acquire()
        if self._min_interval > 0:
            async with self._lock:
                now = time.monotonic()
                wait = self._next_start - now
                self._next_start = max(now, self._next_start) + self._min_interval
            if wait > 0:
                await asyncio.sleep(wait)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sem.release()


class CTHttp:
    """A shared HTTP client for CT logs. Use as an async context manager."""

    def __init__(self, timeout: float = 30.0, user_agent: str = USER_AGENT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip, identity"}
        self._session: aiohttp.ClientSession | None = None
        self._budgets: dict[str, OperatorBudget] = {}

    async def __aenter__(self) -> CTHttp:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=self._headers,
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=32),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def budget(
        self, operator: str, concurrency: int = 2, min_interval: float = 0.0
    ) -> OperatorBudget:
        """The budget shared by every log of `operator` (created on first use)."""
        b = self._budgets.get(operator)
        if b is None:
            b = self._budgets[operator] = OperatorBudget(concurrency, min_interval)
        return b

    async def get(
        self,
        url: str,
        params: Mapping[str, str | int] | None = None,
        budget: OperatorBudget | None = None,
    ) -> bytes:
        """GET `url`; the body on 200, else `FetchError` (`NotFound` for 404) carrying the status
        and any Retry-After. Timeouts and connection failures are `FetchError` without status."""
        if self._session is None:
            raise RuntimeError("CTHttp used outside its context")
        try:
            if budget is None:
                return await self._get(url, params)
            async with budget:
                return await self._get(url, params)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(f"timeout reading {url}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise FetchError(f"{type(e).__name__} reading {url}: {e}") from None

    async def _get(self, url: str, params: Mapping[str, str | int] | None) -> bytes:
        assert self._session is not None
        async with self._session.get(url, params=params) as resp:
            body = await resp.read()
            if resp.status == 200:
                return _maybe_gunzip(body, url)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            snippet = body[:120].decode("utf-8", "replace").strip()
            message = f"HTTP {resp.status} from {resp.url}: {snippet}"
            if resp.status == 404:
                raise NotFound(message, 404)
            raise FetchError(message, resp.status, retry_after)


def _maybe_gunzip(body: bytes, url: str) -> bytes:
    if not body.startswith(_GZIP_MAGIC):
        return body
    try:
        return gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as e:
        raise FetchError(f"corrupt gzip body from {url}: {e}", 200) from None
