"""Retry decisions for CT reads: which failures are worth retrying, and how long to wait.

Pure: the clock and the random source are parameters, so the policy is testable with plain values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# Statuses that mean "later", not "never": rate limiting, overload, a gateway between.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Rate limiting must never exhaust a job quickly: at least 10 retries, whatever the budget.
RATE_LIMIT_STATUSES = frozenset({429, 503})
MIN_RATE_LIMIT_RETRIES = 10
# A Retry-After beyond this is taken as a broken header rather than an order to stop for days.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unparseable. A date in the past means "now" (0)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter, capped at `max_delay`; a Retry-After is honoured as a
    floor even above that cap (up to `MAX_RETRY_AFTER`): retrying earlier than the operator
    asked is what gets a client's address blocked."""

    max_attempts: int = 10  # attempts for an ordinary failure (timeout, 5xx, bad response)
    initial_delay: float = 0.5
    max_delay: float = 60.0
    rate_limit_attempts: int = 12  # attempts when the log says 429/503

    def attempts_for(self, status: int | None) -> int:
        if status in RATE_LIMIT_STATUSES:
            return max(self.rate_limit_attempts, MIN_RATE_LIMIT_RETRIES + 1, self.max_attempts)
        return self.max_attempts

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Wait before retry number `attempt` (1-based)."""
        # The exponent is capped: 2**1024 overflows a float, and 2**64 is past any sane cap.
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** min(attempt - 1, 64))
        # Half fixed, half jitter: spreads a fleet of workers without ever retrying instantly.
        wait = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait
