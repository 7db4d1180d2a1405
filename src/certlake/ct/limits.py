"""Bounds on one answer of a CT log, and the decoding that keeps to them. Pure: the HTTP shell
(`ct/client/http.py`) feeds the body in as it arrives.

Without bounds a log decides how much memory its reader takes: a 1 MiB gzip bomb answering
`get-entries` took `certlake fetch` to 2.2 GB, a 300 MiB body to 1.5 GB. Even a body of modest
size can hold JSON whose parse allocates thirty times its size (64 MiB of `{},` is 22 million
dicts, 2 GB). So each answer is bounded on the wire; gunzipped as it arrives and stopped at a
bound on the decompressed bytes; and a `get-entries` answer is bounded in the JSON values it may
hold before it is parsed.

Real answers, for scale: a `get-entries` element is 5–14 KB of JSON (the real Argon2025h2
precert with its 3-certificate chain in `tests/data/rfc6962/` is 13.6 KB), so the 256 asked by
default are 1.3–3.5 MB and the 1,000 that Trillian logs serve at most 5–14 MB; a full data tile
is 1–1.5 MB; tree heads, checkpoints and issuer certificates are a few KB.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from certlake.ct.errors import AnswerTooLarge, FetchError, Limit

KiB = 1 << 10
MiB = 1 << 20
# The largest real answers (1,000 big entries) fit, the 256 asked by default 4 times over.
DEFAULT_MAX_RESPONSE_BYTES = 16 * MiB
# What one answer may cost in memory, a bomb included; every request in flight may cost it at
# once (4 per operator by default: 128 MiB, which kept `certlake serve` under 240 MB when all
# four were bombs). Twice the largest real answer, 9 times the default's.
DEFAULT_MAX_DECOMPRESSED_BYTES = 32 * MiB

_RESPONSE_KEY = "ct_log.max_response_bytes"
_DECOMPRESSED_KEY = "ct_log.max_decompressed_bytes"

GZIP_MAGIC = b"\x1f\x8b"
# zlib's automatic header detection: gzip, or zlib-wrapped deflate (`Content-Encoding: deflate`).
_AUTO_WBITS = 32 + zlib.MAX_WBITS
_COMPRESSED = frozenset({"gzip", "x-gzip", "deflate"})
_PIECE = 256 * KiB

# A get-entries element is 3 JSON values (an object and two strings); the rest leaves room for
# a few members a log may add. The answer around them is an object and an array.
_VALUES_PER_ENTRY = 8
_VALUES_AROUND = 8
# An answer this small is parsed without counting its values first: whatever it holds, it builds
# at most a few MB of objects (256 KiB of `{},` is 87,000 empty dicts, ~6 MB), and counting costs
# about what parsing does (three passes over it: ~4 µs per entry of a 32-entry answer, a tenth
# of the event loop's work per entry in backfill). Google's 32-entry answers are 110-200 KiB.
_COUNT_VALUES_ABOVE = 256 * KiB


@dataclass(frozen=True, slots=True)
class Bound:
    bytes: int
    name: str  # how an error names it: the configuration key that sets it, or what it is for


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """The bounds on one answer: bytes on the wire, and bytes once decoded (for an answer sent
    as it is, the same bytes)."""

    response: Bound = Bound(DEFAULT_MAX_RESPONSE_BYTES, _RESPONSE_KEY)
    decompressed: Bound = Bound(DEFAULT_MAX_DECOMPRESSED_BYTES, _DECOMPRESSED_KEY)

    @classmethod
    def configured(cls, response_bytes: int, decompressed_bytes: int) -> ReadLimits:
        """The bounds as the configuration sets them (and as errors then name them)."""
        return cls(
            Bound(response_bytes, _RESPONSE_KEY), Bound(decompressed_bytes, _DECOMPRESSED_KEY)
        )

    def within(self, other: ReadLimits) -> ReadLimits:
        """The tighter of each pair of bounds."""
        return ReadLimits(
            min(self.response, other.response, key=_bytes),
            min(self.decompressed, other.decompressed, key=_bytes),
        )


_SMALL = Bound(MiB, "the bound on tree heads and issuer certificates")
# Tree heads, checkpoints (even with many cosignatures) and issuer certificates are a few KB.
SMALL_ANSWER = ReadLimits(_SMALL, _SMALL)


def _bytes(bound: Bound) -> int:
    return bound.bytes


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class BoundedBody:
    """One answer's body, fed in as it arrives. It is counted against the wire bound, gunzipped
    as it comes when `Content-Encoding` says so, and gunzipped (once more) when what is left
    starts with the gzip magic number, since static-ct logs send gzip tiles without saying so;
    the result is counted against the decompressed bound. A bound raises `AnswerTooLarge` as
    soon as it is passed, so no more than a bound's worth is ever held or even produced."""

    def __init__(self, url: str, limits: ReadLimits, content_encoding: str | None = None) -> None:
        self._url = url
        self._limits = limits
        encoding = _encoding(content_encoding)
        if encoding != "identity" and encoding not in _COMPRESSED:
            raise FetchError(f"unsupported Content-Encoding {content_encoding!r} from {url}", 200)
        self._encoded = _Gunzip(url, limits.decompressed) if encoding in _COMPRESSED else None
        self._sniffed: _Gunzip | None = None
        self._head: bytes | None = b""  # the first decoded bytes until they tell gzip or not
        self._wire = 0
        self._size = 0
        self._parts: list[bytes] = []

    def announced(self, length: int | None) -> None:
        """Refuse at once an answer whose Content-Length is over the wire bound."""
        bound = self._limits.response
        if length is not None and length > bound.bytes:
            raise AnswerTooLarge(
                f"answer from {self._url} announces {_size_text(length)}, over "
                f"{_size_text(bound.bytes)} on the wire ({bound.name}); not read",
                Limit.BODY,
                bound.bytes,
            )

    def feed(self, chunk: bytes) -> None:
        self._wire += len(chunk)
        bound = self._limits.response
        if self._wire > bound.bytes:
            raise AnswerTooLarge(
                f"answer from {self._url} is over {_size_text(bound.bytes)} on the wire "
                f"({bound.name}); stopped reading there",
                Limit.BODY,
                bound.bytes,
            )
        if self._encoded is None:
            self._decoded(chunk)
            return
        for piece in self._encoded.feed(chunk):
            self._decoded(piece)

    def body(self) -> bytes:
        """The decoded body, once every chunk has been fed."""
        for layer in (self._encoded, self._sniffed):
            if layer is not None:
                layer.finish()
        if self._head:  # less than the magic number's length in all
            self._keep(self._head)
        return b"".join(self._parts)

    def _decoded(self, data: bytes) -> None:
        if self._head is not None:
            data = self._head + data
            if len(data) < len(GZIP_MAGIC):
                self._head = data
                return
            self._head = None
            if data.startswith(GZIP_MAGIC):
                self._sniffed = _Gunzip(self._url, self._limits.decompressed)
        if self._sniffed is None:
            self._keep(data)
            return
        for piece in self._sniffed.feed(data):
            self._keep(piece)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limits.decompressed.bytes:
            raise _over_decompressed(self._url, self._limits.decompressed)
        if data:
            self._parts.append(data)


