"""The test log's fault plan: which request gets which failure. Pure: no I/O, no clock.

A fault is written `KIND[:OPTIONS]`, OPTIONS being comma-separated `key=value` pairs; a bare number
is the probability. The same options are accepted as a JSON object by the admin endpoint.

    429:0.1                      10% of requests get 429 with `Retry-After: 1`
    429:n=3,retry_after=date+2   the next 3 requests get 429, Retry-After an HTTP date 2 s ahead
    503:0.2,endpoint=get-entries 20% of get-entries requests get 503
    502 / 504                    as 503
    400 / 404 / 500:n=20         the next 20 requests get that status, without Retry-After (a
                                 storm of client or server errors)
    short:0.5,to=10              half the get-entries responses of more than 10 entries hold 10
    short:1                      every get-entries response is cut to a random shorter length
    slow:0.1,delay=2             10% of requests wait 2 s before answering
    drop:n=1                     the next request: connection closed before any response
                                 (aiohttp clients resend an idempotent request once after such a
                                 close, so use n=2 to make one aiohttp request fail)
    drop:mode=mid                headers and half the body sent, then the connection is closed
    corrupt:at=5,at=17           entries 5 and 17 are served with garbage certificate bytes
    corrupt:at=5,mode=framing    entry 5 is served truncated (its leaf / its data tile undecodable)
    corrupt:at=5,mode=base64     get-entries: entry 5's leaf_input is not base64
    corrupt:at=5,mode=null       get-entries: entry 5's leaf_input is null
    corrupt:at=5,mode=no-extra   get-entries: entry 5 has no extra_data member
    corrupt:at=5,mode=leaf-index data tiles: entry 5 claims the next leaf_index (framing intact)
    corrupt:at=5,mode=issuer     data tiles: entry 5 names an issuer the log does not serve
    corrupt:at=5,mode=tamper     entry 5 served with other bytes than the tree was built from
                                 (its timestamp +1 ms): valid in every way but its leaf hash
    lie:at=5                     tree heads (get-sth, checkpoint) of more than 5 entries carry the
                                 root of their tree with leaf 5's hash replaced, signed with the
                                 log's key; entries, tiles and proofs stay honest (mode=root; no
                                 at: the head's last leaf is replaced)
    lie:mode=fork,at=5           a split view: at each tree size, the 1st, 3rd, … head request
                                 gets the honest head, the 2nd, 4th, … the lying one
    gzip-bomb:endpoint=data-tile data tiles padded with spaces to 4 GiB and sent gzip-encoded:
                                 about 4 MB on the wire (size=1G for another size; K, M, G)
    huge-body:size=300M          answers padded with spaces to 300 MiB (512 MiB by default) and
                                 sent as they are, without a Content-Length; mode=length announces
                                 it, rate=64K sends 64 KiB per second

The padding of `gzip-bomb` and `huge-body` follows the real answer, so a JSON answer stays valid:
a reader without bounds would take it. Both are made as they are sent, never held whole.

Common options: `p` (probability, default 1), `n` (the fault fires at most n times, then expires),
`endpoint=` and `log=` (repeatable) restrict the requests it applies to (the log list is reached
only when named: `endpoint=log-list`). Endpoint names are `Endpoint` values (get-sth, get-entries,
checkpoint, tile, data-tile, issuer, …). The random choices come from one `random.Random(seed)`,
so a plan replays identically for the same request sequence. A `lie` counts (n) only the heads
it falsifies; `lie:n=1` after honest heads makes one head inconsistent with those before it.
"""

from __future__ import annotations

import enum
import random
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TypeVar


class FaultSpecError(ValueError):
    """A fault description that cannot be understood."""


class FaultKind(enum.Enum):
    RATE_LIMITED = "429"
    UNAVAILABLE = "503"
    BAD_GATEWAY = "502"
    GATEWAY_TIMEOUT = "504"
    SHORT = "short"
    SLOW = "slow"
    DROP = "drop"
    CORRUPT = "corrupt"
    BAD_REQUEST = "400"
    NOT_FOUND = "404"
    SERVER_ERROR = "500"
    GZIP_BOMB = "gzip-bomb"
    HUGE_BODY = "huge-body"
    LIE = "lie"


