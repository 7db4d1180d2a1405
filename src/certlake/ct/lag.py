"""How far behind a log a reader is, in entries and in seconds, and whether it keeps up (pure).

Entries behind the newest tree head say how much is unread; seconds say how stale the stream is:
the time since the oldest unread entry was first seen in a tree head. A log is `behind` when it
has been more than `behind_after` seconds behind and the gap grew over the last `window`
seconds; it is reported as one that *cannot be kept up with* when, over a full window, the log
grew faster than it was read. Both clear once the reader is back within `caught_up_within`
seconds, so a burst that is worked off never flaps the state.

Every method takes `now` (seconds); the watcher calls `head` on each tree head and `read` as its
cursor moves, so the unit tests drive the tracker with plain numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LagReport:
    entries: int  # published, not read
    seconds: float  # since the oldest unread entry was first seen in a tree head
    growth_per_second: float | None  # the log's growth over the window (None: too little data)
    read_per_second: float | None  # what the reader took over the same window
    behind: bool
    cannot_keep_up: bool


class LagTracker:
    def __init__(
        self,
        *,
        window: float = 60.0,
        behind_after: float = 30.0,
        caught_up_within: float = 10.0,
    ) -> None:
        self.window = window
        self.behind_after = behind_after
        self.caught_up_within = caught_up_within
        # (first seen, tree size) of every tree head that grew the log, oldest first; heads
        # wholly read are dropped, except the newest.
        self._heads: deque[tuple[float, int]] = deque()
        # (time, tree size, cursor) samples spanning at least the window, oldest first.
        self._samples: deque[tuple[float, int, int]] = deque()
        self._size: int | None = None
        self._cursor: int | None = None
        self._behind = False

    def head(self, now: float, tree_size: int) -> None:
        if self._size is None or tree_size > self._size:
            self._heads.append((now, tree_size))
            self._size = tree_size
            self._sample(now)

    def read(self, now: float, cursor: int) -> None:
        self._cursor = cursor
        while len(self._heads) > 1 and self._heads[0][1] <= cursor:
            self._heads.popleft()
        self._sample(now)

    def _sample(self, now: float) -> None:
        if self._size is None or self._cursor is None:
            return
        if self._samples and now - self._samples[-1][0] < 1.0:
            self._samples[-1] = (self._samples[-1][0], self._size, self._cursor)
        else:
            self._samples.append((now, self._size, self._cursor))
        # Keep one sample at least a window old, so rates cover the whole window.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def report(self, now: float) -> LagReport:
        size, cursor = self._size, self._cursor
        if size is None or cursor is None:
            return LagReport(0, 0.0, None, None, False, False)
        entries = max(0, size - cursor)
        seconds = 0.0
        if entries:
            first_unread = next((t for t, s in self._heads if s > cursor), now)
            seconds = max(0.0, now - first_unread)
        growth = read = None
        growing = False
        full_window = False
        if self._samples:
            t0, size0, cursor0 = self._samples[0]
            span = now - t0
            if span >= 1.0:
                growth = (size - size0) / span
                read = (cursor - cursor0) / span
                growing = entries > size0 - cursor0
                full_window = span >= self.window
        if self._behind:
            self._behind = seconds > self.caught_up_within
        else:
            self._behind = seconds > self.behind_after and growing
        cannot = (
            self._behind
            and full_window
            and growth is not None
            and read is not None
            and read < growth
        )
        return LagReport(entries, seconds, growth, read, self._behind, cannot)