class _Gunzip:
    """Streaming gzip (or zlib) decoding whose output is bounded: it never produces more than the
    bound and one byte, however far its input would expand. The output comes in pieces of at
    most `_PIECE` bytes, which are kept as they are: a bomb's expansion is never one allocation
    of the bound's size, or copied whole."""

    def __init__(self, url: str, bound: Bound) -> None:
        self._url = url
        self._bound = bound
        self._z = zlib.decompressobj(_AUTO_WBITS)
        self._out = 0
        self._fed = False

    def feed(self, data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        while True:
            if self._z.eof:
                # Another member may follow (gzip allows several; `gzip.decompress` also skips
                # zero padding between them).
                data = data.lstrip(b"\0")
                if not data:
                    return pieces
                self._z = zlib.decompressobj(_AUTO_WBITS)
            self._fed = self._fed or bool(data)
            # At most one byte past the room left: enough to know the bound is passed.
            most = min(self._bound.bytes - self._out + 1, _PIECE)
            try:
                out = self._z.decompress(data, most)
            except zlib.error as e:
                raise _corrupt(self._url, str(e)) from None
            self._out += len(out)
            if self._out > self._bound.bytes:
                raise _over_decompressed(self._url, self._bound)
            if out:
                pieces.append(out)
            if self._z.eof:
                data = self._z.unused_data
            elif self._z.unconsumed_tail or len(out) == most:
                # A full piece can leave output inside zlib even once all the input is taken.
                data = self._z.unconsumed_tail
            else:
                return pieces

    def finish(self) -> None:
        if self._fed and not self._z.eof:
            raise _corrupt(self._url, "truncated")


def _encoding(header: str | None) -> str:
    return (header or "identity").strip().lower()


def error_start(raw: bytes, content_encoding: str | None, n: int) -> bytes:
    """The first `n` bytes of an error answer from its first bytes `raw`, gunzipped if it says
    it is compressed; what does not decode is left out."""
    if _encoding(content_encoding) not in _COMPRESSED:
        return raw[:n]
    try:
        return zlib.decompressobj(_AUTO_WBITS).decompress(raw, n)
    except zlib.error:
        return b""


def _over_decompressed(url: str, bound: Bound) -> AnswerTooLarge:
    return AnswerTooLarge(
        f"answer from {url} is over {_size_text(bound.bytes)} once decompressed ({bound.name}); "
        "stopped decompressing there",
        Limit.DECOMPRESSED,
        bound.bytes,
    )


def _corrupt(url: str, detail: str) -> FetchError:
    return FetchError(f"corrupt gzip body from {url}: {detail}", 200)


def json_values_at_most(text: bytes) -> int:
    """An upper bound on the values in a JSON text, counted without parsing it: each value but
    the outermost is the first in its array or object or follows a comma, so there are at most
    1 + commas + brackets opened. Commas and brackets inside strings only raise the count."""
    return 1 + text.count(b",") + text.count(b"[") + text.count(b"{")


def check_entries_answer(text: bytes, asked: int, where: str) -> None:
    """Refuse, before parsing, a get-entries answer that holds more JSON values than `asked`
    entries can: parsing it would build that many objects. An answer too small for that to
    matter is left to the parser (and to the count of entries it holds)."""
    if len(text) <= _COUNT_VALUES_ABOVE:
        return
    values = json_values_at_most(text)
    most = _VALUES_PER_ENTRY * asked + _VALUES_AROUND
    if values > most:
        raise AnswerTooLarge(
            f"{where}: {values} JSON values, more than the {asked} entries asked can hold "
            f"(at most {most}); not parsed",
            Limit.ENTRIES,
            asked,
        )
