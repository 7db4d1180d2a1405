"""The per-operator rate controller on a fake clock, against a token-bucket limiter like the ones
real operators (and the built-in test log) run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.backoff import MAX_RETRY_AFTER
from certlake.ct.pacing import Outcome, Pacer, PacingLimits, outcome_of


@dataclass
class Bucket:
    """`rate` tokens/s, at most `burst`; a request without a token gets 429 + Retry-After."""

    rate: float
    burst: float
    tokens: float = 0.0
    last: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float | None:
        """None when served, else the Retry-After in whole seconds (at least 1)."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return float(max(1, math.ceil((1 - self.tokens) / self.rate)))


@dataclass
class Run:
    served: int
    refused: int
    seconds: float
    pacer: Pacer


def drive(
    pacer: Pacer,
    limiter: Bucket | None,
    seconds: float,
    *,
    latency: float = 0.02,
    start: float = 0.0,
    rates: list[float] | None = None,
) -> Run:
    """A client with endless demand: each request starts as soon as the pacer allows (in-flight
    bounded by the pacer's limits) and is answered `latency` later. `rates` gets the pacer's
    rate as each second ends."""
    now, served, refused, held = start, 0, 0, False
    second = start + 1.0
    finishing: list[tuple[float, Outcome, float | None, bool]] = []
    while now < start + seconds:
        while rates is not None and now >= second:
            rates.append(pacer.rate)
            second += 1.0
        finishing.sort(key=lambda f: f[0])
        while finishing and finishing[0][0] <= now:
            at, outcome, retry_after, waited = finishing.pop(0)
            pacer.finish(at, outcome, latency, retry_after, waited=waited)
        if len(finishing) >= pacer.limits.max_in_flight:
            now = finishing[0][0]
            continue
        wait = pacer.wait(now)
        if wait > 0:
            held = True
            upcoming = finishing[0][0] if finishing else math.inf
            now = min(now + wait, upcoming)
            continue
        pacer.start(now)
        waited, held = held, False
        retry_after = None if limiter is None else limiter.take(now)
        if retry_after is None:
            served += 1
            finishing.append((now + latency, Outcome.OK, None, waited))
        else:
            refused += 1
            finishing.append((now + latency, Outcome.REFUSED, retry_after, waited))
    return Run(served, refused, seconds, pacer)


