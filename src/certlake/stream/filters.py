"""Per-connection stream filters: which certificates one client wants.

Query syntax, the same on every WebSocket path and on `/sse`:

    domain=example.com         that exact name
    domain=*.example.com       example.com itself and every name under it
    domain=re:<regex>          a regular expression, searched (unanchored) in each name
    issuer=<text>              a substring of the issuer's aggregated name
    log=<text>                 a substring of the log's URL or of its name
    update_type=X509LogEntry   or PrecertLogEntry

A certificate matches a key when any of that key's values matches (OR), and a filter when it
matches every key given (AND). A key may be repeated (`domain=a.com&domain=*.b.org`); `domain`
and `update_type` also take comma-separated values. A `re:` value is always taken whole, commas
included (`{1,3}`), and so are `issuer` and `log` values (issuer names contain commas:
"GoDaddy.com, Inc."). A domain matches when any name in the certificate's `all_domains` does.

Everything is case-insensitive, as DNS is: names and the issuer and log texts are compared in
lower case, and a regex is applied to the lower-cased name (with `re.IGNORECASE` when the
pattern itself has capitals). Non-ASCII domain values are converted to their IDNA (punycode)
form, which is how certificates carry them.

Cost. Filters run in the producer's loop, before anything is queued. What every filter would
compute from a message (lower-cased names, each name's parent domains, the lower-cased issuer
and log) is derived once per message, in `Facts`, shared through a `FactsCache`. Exact and `*.`
domain values become `Selection.keys`, by which the hub indexes clients: per message it looks up
the message's few keys, so a client with such a filter costs nothing for the messages it does
not want. Anything else (regexes, issuer, log, update type) is a predicate called once per
message per client that the keys let through (or per message, without domain keys).

Regexes are the dangerous part: Python's `re` backtracks and has no timeout, so a pattern like
`(a+)+$` could hold the loop for minutes on one name. A pattern is accepted only if a structural
bound on its backtracking (`regex_cost`) is small: nested repetition (`(a+)+`), alternation or
any other choice inside an unbounded repetition (`(a|aa)*`), backreferences and conditionals are
refused outright, and the product of the choices along the pattern — each `*`/`+` counts as many
choices as a name has characters — times the number of starting positions must stay under
`REGEX_BUDGET`. Names longer than `MAX_NAME` (253, DNS's limit) are never searched, which keeps
that bound true. In practice one `.*`-like repetition is fine (`re:paypal.*login`), two are fine
when anchored at the start (`re:^[a-z-]+paypal[a-z-]*\\.`), and more are refused with a message
saying why.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

FILTER_KEYS = frozenset({"domain", "issuer", "log", "update_type"})
UPDATE_TYPES = {"x509logentry": "X509LogEntry", "precertlogentry": "PrecertLogEntry"}

MAX_NAME = 253  # longest DNS name; longer "names" are never searched by a regex
MAX_PATTERN = 256  # characters of one regex
MAX_PATTERNS = 16  # regexes per connection
MAX_VALUE = 1024  # characters of any other value
# Backtracking paths allowed per name, over all of a connection's regexes. On the 2-vCPU
# reference machine the most expensive patterns that fit take up to ~1 ms on a hostile
# 253-character name (`^a?a?…a?aa…ax`), typical ones a few µs on real names.
REGEX_BUDGET = 1 << 16

REGEX_PREFIX = "re:"


class FilterError(ValueError):
    """A filter in a stream request's query string is malformed or too costly."""


class Selectable(Protocol):
    """The message fields filters read (`certs.message.CertMessage` has them)."""

    @property
    def all_domains(self) -> list[str]: ...

    @property
    def issuer_aggregated(self) -> str: ...

    @property
    def source_url(self) -> str: ...

    @property
    def source_name(self) -> str: ...

    @property
    def update_type(self) -> str: ...


# --- what filters derive from a message, once ---------------------------------------------------

EXACT = "="  # a domain value never holds one, so `=name` keys never meet suffix keys


class Facts:
    """Lower-cased views of one message, computed once and read by every client's filter.

    `keys` holds each name prefixed with `=` (for exact filters) and each name and each of its
    parent domains as is (for `*.` filters: `a.b.com` gives a.b.com, b.com, com), so that all
    of a client's exact and suffix values are checked with one `isdisjoint`.
    """

    __slots__ = ("issuer", "keys", "log", "message", "regex_names")

    def __init__(self, message: Selectable) -> None:
        self.message = message
        names = {n.lower() for n in message.all_domains}
        keys = {EXACT + n for n in names}
        for name in names:
            while True:
                keys.add(name)
                dot = name.find(".")
                if dot < 0:
                    break
                name = name[dot + 1 :]
        self.keys = keys
        self.regex_names = tuple(n for n in names if len(n) <= MAX_NAME)
        self.issuer = message.issuer_aggregated.lower()
        # A newline cannot occur in a filter value, so no match spans the two texts.
        self.log = f"{message.source_url.lower()}\n{message.source_name.lower()}"


