"""The HTTP shell every CT read goes through: one aiohttp session, a User-Agent with a contact
URL, per-operator politeness (an adaptive rate and a bound on requests in flight), bounded
answers, and errors mapped to `FetchError`.

Every answer is bounded (`ct/limits.py`): on the wire, once decompressed, and in time (the
session's total timeout covers the body too). aiohttp's own decompression is off because it has
no bound; bodies are gunzipped here as they arrive, by `Content-Encoding` or by the gzip magic
number (static-ct logs may send gzip without saying so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import aiohttp
import aiohttp.abc

from certlake import __version__
from certlake.ct.backoff import parse_retry_after
from certlake.ct.errors import FetchError, NotFound
from certlake.ct.limits import BoundedBody, ReadLimits, error_start
from certlake.ct.pacing import Outcome, Pacer, PacerSnapshot, PacingLimits, outcome_of

# Skylight and other log front ends treat clients without a contact in the UA as anonymous and
# squeeze them into one shared rate limit (Skylight: 75 req/s for all of them).
USER_AGENT = f"certlake/{__version__} (+https://github.com/certlake/certlake)"
# Of an error answer, only its start is read (the status is what matters) and less is quoted.
_ERROR_BYTES = 64 * 1024
_SNIPPET = 120


class OperatorBudget:
    """Politeness shared by all logs of one operator and every job of the process: at most
    `limits.max_in_flight` requests at once, started at the adaptive rate of `ct/pacing.Pacer`,
    which learns from each answer (429/503 and timeouts cut it, `Retry-After` pauses it)."""

    def __init__(
        self,
        name: str,
        limits: PacingLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.pacer = Pacer(limits or PacingLimits(), clock())
        self._slots = asyncio.Semaphore(self.pacer.limits.max_in_flight)
        # Requests take their turn in arrival order; only the head of the line watches the clock.
        self._turn = asyncio.Lock()
        # Set by each answer: it may have moved the head's slot (slow start brings it forward).
        self._answered = asyncio.Event()
        self._held = False  # the head of the line is waiting for the rate

    async def acquire(self) -> tuple[float, bool]:
        """Wait for a slot and for the rate; returns (start time, whether the rate held it)."""
        await self._slots.acquire()
        try:
            async with self._turn:
                waited = False
                # Each sleep lasts until the slot or the next answer, which may have moved it
                # (a Retry-After pause later, a raised rate sooner), hence the re-check.
                while (wait := self.pacer.wait(self._clock())) > 0:
                    waited = self._held = True
                    self._answered.clear()
                    try:
                        async with asyncio.timeout(wait):
                            await self._answered.wait()
                    except TimeoutError:
                        pass
                    finally:
                        self._held = False
                now = self._clock()
                self.pacer.start(now)
                return now, waited
        except BaseException:
            self._slots.release()
            raise

    def release(
        self, started: tuple[float, bool], outcome: Outcome, retry_after: float | None = None
    ) -> None:
        now = self._clock()
        # The rate is the constraint when it held this request back, or holds one back now (a
        # request that queued behind the starting pace while this one was out).
        waited = started[1] or self._held
        self.pacer.finish(now, outcome, now - started[0], retry_after, waited=waited)
        self._answered.set()
        self._slots.release()

    @property
    def max_in_flight(self) -> int:
        return self.pacer.limits.max_in_flight

    def snapshot(self) -> PacerSnapshot:
        return self.pacer.snapshot(self._clock())


class CTHttp:
    """A shared HTTP client for CT logs. Use as an async context manager. `resolver` replaces
    the system's name resolution (the demo names its test log with one that does not depend on
    the port it is bound to). `source_address`: the local address connections leave from (logs
    limit each client address: a host with several, or each worker of a cluster, gets its own
    budget); None lets the system choose."""

    def __init__(
        self,
        timeout: float = 30.0,
        user_agent: str = USER_AGENT,
        limits: ReadLimits | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        source_address: str | None = None,
    ) -> None:
        """`timeout` is each request's deadline, body included; `limits` bound each answer (the
        defaults of `ReadLimits` unless given)."""
        self._deadline = timeout
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip, identity"}
        self.limits = limits or ReadLimits()
        self._resolver = resolver
        self.source_address = source_address
        self._session: aiohttp.ClientSession | None = None
        self._budgets: dict[str, OperatorBudget] = {}

    async def __aenter__(self) -> CTHttp:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._deadline),
            headers=self._headers,
            connector=aiohttp.TCPConnector(
                limit=256,
                limit_per_host=32,
                resolver=self._resolver,
                local_addr=None if self.source_address is None else (self.source_address, 0),
            ),
            auto_decompress=False,
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

    def budget(self, operator: str, limits: PacingLimits | None = None) -> OperatorBudget:
        """The budget shared by every log of `operator` (created on first use, with `limits`)."""
        b = self._budgets.get(operator)
        if b is None:
            b = self._budgets[operator] = OperatorBudget(operator, limits)
        return b

    @property
    def budgets(self) -> Mapping[str, OperatorBudget]:
        return self._budgets

    async def get(
        self,
        url: str,
        params: Mapping[str, str | int] | None = None,
        budget: OperatorBudget | None = None,
        limits: ReadLimits | None = None,
    ) -> bytes:
        """GET `url`; the body on 200, else `FetchError` (`NotFound` for 404) carrying the status
        and any Retry-After. Timeouts and connection failures are `FetchError` without status; an
        answer past `self.limits` (or the tighter `limits` given) is `AnswerTooLarge`."""
        if self._session is None:
            raise RuntimeError("CTHttp used outside its context")
        bounds = self.limits if limits is None else self.limits.within(limits)
        if budget is None:
            return await self._get_mapped(url, params, bounds)
        started = await budget.acquire()
        try:
            body = await self._get_mapped(url, params, bounds)
        except FetchError as e:
            budget.release(started, outcome_of(e.status, timed_out=e.timed_out), e.retry_after)
            raise
        except BaseException:
            budget.release(started, Outcome.OTHER)
            raise
        budget.release(started, Outcome.OK)
        return body

    async def _get_mapped(
        self, url: str, params: Mapping[str, str | int] | None, limits: ReadLimits
    ) -> bytes:
        try:
            return await self._get(url, params, limits)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(
                f"timeout reading {url}: no whole answer within {self._deadline:g} s "
                "(ct_log.request_timeout_secs)",
                timed_out=True,
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise FetchError(f"{type(e).__name__} reading {url}: {e}") from None

    async def _get(
        self, url: str, params: Mapping[str, str | int] | None, limits: ReadLimits
    ) -> bytes:
        assert self._session is not None
        async with self._session.get(url, params=params) as resp:
            if resp.status == 200:
                body = BoundedBody(str(resp.url), limits, resp.headers.get("Content-Encoding"))
                body.announced(resp.content_length)
                async for chunk in resp.content.iter_any():
                    body.feed(chunk)
                return body.body()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            snippet = (await _error_start(resp)).decode("utf-8", "replace").strip()
            message = f"HTTP {resp.status} from {resp.url}: {snippet}"
            if resp.status == 404:
                raise NotFound(message, 404)
            raise FetchError(message, resp.status, retry_after)


async def _error_start(resp: aiohttp.ClientResponse) -> bytes:
    return error_start(
        await resp.content.read(_ERROR_BYTES), resp.headers.get("Content-Encoding"), _SNIPPET
    )