class Endpoint(enum.Enum):
    """Every read endpoint the test log serves; faults and statistics are keyed by these."""

    GET_STH = "get-sth"
    GET_ENTRIES = "get-entries"
    GET_STH_CONSISTENCY = "get-sth-consistency"
    GET_PROOF_BY_HASH = "get-proof-by-hash"
    GET_ENTRY_AND_PROOF = "get-entry-and-proof"
    GET_ROOTS = "get-roots"
    CHECKPOINT = "checkpoint"
    HASH_TILE = "tile"
    DATA_TILE = "data-tile"
    ISSUER = "issuer"
    LOG_LIST = "log-list"


class DropMode(enum.Enum):
    BEFORE = "before"  # close the connection without sending anything
    MID = "mid"  # send headers and part of the body, then close


class CorruptMode(enum.Enum):
    DER = "der"  # certificate bytes replaced by same-length garbage: framing intact
    FRAMING = "framing"  # entry truncated: the leaf (or the whole data tile) does not decode
    # One get-entries element broken as JSON, the rest of the answer whole (data tiles: served
    # as they are).
    BASE64 = "base64"
    NULL = "null"
    NO_EXTRA = "no-extra"
    # A data tile entry whose leaf_index extension is wrong (get-entries: served as it is).
    LEAF_INDEX = "leaf-index"
    ISSUER = "issuer"  # a data tile entry naming an issuer fingerprint the log never served
    # Served with its timestamp a millisecond later than the one in the log's tree: it decodes
    # and parses as any entry, and only a root computed from the entries tells it apart.
    TAMPER = "tamper"


class LieMode(enum.Enum):
    ROOT = "root"  # every head that has the leaf lies
    FORK = "fork"  # heads alternate honest / lying per request at each tree size


class BodyMode(enum.Enum):
    CHUNKED = "chunked"  # no Content-Length: the reader learns the size only by reading
    LENGTH = "length"  # Content-Length announced up front


_STATUS = {
    FaultKind.RATE_LIMITED: 429,
    FaultKind.UNAVAILABLE: 503,
    FaultKind.BAD_GATEWAY: 502,
    FaultKind.GATEWAY_TIMEOUT: 504,
    FaultKind.BAD_REQUEST: 400,
    FaultKind.NOT_FOUND: 404,
    FaultKind.SERVER_ERROR: 500,
}
_DEFAULT_SIZE = {FaultKind.GZIP_BOMB: 4 << 30, FaultKind.HUGE_BODY: 512 << 20}
_COMMON_KEYS = {"p", "n", "endpoint", "log"}
_KIND_KEYS: dict[FaultKind, set[str]] = {
    FaultKind.RATE_LIMITED: {"retry_after"},
    FaultKind.UNAVAILABLE: {"retry_after"},
    FaultKind.BAD_GATEWAY: set(),
    FaultKind.GATEWAY_TIMEOUT: set(),
    FaultKind.SHORT: {"to"},
    FaultKind.SLOW: {"delay"},
    FaultKind.DROP: {"mode"},
    FaultKind.CORRUPT: {"at", "mode"},
    FaultKind.BAD_REQUEST: set(),
    FaultKind.NOT_FOUND: set(),
    FaultKind.SERVER_ERROR: set(),
    FaultKind.GZIP_BOMB: {"size"},
    FaultKind.HUGE_BODY: {"size", "mode", "rate"},
    FaultKind.LIE: {"at", "mode"},
}
_REPEATABLE = {"endpoint", "log"}
_KIND_REPEATABLE = {FaultKind.CORRUPT: {"at"}}
_MODES: dict[FaultKind, type[enum.Enum]] = {
    FaultKind.DROP: DropMode,
    FaultKind.CORRUPT: CorruptMode,
    FaultKind.HUGE_BODY: BodyMode,
    FaultKind.LIE: LieMode,
}
_M = TypeVar("_M", DropMode, CorruptMode, BodyMode, LieMode)
_HEAD_ENDPOINTS = {Endpoint.GET_STH, Endpoint.CHECKPOINT}
# Skipped by the status loop of `FaultPlan.decide`: `corrupt` is looked up per entry
# (`FaultPlan.corruption`), `lie` rolled once the response is known to carry a head.
_CONTENT_KINDS = {FaultKind.CORRUPT, FaultKind.LIE}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """`Retry-After` as seconds, or as an HTTP date that many seconds after the request."""

    seconds: int
    as_date: bool = False

    def header(self, now: float) -> str:
        return formatdate(now + self.seconds, usegmt=True) if self.as_date else str(self.seconds)

    def spec(self) -> str:
        return f"date+{self.seconds}" if self.as_date else str(self.seconds)