class FactsCache:
    """The facts of the message being fanned out, shared by every filter compiled with it.

    The hub offers one message to all clients before the next, so a cache of one is enough:
    the first filter computes, the other clients' filters reuse.
    """

    __slots__ = ("_facts",)

    def __init__(self) -> None:
        self._facts: Facts | None = None

    def of(self, message: Selectable) -> Facts:
        facts = self._facts
        if facts is None or facts.message is not message:
            facts = self._facts = Facts(message)
        return facts


# --- the compiled filter ------------------------------------------------------------------------

Matcher = Callable[[Selectable], bool]
"""A predicate over messages: True for one the client wants."""


@dataclass(frozen=True, slots=True)
class Selection:
    """A compiled filter, in the two parts the hub applies.

    `keys`, when set: a message is offered only if its `Facts.keys` share one. The hub indexes
    clients by these, so exact and `*.` domain filters cost a few dict lookups per message
    however many clients hold them, and nothing at all for a client they do not select.
    `accepts`, when set: an offered message must pass it too (the other keys, or the whole
    filter when it has regexes, which no index can serve).
    """

    keys: frozenset[str] | None
    accepts: Matcher | None
    cache: FactsCache

    def __call__(self, message: Selectable) -> bool:
        """The whole filter."""
        if self.keys is not None and self.keys.isdisjoint(self.cache.of(message).keys):
            return False
        return self.accepts is None or self.accepts(message)


def compile_filter(pairs: Iterable[tuple[str, str]], cache: FactsCache) -> Selection | None:
    """The filter for a request's filter parameters (keys of `FILTER_KEYS`), or None when there
    are none (the client wants everything). Raises `FilterError` on anything malformed."""
    wanted: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    issuers: list[str] = []
    logs: list[str] = []
    update_types: set[str] = set()
    budget = REGEX_BUDGET
    seen = False
    for key, value in pairs:
        seen = True
        if key == "domain":
            if value.startswith(REGEX_PREFIX):
                pattern, cost = compile_regex(value[len(REGEX_PREFIX) :])
                if any(p.pattern == pattern.pattern for p in patterns):
                    continue
                budget -= cost
                if budget < 0:
                    raise FilterError(
                        f"domain={value!r}: the regexes of one connection together exceed the "
                        "backtracking budget; combine them or use exact and '*.' filters"
                    )
                patterns.append(pattern)
                if len(patterns) > MAX_PATTERNS:
                    raise FilterError(f"at most {MAX_PATTERNS} regex domain filters")
                continue
            for item in _split(key, value):
                if item.startswith("*."):
                    wanted.add(_domain(key, item[2:], value))
                else:
                    wanted.add(EXACT + _domain(key, item, value))
        elif key == "update_type":
            for item in _split(key, value):
                known = UPDATE_TYPES.get(item.lower())
                if known is None:
                    raise FilterError(
                        f"update_type={item!r}: expected X509LogEntry or PrecertLogEntry"
                    )
                update_types.add(known)
        elif key in ("issuer", "log"):
            (issuers if key == "issuer" else logs).append(_text(key, value).lower())
        else:
            raise FilterError(f"{key!r} is not a filter; filters are {sorted(FILTER_KEYS)}")
    if not seen:
        return None
    rest = (tuple(issuers), tuple(logs), frozenset(update_types))
    if wanted and not patterns:
        accepts = _matcher(frozenset(), (), *rest, cache) if any(rest) else None
        return Selection(frozenset(wanted), accepts, cache)
    return Selection(None, _matcher(frozenset(wanted), tuple(patterns), *rest, cache), cache)


def _matcher(
    wanted: frozenset[str],
    patterns: tuple[re.Pattern[str], ...],
    issuers: tuple[str, ...],
    logs: tuple[str, ...],
    update_types: frozenset[str],
    cache: FactsCache,
) -> Matcher:
    """A closure doing only the checks this filter has: it runs once per message per filtered
    client, where every attribute lookup and call shows."""
    of = cache.of
    tests: list[Callable[[Facts], bool]] = []
    if wanted or patterns:
        searches = tuple(p.search for p in patterns)

        def domain(f: Facts) -> bool:
            if not wanted.isdisjoint(f.keys):
                return True
            for name in f.regex_names:
                for search in searches:
                    if search(name) is not None:
                        return True
            return False

        tests.append(domain)
    if issuers:
        tests.append(lambda f: any(s in f.issuer for s in issuers))
    if logs:
        tests.append(lambda f: any(s in f.log for s in logs))
    if not tests:
        return lambda m: m.update_type in update_types
    if not update_types and len(tests) == 1:
        (test,) = tests
        return lambda m: test(of(m))

    def matches(m: Selectable) -> bool:
        if update_types and m.update_type not in update_types:
            return False
        f = of(m)
        return all(test(f) for test in tests)

    return matches


def _text(key: str, value: str) -> str:
    if not value:
        raise FilterError(f"{key}= needs a value")
    if len(value) > MAX_VALUE:
        raise FilterError(f"{key}=: values are limited to {MAX_VALUE} characters")
    if not value.isprintable():
        raise FilterError(f"{key}={value!r}: control characters are not allowed")
    return value


