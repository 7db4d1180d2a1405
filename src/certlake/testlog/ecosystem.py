"""Which logs a test log server hosts, who operates them, and how entries are spread. Pure.

The real ecosystem is ~40 usable logs over ~8 operators, a mix of RFC 6962 and static-ct-api
logs, growing by ~1–2 k entries per second in total. `ecosystem_logs(n, operators=k)` builds
such a set, stable for the same arguments:

* log `i` (0-based) belongs to operator `i mod k` (round-robin), named
  `operator_name(i mod k)`;
* log `i` is static-ct when ceil((i+1)·share) > ceil(i·share), so the static logs are spread
  evenly, ceil(n·share) of them, log 0 first: even a two-log set has both kinds. With the
  default share of 1/4 that is every fourth log (0, 4, 8, …), roughly today's share of
  static-ct logs among usable ones. When k is a multiple of 4 too, whole operators run only
  static-ct logs, as some real operators do;
* the name is the kind and the index, zero-padded: `static-00`, `rfc6962-01`, ….
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from certlake.ct.entry import LogKind
from certlake.testlog.loglist import OPERATOR, OPERATOR_EMAIL

DEFAULT_STATIC_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """An operator as the log list names it; `rate_limit` is its requests per second per client
    address, shared by all its logs (None: the server's `rate_limit`)."""

    name: str
    rate_limit: float | None = None
    email: str = OPERATOR_EMAIL


@dataclass(frozen=True, slots=True)
class LogConfig:
    name: str
    kind: LogKind
    operator: str = OPERATOR


DEFAULT_LOGS = (LogConfig("rfc6962", LogKind.RFC6962), LogConfig("static", LogKind.STATIC))


def operator_name(index: int) -> str:
    return f"certlake test operator {index}"


def ecosystem_operators(count: int, rate_limit: float | None = None) -> tuple[OperatorConfig, ...]:
    """The operators `ecosystem_logs(…, operators=count)` names, each with its own email."""
    return tuple(
        OperatorConfig(operator_name(i), rate_limit, f"operator{i}@certlake.invalid")
        for i in range(count)
    )


def _is_static(index: int, share: Fraction) -> bool:
    return math.ceil((index + 1) * share) > math.ceil(index * share)


def ecosystem_logs(
    count: int, operators: int = 1, static_share: float = DEFAULT_STATIC_SHARE
) -> tuple[LogConfig, ...]:
    """`count` logs over `operators` operators (module docstring)."""
    if count < 1 or not 1 <= operators <= count:
        raise ValueError(f"need 1 <= operators <= logs, got {operators} operators, {count} logs")
    if not 0.0 <= static_share <= 1.0:
        raise ValueError(f"static share must be within 0..1, got {static_share}")
    # The decimal the caller wrote, exactly: 10 × 0.7 must be 7, not a hair above it.
    share = Fraction(str(static_share))
    width = max(2, len(str(count - 1)))
    out = []
    for i in range(count):
        static = _is_static(i, share)
        name = f"{'static' if static else 'rfc6962'}-{i:0{width}d}"
        kind = LogKind.STATIC if static else LogKind.RFC6962
        out.append(LogConfig(name, kind, operator_name(i % operators)))
    return tuple(out)


def resolve_operators(
    logs: Sequence[LogConfig], operators: Sequence[OperatorConfig], rate_limit: float | None
) -> dict[str, OperatorConfig]:
    """Every operator the logs name, in order of first mention, with its effective limit.

    An operator the logs name but `operators` does not gets the defaults; `rate_limit` is the
    limit of each operator that has none of its own.
    """
    given = {op.name: op for op in operators}
    if len(given) != len(operators):
        raise ValueError(f"operator names must be unique: {[op.name for op in operators]}")
    unused = set(given) - {log.operator for log in logs}
    if unused:
        raise ValueError(f"operators without logs: {sorted(unused)}")
    out: dict[str, OperatorConfig] = {}
    for log in logs:
        if log.operator not in out:
            op = given.get(log.operator, OperatorConfig(log.operator))
            limit = rate_limit if op.rate_limit is None else op.rate_limit
            if limit is not None and not limit > 0:
                raise ValueError(f"operator {op.name!r}: rate limit must be > 0, got {limit}")
            out[op.name] = OperatorConfig(op.name, limit, op.email)
    return out


@dataclass(slots=True)
class Pace:
    """Entries due at a steady `rate` per second: how many to add now, `elapsed` seconds in."""

    rate: float
    given: int = 0

    def due(self, elapsed: float) -> int:
        n = max(0, int(elapsed * self.rate) - self.given)
        self.given += n
        return n


def spread(count: int, offset: int, logs: int) -> list[range]:
    """Round-robin: which of `count` new entries each of `logs` logs gets, as positions.

    Entry `p` of the batch goes to log `(offset + p) mod logs`; `offset` is the number handed
    out before, so over time every log gets the same share whatever the batch sizes.
    """
    return [range((k - offset) % logs, count, logs) for k in range(logs)]