@dataclass(frozen=True, slots=True)
class Oversize:
    """An answer blown up to `size` bytes (`gzip-bomb`, `huge-body`)."""

    size: int
    gzip: bool  # sent gzip-encoded (a bomb) rather than as it is
    declared: bool = False  # Content-Length sent up front
    rate: int | None = None  # bytes per second on the wire; None: as fast as the reader reads


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    p: float = 1.0
    n: int | None = None
    endpoints: frozenset[Endpoint] = frozenset()
    logs: frozenset[str] = frozenset()
    retry_after: RetryAfter | None = None
    delay: float = 1.0
    short_to: int | None = None
    drop_mode: DropMode = DropMode.BEFORE
    corrupt_at: frozenset[int] = frozenset()
    corrupt_mode: CorruptMode = CorruptMode.DER
    size: int | None = None  # gzip-bomb and huge-body: bytes once padded
    body_mode: BodyMode = BodyMode.CHUNKED
    rate: int | None = None
    lie_at: int | None = None  # None: the last leaf of each head
    lie_mode: LieMode = LieMode.ROOT

    def lie_index(self, head_size: int) -> int | None:
        """The leaf a head of `head_size` lies about, or None when it has no such leaf."""
        index = head_size - 1 if self.lie_at is None else self.lie_at
        return index if 0 <= index < head_size else None

    def oversize(self) -> Oversize | None:
        if self.size is None:
            return None
        declared = self.body_mode is BodyMode.LENGTH
        return Oversize(self.size, self.kind is FaultKind.GZIP_BOMB, declared, self.rate)

    def applies(self, endpoint: Endpoint, log: str | None) -> bool:
        # The log list stands in for gstatic.com, which does not rate-limit: faults reach it only
        # when named explicitly.
        if endpoint not in self.endpoints and (self.endpoints or endpoint is Endpoint.LOG_LIST):
            return False
        if self.kind is FaultKind.SHORT and endpoint is not Endpoint.GET_ENTRIES:
            return False
        if self.kind is FaultKind.LIE and endpoint not in _HEAD_ENDPOINTS:
            return False
        return not self.logs or log in self.logs

    def to_json(self) -> dict[str, object]:
        """The option form `from_options` reads back (the admin endpoint's GET answer)."""
        out: dict[str, object] = {"kind": self.kind.value, "p": self.p}
        if self.n is not None:
            out["n"] = self.n
        if self.endpoints:
            out["endpoint"] = sorted(e.value for e in self.endpoints)
        if self.logs:
            out["log"] = sorted(self.logs)
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after.spec()
        if self.kind is FaultKind.SLOW:
            out["delay"] = self.delay
        if self.short_to is not None:
            out["to"] = self.short_to
        if self.kind is FaultKind.DROP:
            out["mode"] = self.drop_mode.value
        if self.kind is FaultKind.CORRUPT:
            out["at"] = sorted(self.corrupt_at)
            out["mode"] = self.corrupt_mode.value
        if self.size is not None:
            out["size"] = self.size
        if self.kind is FaultKind.HUGE_BODY:
            out["mode"] = self.body_mode.value
        if self.rate is not None:
            out["rate"] = self.rate
        if self.kind is FaultKind.LIE:
            out["mode"] = self.lie_mode.value
            if self.lie_at is not None:
                out["at"] = self.lie_at
        return out

    @classmethod
    def from_spec(cls, spec: str) -> Fault:
        """Parse `KIND[:OPTIONS]` (module docstring)."""
        kind, _, rest = spec.strip().partition(":")
        options: dict[str, list[str]] = {}
        for token in filter(None, (t.strip() for t in rest.split(","))):
            key, eq, value = token.partition("=")
            if not eq:
                key, value = "p", token
            options.setdefault(key.strip(), []).append(value.strip())
        return cls.from_options(kind, options)

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> Fault:
        """Parse the JSON object form: `{"kind": "429", "p": 0.1, "at": [5, 17], ...}`."""
        options: dict[str, list[str]] = {}
        for key, value in obj.items():
            if key == "kind":
                continue
            values = value if isinstance(value, list) else [value]
            options[key] = [str(v) for v in values]
        return cls.from_options(str(obj.get("kind", "")), options)

    @classmethod
    def from_options(cls, kind_text: str, options: Mapping[str, Sequence[str]]) -> Fault:
        try:
            kind = FaultKind(kind_text)
        except ValueError:
            allowed = ", ".join(k.value for k in FaultKind)
            raise FaultSpecError(f"unknown fault kind {kind_text!r} (allowed: {allowed})") from None
        allowed_keys = _COMMON_KEYS | _KIND_KEYS[kind]
        repeatable = _REPEATABLE | _KIND_REPEATABLE.get(kind, set())
        for key, values in options.items():
            if key not in allowed_keys:
                raise FaultSpecError(
                    f"fault {kind.value}: unknown option {key!r} "
                    f"(allowed: {', '.join(sorted(allowed_keys))})"
                )
            if len(values) > 1 and key not in repeatable:
                raise FaultSpecError(f"fault {kind.value}: option {key!r} given twice")

        def one(key: str) -> str | None:
            values = options.get(key)
            return values[0] if values else None

        p = _parse_float(kind, "p", one("p"), 1.0)
        if not 0.0 <= p <= 1.0:
            raise FaultSpecError(f"fault {kind.value}: p={p} outside 0..1")
        n = _parse_int(kind, "n", one("n"), minimum=1)
        endpoints = frozenset(_parse_endpoint(kind, e) for e in options.get("endpoint", ()))
        retry_after = None
        if kind is FaultKind.RATE_LIMITED or one("retry_after") is not None:
            retry_after = _parse_retry_after(kind, one("retry_after") or "1")
        delay = _parse_float(kind, "delay", one("delay"), 1.0)
        if delay < 0:
            raise FaultSpecError(f"fault {kind.value}: negative delay {delay}")
        at = frozenset(_parse_int(kind, "at", a, minimum=0) or 0 for a in options.get("at", ()))
        corrupt_at = at if kind is FaultKind.CORRUPT else frozenset()
        if kind is FaultKind.CORRUPT and not at:
            raise FaultSpecError("fault corrupt: needs at least one at=INDEX")
        mode = one("mode")
        drop_mode = _parse_mode(kind, DropMode, mode, DropMode.BEFORE)
        corrupt_mode = _parse_mode(kind, CorruptMode, mode, CorruptMode.DER)
        size = _parse_size(kind, "size", one("size")) or _DEFAULT_SIZE.get(kind)
        return cls(
            kind=kind,
            p=p,
            n=n,
            endpoints=endpoints,
            logs=frozenset(options.get("log", ())),
            retry_after=retry_after,
            delay=delay,
            short_to=_parse_int(kind, "to", one("to"), minimum=1),
            drop_mode=drop_mode,
            corrupt_at=corrupt_at,
            corrupt_mode=corrupt_mode,
            size=size,
            body_mode=_parse_mode(kind, BodyMode, mode, BodyMode.CHUNKED),
            rate=_parse_size(kind, "rate", one("rate")),
            lie_at=_parse_int(kind, "at", one("at"), minimum=0) if kind is FaultKind.LIE else None,
            lie_mode=_parse_mode(kind, LieMode, mode, LieMode.ROOT),
        )