def _split(key: str, value: str) -> list[str]:
    items = [item.strip() for item in _text(key, value).split(",")]
    if not all(items):
        raise FilterError(f"{key}={value!r}: empty value in a comma-separated list")
    return items


def _domain(key: str, name: str, value: str) -> str:
    """A lower-cased ASCII domain from a filter value; `value` is what the client wrote."""
    if not name:
        raise FilterError(f"{key}={value!r}: '*.' needs a domain after it")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise FilterError(f"{key}={value!r}: not a valid internationalized name: {e}") from None
    name = name.lower()
    if not set(name) <= _DOMAIN_CHARS:
        raise FilterError(
            f"{key}={value!r}: a domain is letters, digits, '-', '_' and '.', with '*' only as "
            "a leading '*.' label (use re: for patterns)"
        )
    if len(name) > MAX_NAME:
        raise FilterError(f"{key}={value!r}: longer than a DNS name can be ({MAX_NAME})")
    return name


_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


# --- regex cost ---------------------------------------------------------------------------------


class _Parser(Protocol):
    MAXREPEAT: int

    def parse(self, str: str, flags: int = 0) -> Any: ...


# The parser `re` compiles with (private, but stable since 3.11); `sre_parse` is its deprecated
# public alias and warns on import.
_parser = cast(_Parser, importlib.import_module("re._parser"))

_SINGLE = frozenset({"LITERAL", "NOT_LITERAL", "ANY", "IN", "AT", "CATEGORY"})
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_START = frozenset({"AT_BEGINNING", "AT_BEGINNING_STRING"})


def compile_regex(pattern: str) -> tuple[re.Pattern[str], int]:
    """The compiled pattern for a `re:` domain filter and its cost (see `regex_cost`)."""
    if not pattern:
        raise FilterError("domain=re: needs a pattern")
    if len(pattern) > MAX_PATTERN:
        raise FilterError(f"domain=re:…: patterns are limited to {MAX_PATTERN} characters")
    # Names are lower case; IGNORECASE (which makes matching several times slower) only matters
    # when the pattern has capitals of its own.
    flags = re.IGNORECASE if any(c.isupper() for c in pattern) else 0
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        raise FilterError(f"domain=re:{pattern}: invalid regular expression: {e}") from None
    try:
        cost = regex_cost(pattern)
    except _TooCostly as e:
        raise FilterError(f"domain=re:{pattern}: refused, {e}") from None
    if cost > REGEX_BUDGET:
        raise FilterError(
            f"domain=re:{pattern}: refused, it can backtrack through about {cost:,} paths per "
            f"name (the limit is {REGEX_BUDGET:,}); anchor it with '^', or use fewer "
            "'*'/'+' repetitions"
        )
    return compiled, cost


class _TooCostly(Exception):
    """A construct the cost bound refuses outright."""


def regex_cost(pattern: str) -> int:
    """An upper bound on the backtracking paths of one search over a name of `MAX_NAME`
    characters: starting positions (1 when anchored with `^`, else `MAX_NAME`) times the product
    of the choices along the pattern. A repetition of a choice-free body offers one choice per
    repeat count, capped at the name length; alternatives add up. Raises `_TooCostly` for what
    can backtrack exponentially whatever the budget. The pattern must compile."""
    parsed = _parser.parse(pattern)
    items = list(parsed)
    anchored = bool(items) and str(items[0][0]) == "AT" and str(items[0][1]) in _START
    return (1 if anchored else MAX_NAME) * _sequence(items)


def _sequence(items: Sequence[tuple[Any, Any]]) -> int:
    total = 1
    for op, av in items:
        total *= _item(str(op), av)
        # Past the budget the exact figure no longer matters, only that it is too big.
        total = min(total, REGEX_BUDGET * MAX_NAME + 1)
    return total


def _item(op: str, av: Any) -> int:
    if op in _SINGLE:
        return 1
    if op == "SUBPATTERN":
        return _sequence(list(av[3]))
    if op == "ATOMIC_GROUP":
        return _sequence(list(av))
    if op in ("ASSERT", "ASSERT_NOT"):
        return _sequence(list(av[1]))
    if op == "BRANCH":
        return sum(_sequence(list(branch)) for branch in av[1])
    if op in _REPEATS:
        low, high, body = av
        inner = _sequence(list(body))
        unbounded = high == _parser.MAXREPEAT
        if inner > 1:
            if unbounded:
                raise _TooCostly(
                    "a repeated part that can itself match in more than one way (nested "
                    "repetition like '(a+)+' or alternation like '(a|aa)*') can take "
                    "exponential time; use a character class or a single repetition"
                )
            return sum(inner**k for k in range(int(low), min(int(high), MAX_NAME) + 1))
        top = MAX_NAME if unbounded else min(int(high), MAX_NAME)
        return max(1, top - int(low) + 1)
    if op in ("GROUPREF", "GROUPREF_EXISTS"):
        raise _TooCostly("backreferences and conditional groups are not supported")
    raise _TooCostly(f"the construct {op} is not supported")
