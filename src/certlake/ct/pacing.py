"""How fast to ask one log operator: an adaptive request rate learned from its answers (pure).

Real operators limit requests per client address and answer 429 (sometimes 503) with a
`Retry-After` once a client goes over; the limits are not published, differ by two orders of
magnitude between operators, and change. A fixed spacing is either far too slow (an operator
whose logs answer 32 entries at a time) or hammers a strict one, so each operator gets a
controller that finds its limit the way TCP finds a path's capacity:

- **slow start**: until the first refusal the rate grows per clean answer that had to wait for
  its slot, by two requests/s or a quarter of itself, whichever is more (from 2 requests/s to
  300 in about a second of demand), and a raised rate applies to the slot already waited for: a
  backfill is not held at the starting pace for its first seconds;
- **refusal** (429, 503): the operator is paused until its `Retry-After`, exactly. The *learned
  limit* becomes what the operator served since the previous refusal (a limiter that refused
  us twice was saturated in between, so that is its rate, give or take its burst allowance);
  after the first refusal, when nothing was measured yet, the rate that was refused less 10 %
  (25 % when refused again right after the pause). At most one cut per second, and none for
  answers to requests sent before the last cut: they say nothing about the new rate;
- **a flaky front end** is not a limiter: when several cuts halved the rate and what the
  operator served fell with it (a limiter goes on serving its limit), the cuts are undone and
  the rate held for a while, so random refusals cannot creep the rate towards zero; an operator
  that serves nothing at all is left to the cuts;
- **timeouts** cut the rate by 20 %; closed connections and 502/504 do not touch it (one log
  being down must not slow its operator's other logs: the fetch loop's back-off retries them);
- **steady state**: the rate goes back to a margin under the learned limit within a few answers
  and holds there; only after `_PROBE_AFTER` seconds without a refusal does it probe above,
  slowly, so that a raised limit is found while refused requests stay a tiny share.

The rate only grows while it is the constraint (a request waited for its slot): a client limited
by its own CPU or by `max_in_flight` does not inflate a rate it never uses. Answers that slow down
to several times the operator's best latency stop the growth too — the log is struggling.

No I/O and no clock: every method takes `now` (seconds, monotonic), so the shell
(`ct/client/http.OperatorBudget`) and the unit tests drive it with real or fake time.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from certlake.ct.backoff import MAX_RETRY_AFTER

# Slow start: at least this much per clean answer that waited for its slot (the rate doubles
# with each of the first answers) ...
_SLOW_START_STEP = 2.0
# ... or this share of the rate, so that growth keeps pace with the answers it is fed by: from
# the default 2 requests/s to 300 in about a second. Overshooting a limiter costs little: at most
# `max_in_flight` requests are out when its first refusal arrives.
_SLOW_START_GROWTH = 0.25
# After a refusal, come back to this share of the learned limit ...
_MARGIN = 0.97
# ... starting from this share, so the operator's bucket refills while we return.
_DROP = 0.9
# Seconds without a refusal before probing above the learned limit, and how fast the probe
# climbs: this much per answer, so 5 % of the rate per second. A limit that is only a guess (the
# first refusal, nothing measured yet) is probed sooner; a limit that probes keep confirming is
# probed less and less often.
_PROBE_AFTER = 60.0
_PROBE_AFTER_GUESS = 10.0
# A probe that finds nothing more doubles the wait before the next one, up to this.
_PROBE_AFTER_MAX = 600.0
_PROBE_STEP = 0.05
# When the last cuts (at least `_CUTS_BEFORE_HOLDING`, at most `_CUTS_KEPT`) at least halved
# the rate and the rate the operator served (answers per second over `_SERVED_WINDOW`) fell with
# it, but not to nothing, cutting is not helping: a limiter serves its limit whatever we ask
# above it, a flaky front end serves a share of what we ask, an operator that is down serves
# nothing (and is left alone). The cuts are then undone and the rate held.
_CUTS_BEFORE_HOLDING = 3
_CUTS_KEPT = 8
_HOLD_AFTER_CUT_TO = 0.5
_HOLD_SERVED_FELL_TO = 0.7
_HOLD_SERVED_ABOVE = 0.2
_SERVED_WINDOW = 2.0
_HOLD_MIN_ANSWERS = 10
_SERVED_KEEP = 10_000  # bounds the answer times kept, whatever the rate
# Once the cuts are undone, the rate is held this long; then cuts resume until the evidence is
# seen again, so against a flaky front end the rate stays within a factor of two.
_HOLD_FOR = 60.0
# At most one cut per this many seconds: a cut needs that long to show its effect (refusals
# come with a Retry-After of a second or more, so a limiter's next refusal is later anyway).
_CUT_SPACING = 1.0
# Seconds of answers needed before what the operator served counts as its rate, and the cut
# when a refusal comes sooner than that.
_MEASURE_MIN = 1.0
_QUICK_DROP = 0.75
# A timeout cuts the rate a little: the operator (or the path to it) may be overloaded.
_FAILURE_CUT = 0.8
# Latency worse than this many times the best recent latency (plus a floor for jitter) holds
# the rate where it is.
_SLOW_FACTOR = 4.0
_SLOW_FLOOR = 0.25


class Outcome(enum.Enum):
    OK = "ok"  # a usable answer
    REFUSED = "refused"  # 429, or 503 (operators use both for "too many requests")
    FAILED = "failed"  # no answer in time: the operator, or the path to it, is overloaded
    # Says nothing about the operator's load: 404, a malformed body, a 502/504 or a closed
    # connection (one log's front end or the path, not a reason to slow the operator's other
    # logs; the fetch loop's back-off retries it).
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class PacingLimits:
    """What the configuration allows for one operator."""

    initial_rate: float = 2.0  # requests/s to start at
    max_rate: float | None = None  # requests/s never to exceed; None: learn it
    max_in_flight: int = 4  # concurrent requests to the operator, all its logs together
    min_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 0 < self.min_rate <= self.initial_rate:
            raise ValueError("rates must satisfy 0 < min_rate <= initial_rate")
        if self.max_rate is not None and self.max_rate < self.min_rate:
            raise ValueError("max_rate must be at least min_rate")


@dataclass(frozen=True, slots=True)
class PacerSnapshot:
    """What /api/logs and /metrics show of one operator."""

    rate: float
    learned_limit: float | None
    in_flight: int
    paused_for: float
    requests: int
    refused: int
    failed: int


class Pacer:
    """The request rate of one operator. Call `wait(now)` until it is 0, then `start(now)`;
    after the answer, `finish(now, outcome, latency, retry_after, waited=...)` with `waited`
    true when `wait` was above 0 for that request. The caller
    bounds concurrency itself (`limits.max_in_flight`): a count is not a clock."""

    def __init__(self, limits: PacingLimits, now: float) -> None:
        self.limits = limits
        self.rate = self._clamp(limits.initial_rate)
        self.learned_limit: float | None = None
        self.in_flight = 0
        self.requests = 0
        self.refused = 0
        self.failed = 0
        self._next_start = now
        self._last_start = -float("inf")
        self._paused_until = now
        self._refused_before = False
        self._first_refused_at = -float("inf")
        self._last_cut = -float("inf")  # when the rate was last cut (refusal or failure)
        self._limit_is_guess = True
        self._probe_after = _PROBE_AFTER
        self._probing_from: float | None = None  # learned limit when the current probe began
        self._clean_since = now  # last refusal or failure
        self._since = now  # served counts from here (the end of the last refusal's pause)
        self._served_since = 0
        self._best_latency: float | None = None
        # The rate and the served rate before each of the last cuts, and when recent answers
        # came: together they tell a limiter from a flaky front end.
        self._cuts: deque[tuple[float, float]] = deque(maxlen=_CUTS_KEPT)
        self._ok_times: deque[float] = deque()
        self._holding_until = -float("inf")

    # --- scheduling -----------------------------------------------------------------------

    def wait(self, now: float) -> float:
        """Seconds until the next request may start (0: now)."""
        return max(0.0, self._next_start - now, self._paused_until - now)

    def start(self, now: float) -> None:
        """A request starts now: its slot is taken and the next one is 1/rate later."""
        self._last_start = max(now, self._next_start)
        self._next_start = self._last_start + 1.0 / self.rate
        self.in_flight += 1
        self.requests += 1

    # --- feedback -------------------------------------------------------------------------

    def finish(
        self,
        now: float,
        outcome: Outcome,
        latency: float,
        retry_after: float | None = None,
        *,
        waited: bool,
    ) -> None:
        """The answer to a started request arrived after `latency` seconds; `waited` says
        whether `wait` held that request back (the rate was the constraint)."""
        self.in_flight = max(0, self.in_flight - 1)
        if outcome is Outcome.OK:
            self._on_ok(now, latency, waited)
        elif outcome is Outcome.REFUSED:
            if retry_after is not None:
                self.pause(now, retry_after)
            if now - latency < self._last_cut or now - self._last_cut < _CUT_SPACING:
                # Sent before the last cut, at the old rate, or too soon after it for the cut to
                # have shown its effect: this refusal says nothing new.
                self.refused += 1
            elif self._cuts_do_not_help(now):
                # Refusals as frequent after several cuts as before: they are not about our
                # rate (a flaky front end, not a limiter). Waiting as told is all that helps;
                # cutting further would only creep towards a standstill.
                self.refused += 1
            else:
                self._cut(now)
                self._on_refused(now, retry_after)
        elif outcome is Outcome.FAILED:
            if retry_after is not None:
                self.pause(now, retry_after)
            self.failed += 1
            if (
                now - latency >= self._last_cut
                and now - self._last_cut >= _CUT_SPACING
                and not self._cuts_do_not_help(now)
            ):
                self._cut(now)
                self.rate = self._clamp(self.rate * _FAILURE_CUT)
                self._last_cut = now
                self._clean_since = now
                self._probing_from = None

    def _cuts_do_not_help(self, now: float) -> bool:
        """The last cuts at least halved the rate, and what the operator served fell with it:
        a limiter goes on serving its rate while we are above it, so these refusals are not
        about our rate (a flaky front end) and further cuts would only creep towards zero."""
        if now < self._holding_until:
            return True
        if len(self._cuts) < _CUTS_BEFORE_HOLDING:
            return False
        first_rate, first_served = self._cuts[0]
        flaky = (
            first_served * _SERVED_WINDOW >= _HOLD_MIN_ANSWERS  # enough answers to compare
            and self.rate <= _HOLD_AFTER_CUT_TO * first_rate
            and _HOLD_SERVED_ABOVE * first_served
            <= self._served_rate(now)
            <= _HOLD_SERVED_FELL_TO * first_served
        )
        if flaky:
            # The cuts did not help: undo them, and hold.
            self.rate = self._clamp(first_rate)
            self.learned_limit = None if self.learned_limit is None else self.rate
            self._holding_until = now + _HOLD_FOR
            self._cuts.clear()  # holding again later takes fresh evidence
        return flaky

    def _cut(self, now: float) -> None:
        """Book a cut of the rate (called before the rate changes). Not the first refusal's, nor
        any whose served rate counts answers from before it: slow start's last rate, and what it
        served on the operator's burst allowance, are no level the operator ever sustained, so
        undoing later cuts back to them would hammer it (a 3.9/s limit with a burst of 3.8 was
        held at 13/s for a minute: 8 % refused)."""
        if self._refused_before and now - _SERVED_WINDOW >= self._first_refused_at:
            self._cuts.append((self.rate, self._served_rate(now)))

    def _served_rate(self, now: float) -> float:
        """Answers per second over the last `_SERVED_WINDOW` seconds."""
        while self._ok_times and self._ok_times[0] <= now - _SERVED_WINDOW:
            self._ok_times.popleft()
        return len(self._ok_times) / _SERVED_WINDOW

    def pause(self, now: float, seconds: float) -> None:
        """No request starts for `seconds` (a Retry-After), whatever the rate."""
        self._paused_until = max(self._paused_until, now + min(seconds, MAX_RETRY_AFTER))

    def _on_ok(self, now: float, latency: float, waited: bool) -> None:
        self._served_since += 1
        self._ok_times.append(now)
        if len(self._ok_times) > _SERVED_KEEP:
            self._ok_times.popleft()
        best = self._best_latency
        self._best_latency = latency if best is None else min(best, latency)
        if latency > _SLOW_FACTOR * self._best_latency + _SLOW_FLOOR or not waited:
            return
        limit = self.learned_limit
        if limit is None:
            # With every slot taken when this answer came, the client is about to be bound by
            # its concurrency, not by the rate: the small step, so that the rate stops near what
            # is used rather than a quarter past it at each answer.
            slots_free = self.in_flight + 1 < self.limits.max_in_flight
            share = self.rate * _SLOW_START_GROWTH if slots_free else 0.0
            self._raise(self.rate + max(_SLOW_START_STEP, share))
            return
        target = limit * _MARGIN
        if self.rate < target:
            # A quarter of the gap per answer: back under the limit within a few answers.
            self.rate = self._clamp(min(target, self.rate + max(0.25, (target - self.rate) / 4)))
        elif now - self._clean_since >= (
            _PROBE_AFTER_GUESS if self._limit_is_guess else self._probe_after
        ):
            if self._probing_from is None:
                self._probing_from = limit
            self.rate = self._clamp(self.rate + _PROBE_STEP)
            if self.rate > limit:
                # Served cleanly above the old limit: it was raised.
                self.learned_limit = self.rate
                self._probe_after = _PROBE_AFTER

    def _raise(self, rate: float) -> None:
        """Grow the rate to `rate`, the slot being waited for included: it was spaced at the old
        rate, which the answers just showed to be too low."""
        self.rate = self._clamp(rate)
        self._next_start = min(self._next_start, self._last_start + 1.0 / self.rate)

    def _on_refused(self, now: float, retry_after: float | None) -> None:
        self.refused += 1
        elapsed = now - self._since
        if not self._refused_before:
            guess, limit = True, self.rate * _DROP
        elif elapsed < _MEASURE_MIN:
            # Refused again right after the pause: too short a stretch to measure anything,
            # and the last guess was clearly too high.
            guess, limit = True, self.rate * _QUICK_DROP
        elif self._probing_from is not None:
            guess = False
            # A slow probe is refused just above the limit (or, against a large burst
            # allowance, further above: the next refusal then measures it).
            limit = max(self._probing_from, self.rate * 0.95)
            self._probe_after = min(_PROBE_AFTER_MAX, self._probe_after * 2)
        else:
            guess, measured = False, self._served_since / elapsed
            limit = min(self.rate, max(measured, self.rate * 0.5))
        self._limit_is_guess = guess
        if not self._refused_before:
            self._first_refused_at = now
        self._refused_before = True
        self._probing_from = None
        self._clean_since = now
        self._last_cut = now
        self.learned_limit = max(self.limits.min_rate, limit)
        self.rate = self._clamp(self.learned_limit * _DROP)
        if retry_after is None:
            # No instruction: leave the operator alone for one slot at the new rate.
            self.pause(now, 1.0 / self.rate)
        self._served_since = 0
        self._since = max(now, self._paused_until)

    def _clamp(self, rate: float) -> float:
        top = self.limits.max_rate
        rate = max(self.limits.min_rate, rate)
        return rate if top is None else min(top, rate)

    def snapshot(self, now: float) -> PacerSnapshot:
        return PacerSnapshot(
            rate=self.rate,
            learned_limit=self.learned_limit,
            in_flight=self.in_flight,
            paused_for=max(0.0, self._paused_until - now),
            requests=self.requests,
            refused=self.refused,
            failed=self.failed,
        )


def outcome_of(status: int | None, *, timed_out: bool = False) -> Outcome:
    """The load signal in an HTTP result (status None: no answer at all)."""
    if status == 200:
        return Outcome.OK
    if status in (429, 503):
        return Outcome.REFUSED
    if timed_out:
        return Outcome.FAILED
    return Outcome.OTHER
