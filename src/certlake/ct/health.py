"""Per-log health: healthy / degraded / unhealthy, with a circuit breaker for unhealthy logs.

Pure state machine; the watcher reports outcomes and asks how long to wait before the next try.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Health(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    # Answering, but the reader falls further behind (see `ct/lag.py`); not a state of the
    # circuit breaker below, which counts failures only.
    BEHIND = "behind"


@dataclass(slots=True)
class LogHealth:
    """`unhealthy_threshold` consecutive failures open the circuit; `healthy_threshold`
    consecutive successes close it again. While open, tries are spaced exponentially from
    `base_delay` up to `max_delay`, so a dead log costs almost nothing and is picked up again
    when it comes back."""

    healthy_threshold: int = 2
    unhealthy_threshold: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    state: Health = Health.HEALTHY
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    total_failures: int = 0
    last_error: str | None = field(default=None)

    def success(self) -> Health:
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if (
            self.state is not Health.HEALTHY
            and self.consecutive_successes >= self.healthy_threshold
        ):
            self.state = Health.HEALTHY
            self.last_error = None
        return self.state

    def failure(self, error: str) -> Health:
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        self.total_failures += 1
        self.last_error = error
        if self.consecutive_failures >= self.unhealthy_threshold:
            self.state = Health.UNHEALTHY
        else:
            self.state = Health.DEGRADED
        return self.state

    def retry_delay(self, poll_interval: float) -> float:
        """How long to wait before the next try, given the ordinary poll interval."""
        if self.consecutive_failures == 0:
            return poll_interval
        exp = min(self.consecutive_failures - 1, 16)
        return min(self.max_delay, max(poll_interval, self.base_delay * 2.0**exp))