@pytest.mark.parametrize(
    ("limit", "burst"), [(40.0, 40.0), (40.0, 1.0), (30.0, 5.0), (5.0, 5.0), (100.0, 100.0)]
)
def test_converges_under_a_fixed_limit(limit: float, burst: float) -> None:
    pacer = Pacer(PacingLimits(initial_rate=2.0), 0.0)
    # It ends held near the limit (the rate read each second: a probe above it now and then,
    # which the limiter refuses, is how a raised limit would be found).
    rates: list[float] = []
    run = drive(pacer, Bucket(limit, burst), 300.0, rates=rates)
    share = run.served / run.seconds / limit
    refused_share = run.refused / (run.served + run.refused)
    assert share >= 0.88, (share, pacer.snapshot(300.0))
    assert refused_share <= 0.02, refused_share
    assert pacer.learned_limit is not None
    last = sorted(rates[-100:])
    assert 0.85 * limit <= last[len(last) // 2] <= 1.15 * limit, last


def test_a_strict_operator_of_one_request_per_second() -> None:
    pacer = Pacer(PacingLimits(initial_rate=2.0), 0.0)
    run = drive(pacer, Bucket(1.0, 1.0), 300.0)
    assert run.served / run.seconds >= 0.9
    assert run.refused <= 12


def test_grows_while_unlimited_and_only_while_it_is_the_constraint() -> None:
    pacer = Pacer(PacingLimits(initial_rate=2.0, max_in_flight=4), 0.0)
    drive(pacer, None, 10.0, latency=0.01)
    # Four in flight at 10 ms cannot exceed 400/s: the rate stops near what is used.
    assert 300 <= pacer.rate <= 450, pacer.rate
    assert pacer.refused == 0 and pacer.learned_limit is None


def test_an_unlimited_operator_is_at_full_pace_within_two_seconds() -> None:
    """A backfill against a log that does not limit: from the default 2 requests/s to what four
    in flight at 3 ms allow (~1,300/s) within two seconds, not held at the starting pace."""
    pacer = Pacer(PacingLimits(initial_rate=2.0, max_in_flight=4), 0.0)
    rates: list[float] = []
    run = drive(pacer, None, 4.0, latency=0.003, rates=rates)
    assert rates[1] >= 1000, rates
    # Over half of what the whole time could carry at full pace (the ramp of +2 per answer
    # that came before carried an eighth).
    assert run.served >= 4 / 0.003 * 4.0 * 0.55, run.served


def test_never_exceeds_the_configured_ceiling() -> None:
    pacer = Pacer(PacingLimits(initial_rate=2.0, max_rate=25.0), 0.0)
    run = drive(pacer, None, 30.0, latency=0.001)
    assert pacer.rate <= 25.0
    assert run.served <= 25.0 * 30 + 2


def test_recovers_after_a_storm_of_refusals() -> None:
    pacer = Pacer(PacingLimits(initial_rate=2.0), 0.0)
    drive(pacer, Bucket(50.0, 50.0), 120.0)
    before = pacer.rate
    # The operator refuses everything for a while (an incident), with Retry-After: 2.
    now = 120.0
    for _ in range(30):
        while pacer.wait(now) > 0:
            now += pacer.wait(now)
        pacer.start(now)
        pacer.finish(now + 0.02, Outcome.REFUSED, 0.02, 2.0, waited=True)
    assert pacer.rate < before / 2
    assert pacer.wait(now + 0.02) >= 1.9  # paused by the last Retry-After
    # Then the limit is back: within five minutes the rate is back near it.
    run = drive(pacer, Bucket(50.0, 50.0), 300.0, start=now + 2.0)
    assert pacer.rate >= 0.85 * 50.0, pacer.snapshot(now)
    assert run.refused / (run.served + run.refused) <= 0.02


def test_retry_after_above_the_back_off_cap_is_honoured() -> None:
    pacer = Pacer(PacingLimits(initial_rate=10.0), 0.0)
    pacer.start(0.0)
    pacer.finish(0.1, Outcome.REFUSED, 0.1, 600.0, waited=True)
    assert pacer.wait(0.1) == pytest.approx(600.0)
    assert pacer.wait(599.0) > 0
    assert pacer.wait(600.2) == 0
    # Nonsense is bounded.
    pacer.start(601.0)
    pacer.finish(601.0, Outcome.REFUSED, 0.0, 1e12, waited=True)
    assert pacer.wait(601.0) == pytest.approx(MAX_RETRY_AFTER)


def test_timeouts_cut_the_rate() -> None:
    pacer = Pacer(PacingLimits(initial_rate=8.0), 0.0)
    pacer.start(0.0)
    pacer.finish(30.0, Outcome.FAILED, 30.0, waited=True)
    assert pacer.rate == pytest.approx(8.0 * 0.8)
    assert pacer.failed == 1


def test_slow_answers_stop_the_growth() -> None:
    pacer = Pacer(PacingLimits(initial_rate=4.0), 0.0)
    drive(pacer, None, 2.0, latency=0.01)
    fast_rate = pacer.rate
    drive(pacer, None, 5.0, latency=2.0, start=2.0)  # 200 x the best latency
    assert pacer.rate <= fast_rate + 1


@given(
    limit=st.floats(1.0, 200.0),
    burst_share=st.floats(0.02, 1.0),
    initial=st.floats(0.5, 4.0),  # the configured start: 2 by default
)
@settings(max_examples=40, deadline=None)
def test_refusals_stay_rare_for_any_bucket(
    limit: float, burst_share: float, initial: float
) -> None:
    pacer = Pacer(PacingLimits(initial_rate=initial, min_rate=min(0.1, initial)), 0.0)
    run = drive(pacer, Bucket(limit, max(1.0, limit * burst_share)), 200.0)
    assert run.refused / (run.served + run.refused) <= 0.05
    assert run.served / run.seconds >= 0.75 * limit


def test_a_low_limit_with_a_large_burst_is_not_taken_for_a_flaky_front_end() -> None:
    """Found by the property test above: 3.9 requests/s with a burst of 3.8. What slow start
    was served on the burst allowance made the cuts after it look useless (served fell with
    the rate), so they were undone to 13/s and held there for a minute: 8 % refused."""
    pacer = Pacer(PacingLimits(initial_rate=1.75, min_rate=0.1), 0.0)
    run = drive(pacer, Bucket(3.875, 3.875 * 0.9765625), 200.0)
    assert run.refused / (run.served + run.refused) <= 0.05, (run.served, run.refused)
    assert run.served / run.seconds >= 0.75 * 3.875


def test_a_flaky_operator_does_not_bring_the_rate_to_a_standstill() -> None:
    """A quarter of the answers refused and some failed, whatever the rate: after a few cuts
    that do not make refusals rarer, the rate is held, not cut towards zero."""
    import random

    rng = random.Random(3)
    pacer = Pacer(PacingLimits(initial_rate=20.0), 0.0)
    now = 0.0
    for _ in range(2000):
        now += max(pacer.wait(now), 0.001)
        pacer.start(now)
        roll = rng.random()
        outcome = Outcome.REFUSED if roll < 0.25 else Outcome.FAILED if roll < 0.3 else Outcome.OK
        pacer.finish(
            now + 0.01, outcome, 0.01, 0.0 if outcome is Outcome.REFUSED else None, waited=True
        )
    assert pacer.rate >= 2.0, pacer.snapshot(now)


def test_outcomes_of_statuses() -> None:
    assert outcome_of(200) is Outcome.OK
    assert outcome_of(429) is Outcome.REFUSED
    assert outcome_of(503) is Outcome.REFUSED
    assert outcome_of(None, timed_out=True) is Outcome.FAILED
    assert outcome_of(None) is Outcome.OTHER  # a closed connection
    assert outcome_of(502) is Outcome.OTHER
    assert outcome_of(404) is Outcome.OTHER


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        PacingLimits(max_in_flight=0)
    with pytest.raises(ValueError):
        PacingLimits(initial_rate=1.0, min_rate=2.0)
