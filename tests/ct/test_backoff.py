"""Retry policy and Retry-After parsing (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from certlake.ct.backoff import MIN_RATE_LIMIT_RETRIES, RetryPolicy, parse_retry_after

NOW = 1_700_000_000.0


def test_retry_after_seconds() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(" 0 ", NOW) == 0.0


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 42, UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == 42.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    when = datetime.fromtimestamp(NOW - 100, UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == 0.0


def test_retry_after_absent_or_garbage() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def test_rate_limits_get_at_least_ten_retries_even_with_a_small_budget() -> None:
    p = RetryPolicy(max_attempts=3)
    assert p.attempts_for(429) > MIN_RATE_LIMIT_RETRIES
    assert p.attempts_for(503) > MIN_RATE_LIMIT_RETRIES
    assert p.attempts_for(502) == 3
    assert p.attempts_for(None) == 3


@given(
    attempt=st.integers(1, 40),
    retry_after=st.none() | st.floats(0, 3_600),
    seed=st.integers(0, 2**32),
)
def test_delay_is_capped_grows_and_honours_retry_after(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    p = RetryPolicy(initial_delay=0.5, max_delay=60.0)
    d = p.delay(attempt, retry_after, random.Random(seed))
    assert d > 0
    ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
    assert d >= ceiling / 2
    if retry_after is not None:
        assert d >= retry_after  # above the cap too
    else:
        assert d <= 60.0
