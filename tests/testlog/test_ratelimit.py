"""Per-operator rate limits: the bucket on a fake clock, then 429s over loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from certlake.testlog.ecosystem import OperatorConfig, ecosystem_logs, operator_name
from certlake.testlog.faults import Fault
from certlake.testlog.ratelimit import OperatorLimiter, burst
from certlake.testlog.server import TestLogServer

pytestmark = pytest.mark.timeout(60)

# --- the bucket (pure) -----------------------------------------------------------------------


def test_burst_is_one_seconds_worth_and_at_least_one() -> None:
    assert [burst(q) for q in (0.2, 1.0, 2.5, 30.0)] == [1.0, 1.0, 2.5, 30.0]


def test_bucket_math_on_a_fake_clock() -> None:
    limiter = OperatorLimiter({"a": 2.0, "slow": 0.25, "free": None})
    assert [limiter.check("a", "ip1", 100.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a", "ip1", 100.0) == pytest.approx(0.5)
    assert limiter.check("a", "ip1", 100.25) == pytest.approx(0.25)  # refused: nothing spent
    assert limiter.check("a", "ip1", 100.5) == 0.0
    assert limiter.check("a", "ip1", 100.5) == pytest.approx(0.5)
    assert limiter.check("a", "ip2", 100.5) == 0.0  # another client, another bucket
    # A long pause refills to the burst, not beyond it.
    assert [limiter.check("a", "ip1", 1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    assert limiter.check("slow", "ip1", 0.0) == 0.0
    assert limiter.check("slow", "ip1", 1.0) == pytest.approx(3.0)
    assert all(limiter.check("free", "ip1", 0.0) == 0.0 for _ in range(1000))
    assert limiter.check("unknown operator", "ip1", 0.0) == 0.0


# --- over loopback ---------------------------------------------------------------------------

STRICT, OTHER = operator_name(0), operator_name(1)
# Four logs, two operators: static-00 and rfc6962-02 are STRICT's, rfc6962-01 and rfc6962-03
# OTHER's.
LOGS = ecosystem_logs(4, operators=2)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _status(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


async def _stats(http: aiohttp.ClientSession, srv: TestLogServer) -> Any:
    async with http.get(srv.base_url + "/admin/stats") as resp:
        return orjson.loads(await resp.read())


def _urls(srv: TestLogServer) -> list[str]:
    """One request to every kind of endpoint of STRICT's two logs."""
    static, rfc = srv.log_url("static-00"), srv.log_url("rfc6962-02")
    return [
        f"{rfc}/ct/v1/get-sth",
        f"{rfc}/ct/v1/get-entries?start=0&end=9",
        f"{rfc}/ct/v1/get-roots",
        f"{static}/checkpoint",
        f"{static}/tile/0/000.p/10",
        f"{static}/tile/data/000.p/10",
    ]


async def test_one_limit_for_all_logs_and_endpoints_of_an_operator(
    http: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    ops = [OperatorConfig(STRICT, rate_limit=6.0)]
    async with TestLogServer(logs=LOGS, operators=ops, initial_size=10, clock=clock) as srv:
        urls = _urls(srv)
        assert [await _status(http, u) for u in urls] == [(200, None)] * 6
        # The clock stands still: the seventh request, to any of STRICT's logs, is refused.
        assert await _status(http, urls[0]) == (429, "1")
        assert await _status(http, f"{srv.log_url('static-00')}/checkpoint") == (429, "1")
        # OTHER has no limit at all.
        other = f"{srv.log_url('rfc6962-01')}/ct/v1/get-sth"
        assert [(await _status(http, other))[0] for _ in range(20)] == [200] * 20
        clock.now += 0.2  # one token back (1/6 s), and a little
        assert await _status(http, urls[1]) == (200, None)
        assert (await _status(http, urls[1]))[0] == 429
        # The log list is not the operator's: never limited.
        assert (await _status(http, srv.log_list_url))[0] == 200
        stats = await _stats(http, srv)
    assert stats["operators"] == {
        STRICT: {"requests": 10, "rate_limited": 3},
        OTHER: {"requests": 20, "rate_limited": 0},
    }
    assert stats["rate_limits"] == {STRICT: 6.0, OTHER: None}
    assert stats["faults"] == {}  # a limit is not a fault


async def test_retry_after_rounds_the_wait_up(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    ops = [OperatorConfig(STRICT, rate_limit=0.4), OperatorConfig(OTHER, rate_limit=30)]
    async with TestLogServer(logs=LOGS, operators=ops, initial_size=10, clock=clock) as srv:
        url = _urls(srv)[0]
        assert (await _status(http, url))[0] == 200
        assert await _status(http, url) == (429, "3")  # 2.5 s to the next token
        clock.now += 2.0
        assert await _status(http, url) == (429, "1")  # 0.5 s
        clock.now += 0.5
        assert (await _status(http, url))[0] == 200


async def test_a_burst_beyond_the_limit_on_the_real_clock(http: aiohttp.ClientSession) -> None:
    async with TestLogServer(logs=LOGS, rate_limit=5, initial_size=10) as srv:
        url = _urls(srv)[0]
        started = time.monotonic()
        answers = await asyncio.gather(*(_status(http, url) for _ in range(30)))
        elapsed = time.monotonic() - started
        ok = [a for a in answers if a[0] == 200]
        limited = [a for a in answers if a[0] == 429]
        # Five at once, plus what refills (5/s) while the burst is answered.
        assert 5 <= len(ok) <= 5 + 5 * elapsed + 1
        assert len(ok) + len(limited) == 30
        assert all(retry is not None and int(retry) >= 1 for _, retry in limited)
        # The other operator has its own bucket, full.
        other = f"{srv.log_url('rfc6962-01')}/ct/v1/get-sth"
        assert [(await _status(http, other))[0] for _ in range(5)] == [200] * 5
        stats = await _stats(http, srv)
    assert stats["operators"] == {
        STRICT: {"requests": 30, "rate_limited": len(limited)},
        OTHER: {"requests": 5, "rate_limited": 0},
    }


async def test_faults_apply_to_the_requests_the_limit_lets_through(
    http: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    fault = Fault.from_spec("503:n=1,endpoint=get-sth")
    async with TestLogServer(
        logs=LOGS, rate_limit=1, faults=[fault], initial_size=10, clock=clock
    ) as srv:
        rfc = srv.log_url("rfc6962-02")
        assert (await _status(http, f"{rfc}/ct/v1/get-roots"))[0] == 200
        assert (await _status(http, f"{rfc}/ct/v1/get-sth"))[0] == 429  # the fault waits
        clock.now += 1
        assert (await _status(http, f"{rfc}/ct/v1/get-sth"))[0] == 503
        clock.now += 1
        assert (await _status(http, f"{rfc}/ct/v1/get-sth"))[0] == 200
        stats = await _stats(http, srv)
    assert stats["faults"] == {"503": 1}
    assert stats["operators"][STRICT] == {"requests": 4, "rate_limited": 1}