def _parse_float(kind: FaultKind, key: str, text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise FaultSpecError(f"fault {kind.value}: {key}={text!r} is not a number") from None


def _parse_int(kind: FaultKind, key: str, text: str | None, minimum: int) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise FaultSpecError(f"fault {kind.value}: {key}={text!r} is not an integer >= {minimum}")
    return int(text)


def _parse_size(kind: FaultKind, key: str, text: str | None) -> int | None:
    """Bytes: a whole number, optionally with K, M or G (binary multiples)."""
    if text is None:
        return None
    digits, unit = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "")
    if unit not in _SIZE_UNITS or not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise FaultSpecError(
            f"fault {kind.value}: {key}={text!r} is not a size in bytes "
            "(a whole number >= 1, optionally with K, M or G)"
        )
    return int(digits) * _SIZE_UNITS[unit]


def _parse_mode(kind: FaultKind, modes: type[_M], text: str | None, default: _M) -> _M:
    if text is None or modes is not _MODES.get(kind):
        return default
    try:
        return modes(text)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in modes)
        raise FaultSpecError(
            f"fault {kind.value}: unknown mode {text!r} (allowed: {allowed})"
        ) from None


def _parse_endpoint(kind: FaultKind, text: str) -> Endpoint:
    try:
        return Endpoint(text)
    except ValueError:
        allowed = ", ".join(e.value for e in Endpoint)
        raise FaultSpecError(
            f"fault {kind.value}: unknown endpoint {text!r} (allowed: {allowed})"
        ) from None


