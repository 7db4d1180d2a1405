"""Per-operator request limits, the way real CT logs apply them. Pure: the time is passed in.

Real logs limit each client address per operator, over all of the operator's logs and
endpoints (Sectigo about 30 requests/s, DigiCert well under one), and answer 429 with a
`Retry-After` in whole seconds. Here every (operator, client address) pair has a token bucket
refilled at the operator's limit Q per second and holding max(1, Q) tokens: after a quiet
second a client may send about Q requests at once, never more, so a client that ignores the
limit meets it within its first second. A refused request spends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from certlake.server.guard import TokenBucket


def burst(rate_limit: float) -> float:
    """How many requests a bucket holds: one second's worth, and at least one request."""
    return max(1.0, rate_limit)


class OperatorLimiter:
    """Token buckets per (operator, client address); operators mapped to None are unlimited.

    Buckets are never forgotten: a test log has a handful of clients, not the Internet.
    """

    def __init__(self, limits: Mapping[str, float | None]) -> None:
        self._limits = {op: q for op, q in limits.items() if q is not None}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def check(self, operator: str, client: str, now: float) -> float:
        """0.0 if the request may go ahead (it spends a token), else the seconds until it may."""
        rate = self._limits.get(operator)
        if rate is None:
            return 0.0
        bucket = self._buckets.get((operator, client))
        if bucket is None:
            size = burst(rate)
            bucket = self._buckets[(operator, client)] = TokenBucket(size, rate, size, now)
        return bucket.take(now)
