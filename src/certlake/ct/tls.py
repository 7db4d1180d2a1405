"""TLS presentation-language decoding (RFC 8446 §3) for CT structures.

Written by hand rather than with a general ASN.1/TLS library because CT needs only fixed-width
big-endian integers and length-prefixed opaque vectors, and this sits on the hot path of every
entry. Every malformed input surfaces as `DecodeError`, never as IndexError or struct.error.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that do not decode as the expected CT structure."""


class Reader:
    """A cursor over a byte string; each read checks that the bytes are there."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _short(self, n: int, field: str) -> DecodeError:
        return DecodeError(
            f"{self._what}: truncated {field} at byte {self._pos} "
            f"(need {n}, have {len(self._data) - self._pos})"
        )

    # The three readers below are written out rather than built on each other: they run a dozen
    # times per log entry, and a method call per field is a measurable share of decoding.
    def uint(self, width: int, field: str) -> int:
        pos = self._pos
        end = pos + width
        if end > len(self._data):
            raise self._short(width, field)
        self._pos = end
        return int.from_bytes(self._data[pos:end], "big")

    def fixed(self, n: int, field: str) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._data):
            raise self._short(n, field)
        self._pos = end
        return self._data[pos:end]

    def opaque(self, len_width: int, field: str) -> bytes:
        data = self._data
        start = self._pos + len_width
        if start > len(data):
            raise self._short(len_width, f"{field} length")
        n = int.from_bytes(data[self._pos : start], "big")
        end = start + n
        if end > len(data):
            self._pos = start
            raise self._short(n, field)
        self._pos = end
        return data[start:end]

    def slice_since(self, start: int) -> bytes:
        return self._data[start : self._pos]

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError(
                f"{self._what}: {len(self._data) - self._pos} trailing bytes at {self._pos}"
            )


def u(value: int, width: int) -> bytes:
    """Encode an unsigned big-endian integer; an out-of-range value is a programming error."""
    return value.to_bytes(width, "big")


def vec(data: bytes, len_width: int) -> bytes:
    """A length-prefixed opaque vector."""
    return len(data).to_bytes(len_width, "big") + data
