"""Lag behind a log's tree head, in entries and seconds, and the `behind` verdict (pure)."""

from __future__ import annotations

import pytest

from certlake.ct.lag import LagTracker


def test_seconds_count_from_when_the_oldest_unread_entry_was_first_published() -> None:
    t = LagTracker()
    t.head(0.0, 100)
    t.read(0.0, 100)
    assert t.report(0.0).entries == 0 and t.report(0.0).seconds == 0.0
    t.head(10.0, 150)  # 100..149 published at t=10
    t.head(20.0, 200)  # 150..199 at t=20
    t.read(21.0, 120)
    r = t.report(25.0)
    assert r.entries == 80
    assert r.seconds == pytest.approx(15.0)  # entry 120 was first seen at 10
    t.read(26.0, 160)
    assert t.report(26.0).seconds == pytest.approx(6.0)  # entry 160: seen at 20
    t.read(27.0, 200)
    assert t.report(27.0).seconds == 0.0


def test_a_burst_worked_off_is_never_behind() -> None:
    t = LagTracker(behind_after=30.0)
    for second in range(0, 300):
        now = float(second)
        t.head(now, 1000 + 500 * (second // 10))  # a 500-entry head every 10 s
        t.read(now + 0.5, 1000 + 500 * (second // 10))  # read within half a second
        assert not t.report(now + 0.6).behind


def test_growing_lag_is_behind_and_a_reader_too_slow_cannot_keep_up() -> None:
    t = LagTracker(window=60.0, behind_after=30.0)
    cursor = 0
    states = []
    for second in range(0, 200):
        now = float(second)
        t.head(now, 100 * second)  # grows 100/s
        cursor += 60  # reads 60/s
        t.read(now, cursor)
        states.append(t.report(now))
    # The gap grows 40 entries/s: 0.4 s of the log's time per second.
    assert not states[45].behind  # 17 s behind: not yet the 30 s threshold
    assert states[80].behind and states[80].seconds > 30
    last = states[-1]
    assert last.behind and last.cannot_keep_up
    assert last.growth_per_second == pytest.approx(100, rel=0.05)
    assert last.read_per_second == pytest.approx(60, rel=0.05)


def test_behind_clears_with_hysteresis_once_caught_up() -> None:
    t = LagTracker(window=60.0, behind_after=30.0, caught_up_within=10.0)
    t.head(0.0, 0)
    t.read(0.0, 0)
    for second in range(1, 100):
        t.head(float(second), 100 * second)
        t.read(float(second), 0)
    assert t.report(99.0).behind
    # The reader catches up to all but the last 20 s of entries: still behind (> 10 s).
    t.read(100.0, 100 * 80)
    assert t.report(100.0).behind
    t.read(101.0, 100 * 99)
    assert not t.report(101.0).behind


def test_nothing_known_reports_nothing() -> None:
    r = LagTracker().report(5.0)
    assert (r.entries, r.seconds, r.behind, r.cannot_keep_up) == (0, 0.0, False, False)
    assert r.growth_per_second is None
