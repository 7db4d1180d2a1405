"""What a search of the archive asks, and its page cursor (pure).

The parameters and their meaning are certstream-server-rust's `GET /api/query/certs`:
- `domain` starting with `*.` is a suffix: `*.example.com` finds every name ending in
  `.example.com` (not `example.com` itself); with a `.` otherwise, an exact name; without a `.`,
  a substring of any name (`paypal`).
- `issuer` is a substring of `issuer_aggregated`.
- `from` and `to` (`YYYY-MM-DD`, inclusive) bound `seen_date`.
At least one is required. Unlike the fork, every comparison ignores case in all three domain
modes (DNS names are case-insensitive; the fork compares exact names case-sensitively against a
lower-cased query, so `Example.com` in a certificate could never be found).

Results are ordered by `cert_index`, as the fork's, then by `source_url`: the fork's cursor
carries only the last `cert_index`, so a page boundary between two logs' rows with the same index
skips the second. certlake's cursor carries both and the table version the first page read;
the fork's cursors (`{"v", "k"}`) are still accepted and mean what they meant.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeGuard

# Above every character a domain key holds after `.`: the exclusive end of a prefix's range.
_AFTER_DOT: Final = chr(ord(".") + 1)


class QueryError(ValueError):
    """A query that cannot be run as asked (HTTP 400)."""


class DomainMode(Enum):
    EXACT = "exact"
    SUFFIX = "suffix"
    CONTAINS = "contains"


def domain_key(name: str) -> str:
    """The index key of a domain name: lower-cased, labels reversed (`www.Example.com` →
    `com.example.www`), so that every name under a domain shares a prefix of the key."""
    return ".".join(reversed(name.lower().split(".")))


@dataclass(frozen=True, slots=True)
class DomainFilter:
    mode: DomainMode
    text: str  # lower-cased: the name (exact), the suffix with its leading dot, the substring

    @classmethod
    def parse(cls, value: str) -> DomainFilter:
        lowered = value.lower()
        if lowered.startswith("*."):
            return cls(DomainMode.SUFFIX, lowered[1:])
        if "." in lowered:
            return cls(DomainMode.EXACT, lowered)
        return cls(DomainMode.CONTAINS, lowered)

    def matches(self, name: str) -> bool:
        lowered = name.lower()
        if self.mode is DomainMode.EXACT:
            return lowered == self.text
        if self.mode is DomainMode.SUFFIX:
            return lowered.endswith(self.text)
        return self.text in lowered

    def key_range(self) -> tuple[str, str] | None:
        """The range `[low, high)` of index keys whose names match, or None (a substring is no
        range of keys; a label-wise reversal keeps a substring without a `.` whole, though, so
        `key_substring` finds it in the keys)."""
        if self.mode is DomainMode.EXACT:
            key = domain_key(self.text)
            return key, key + "\0"
        if self.mode is DomainMode.SUFFIX:
            # `x.example.com` ends with `.example.com` exactly when its key starts with
            # `com.example.`: the labels after the suffix's dot, reversed, then a dot.
            prefix = domain_key(self.text[1:]) + "."
            return prefix, prefix[:-1] + _AFTER_DOT
        return None

    def key_substring(self) -> str:
        """For `CONTAINS`: the text to look for in the keys (it holds no `.`)."""
        return self.text


@dataclass(frozen=True, slots=True)
class Query:
    domain: DomainFilter | None = None
    issuer: str | None = None  # lower-cased
    date_from: str | None = None  # YYYY-MM-DD, inclusive
    date_to: str | None = None

    def matches(self, all_domains: Iterable[str | None], issuer: str, seen_date: str) -> bool:
        """Whether an archive row matches: the definition every faster path must agree with."""
        if self.date_from is not None and seen_date < self.date_from:
            return False
        if self.date_to is not None and seen_date > self.date_to:
            return False
        if self.issuer is not None and self.issuer not in issuer.lower():
            return False
        if self.domain is not None:
            domain = self.domain
            return any(name is not None and domain.matches(name) for name in all_domains)
        return True


# A page starts after this (cert_index, source_url); `source_url` None: after every row with
# that index (a cursor of the fork's).
After = tuple[int, str | None]


@dataclass(frozen=True, slots=True)
class Cursor:
    version: int
    after: After

    def encode(self) -> str:
        index, url = self.after
        body = {"v": self.version, "k": index, "u": url}
        return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            body = json.loads(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise QueryError("invalid cursor") from exc
        if not isinstance(body, dict):
            raise QueryError("invalid cursor")
        version, index, url = body.get("v"), body.get("k"), body.get("u")
        if not (_natural(version) and _natural(index)):
            raise QueryError("invalid cursor")
        if url is not None and not isinstance(url, str):
            raise QueryError("invalid cursor")
        return cls(version, (index, url))


def _natural(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class PageRequest:
    query: Query
    limit: int
    cursor: Cursor | None


def _date(name: str, value: str) -> str:
    try:
        if len(value) != 10:
            raise ValueError(value)
        dt.date.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"invalid '{name}' date {value!r}, expected YYYY-MM-DD") from exc
    return value


def parse_request(params: Mapping[str, str], *, default_limit: int, max_limit: int) -> PageRequest:
    """The page a request's parameters ask for; raises `QueryError` (400) for what the fork
    refuses (no filter, a bad date, a bad cursor) and for a limit that is not a number."""
    domain = params.get("domain") or None
    issuer = params.get("issuer") or None
    date_from = params.get("from") or None
    date_to = params.get("to") or None
    if domain is None and issuer is None and date_from is None and date_to is None:
        raise QueryError("at least one filter required: domain, issuer, from or to")
    query = Query(
        domain=None if domain is None else DomainFilter.parse(domain),
        issuer=None if issuer is None else issuer.lower(),
        date_from=None if date_from is None else _date("from", date_from),
        date_to=None if date_to is None else _date("to", date_to),
    )
    raw_limit = params.get("limit")
    if raw_limit is None or raw_limit == "":
        limit = default_limit
    else:
        try:
            limit = int(raw_limit)
        except ValueError as exc:
            raise QueryError(f"invalid limit {raw_limit!r}") from exc
        if limit < 1:
            raise QueryError(f"invalid limit {raw_limit!r}: at least 1")
    cursor_text = params.get("cursor")
    cursor = Cursor.decode(cursor_text) if cursor_text else None
    return PageRequest(query, min(limit, max_limit), cursor)
