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

    def _take(self, n: int, field: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(
                f"{self._what}: truncated {field} at byte {self._pos} "
                f"(need {n}, have {len(self._data) - self._pos})"
            )
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def uint(self, width: int, field: str) -> int:
        return int.from_bytes(self._take(width, field), "big")

    def fixed(self, n: int, field: str) -> bytes:
        return self._take(n, field)

    def opaque(self, len_width: int, field: str) -> bytes:
        return self._take(self.uint(len_width, f"{field} length"), field)

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