def _parse_retry_after(kind: FaultKind, text: str) -> RetryAfter:
    if text == "date":
        return RetryAfter(1, as_date=True)
    as_date = text.startswith("date+")
    seconds = _parse_int(kind, "retry_after", text.removeprefix("date+"), minimum=0)
    assert seconds is not None  # text is never empty here
    return RetryAfter(seconds, as_date)


@dataclass(slots=True)
class Action:
    """What to do to one request. `fired` lists every fault that triggered, for the statistics."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: DropMode | None = None
    entries: int | None = None  # get-entries: serve only this many
    oversize: Oversize | None = None
    lie: int | None = None  # tree heads: sign the root with this leaf's hash replaced
    fired: list[FaultKind] = field(default_factory=list)


class FaultPlan:
    """The active faults and their remaining counts; `decide` is called once per request."""

    def __init__(self, faults: Sequence[Fault] = (), seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.seed = seed
        self._faults: list[Fault] = []
        self._remaining: list[int | None] = []
        # `lie:mode=fork`: (fault, log) → (tree size, heads asked for at it). Heads are served
        # only at a log's latest size, which never goes back, so one count per log is enough.
        self._fork_heads: dict[tuple[int, str | None], tuple[int, int]] = {}
        self.replace(faults)

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults)

    def replace(self, faults: Sequence[Fault], seed: int | None = None) -> None:
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(seed)
        self._faults = list(faults)
        self._remaining = [f.n for f in self._faults]
        self._fork_heads.clear()

    def add(self, faults: Sequence[Fault]) -> None:
        self._faults.extend(faults)
        self._remaining.extend(f.n for f in faults)

    def to_json(self) -> dict[str, object]:
        live = [
            {**f.to_json(), **({"remaining": r} if r is not None else {})}
            for f, r in zip(self._faults, self._remaining, strict=True)
        ]
        return {"seed": self.seed, "faults": live}

    def decide(
        self,
        endpoint: Endpoint,
        log: str | None,
        now: float,
        batch: int | None = None,
        head_size: int | None = None,
    ) -> Action:
        """Roll every applicable fault for one request at wall-clock time `now`.

        The first status, drop or oversize fault that fires ends the roll (one response can carry
        one status); delays add up; `short` needs `batch`, the number of entries the response would
        hold, and fires only when it can actually take entries away (batch > its `to`, or >= 2).
        `lie` needs `head_size`, the size of the tree head the response would carry, and is rolled
        last, only for a response that will carry that head.
        """
        action = Action()
        for i, fault in enumerate(self._faults):
            if fault.kind in _CONTENT_KINDS or self._remaining[i] == 0:
                continue
            if not fault.applies(endpoint, log):
                continue
            if fault.kind is FaultKind.SHORT:
                limit = action.entries if action.entries is not None else batch
                if limit is None or limit <= (fault.short_to or 1):
                    continue
            if not self._fires(i):
                continue
            action.fired.append(fault.kind)
            if fault.kind is FaultKind.SLOW:
                action.delay += fault.delay
            elif fault.kind is FaultKind.SHORT:
                assert limit is not None
                action.entries = fault.short_to or self._rng.randint(1, limit - 1)
            elif fault.kind is FaultKind.DROP:
                action.drop = fault.drop_mode
                return action
            elif (oversize := fault.oversize()) is not None:
                action.oversize = oversize
                return action
            else:
                action.status = _STATUS[fault.kind]
                if fault.retry_after is not None:
                    action.headers["Retry-After"] = fault.retry_after.header(now)
                return action
        if head_size is not None:
            self._roll_lie(action, endpoint, log, head_size)
        return action

    def _fires(self, i: int) -> bool:
        """Whether fault `i`, which applies, fires this time (its chance; it then counts)."""
        fault = self._faults[i]
        if fault.p < 1.0 and self._rng.random() >= fault.p:
            return False
        remaining = self._remaining[i]
        if remaining is not None:
            self._remaining[i] = remaining - 1
        return True

    def _roll_lie(self, action: Action, endpoint: Endpoint, log: str | None, size: int) -> None:
        """The first `lie` that fires sets `action.lie` (a response carries one head)."""
        for i, fault in enumerate(self._faults):
            if fault.kind is not FaultKind.LIE or self._remaining[i] == 0:
                continue
            index = fault.lie_index(size)
            if index is None or not fault.applies(endpoint, log):
                continue
            if fault.lie_mode is LieMode.FORK and not self._fork_turn(i, log, size):
                continue
            if not self._fires(i):
                continue
            action.fired.append(FaultKind.LIE)
            action.lie = index
            return

    def _fork_turn(self, i: int, log: str | None, size: int) -> bool:
        """Count a head request at `size`; True for the 2nd, 4th, … at that size."""
        seen_size, count = self._fork_heads.get((i, log), (size, 0))
        if seen_size != size:
            count = 0
        self._fork_heads[(i, log)] = (size, count + 1)
        return count % 2 == 1

    def corruption(self, log: str) -> dict[int, CorruptMode]:
        """Indices of `log` to serve corrupted, and how; the last fault naming an index wins."""
        out: dict[int, CorruptMode] = {}
        for fault in self._faults:
            if fault.kind is FaultKind.CORRUPT and (not fault.logs or log in fault.logs):
                out.update(dict.fromkeys(fault.corrupt_at, fault.corrupt_mode))
        return out


_PAD_CHUNK = 1 << 20
# A gzip member header: deflate, no flags, no time, maximum compression, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"


def padded(plain: bytes, size: int, chunk: int = _PAD_CHUNK) -> Iterator[bytes]:
    """`plain`, then spaces up to `size` bytes in all, at most `chunk` bytes at a time."""
    yield plain
    full, rest = divmod(max(0, size - len(plain)), chunk)
    block = b" " * chunk
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def gzip_padded(plain: bytes, size: int) -> Iterator[bytes]:
    """`padded(plain, size)` as one gzip member, made as it is sent. Each MiB of spaces
    compresses once, to about 1 KB, and those bytes are sent again for every MiB: a full flush
    resets the compressor, so each MiB's deflate blocks stand alone. The CRC is computed at the
    end, only for a reader that gets there."""
    full, rest = divmod(max(0, size - len(plain)), _PAD_CHUNK)
    spaces = b" " * _PAD_CHUNK
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield _GZIP_HEADER + deflate.compress(plain) + deflate.flush(zlib.Z_FULL_FLUSH)
    if full:
        block = deflate.compress(spaces) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(full):
            yield block
    yield deflate.compress(spaces[:rest]) + deflate.flush()
    crc = zlib.crc32(plain)
    for _ in range(full):
        crc = zlib.crc32(spaces, crc)
    crc = zlib.crc32(spaces[:rest], crc)
    yield struct.pack("<II", crc, (len(plain) + full * _PAD_CHUNK + rest) & 0xFFFFFFFF)
