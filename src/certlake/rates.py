"""Events per second from samples of a running total. Pure: the caller supplies the clock."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Events per second over roughly the last `window` seconds, from samples of a running total.

    The oldest sample kept is the newest one at or before the window's start, so the rate always
    spans at least `window` seconds once there is that much history.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, total: int) -> None:
        self._samples.append((now, total))
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
