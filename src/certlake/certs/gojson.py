"""Go `encoding/json` byte compatibility on top of orjson.

orjson already writes what Go writes for everything certstream carries — compact separators,
no HTML escaping, `\\b \\f \\n \\r \\t` and lowercase `\\u00xx` for other control characters, raw
UTF-8 otherwise — except three things handled here:

* Go escapes U+2028/U+2029 as `\\u2028`/`\\u2029`;
* Go writes each byte of invalid UTF-8 as the six characters `\\ufffd`. Certificate text is
  decoded with `go_text`, which turns each invalid byte into U+FFFD, and `go_escape` writes every
  U+FFFD escaped; a genuine U+FFFD in a certificate is therefore escaped too where Go would write
  it raw, which decodes to the same string;
* Go prints floats as the shortest round-trip decimal without `.0` for integral values.

The domains-only stream is produced by Go's `json.Marshal`, which also HTML-escapes.
"""

from __future__ import annotations

import codecs
import math
from decimal import Decimal


def _one_byte_replacement(exc: UnicodeError) -> tuple[str, int]:
    # Go's decoder consumes one byte per invalid sequence, Python's "replace" a maximal subpart;
    # resuming after a single byte makes the U+FFFD count match Go's.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "\ufffd", exc.start + 1


GO_REPLACE = "certlake-go-replace"
codecs.register_error(GO_REPLACE, _one_byte_replacement)


def go_text(raw: bytes) -> str:
    """Bytes as Go holds them in a string, decoded for JSON: invalid UTF-8 bytes → U+FFFD each.
    (Hot loops call `raw.decode("utf-8", GO_REPLACE)` directly, which is the same.)"""
    return raw.decode("utf-8", GO_REPLACE)


def go_escape(encoded: bytes) -> bytes:
    """Apply Go's extra string escapes to orjson output."""
    if encoded.isascii():  # the common case, and ~40x cheaper than the searches below
        return encoded
    if b"\xe2\x80" in encoded:
        encoded = encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    if b"\xef\xbf\xbd" in encoded:
        encoded = encoded.replace(b"\xef\xbf\xbd", b"\\ufffd")
    return encoded


def html_escape(encoded: bytes) -> bytes:
    """Go's `json.Marshal` HTML escaping of `<`, `>` and `&` (valid only inside JSON strings,
    which is the only place these characters can occur in compact JSON)."""
    if b"<" in encoded or b">" in encoded or b"&" in encoded:
        encoded = (
            encoded.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
        )
    return encoded


def go_float(value: float) -> bytes:
    """A float64 exactly as Go's encoding/json prints it."""
    text = repr(value)
    if text.endswith(".0"):
        return text[:-2].encode()
    if "e" not in text and "n" not in text:  # plain decimal: already Go's shortest form
        return text.encode()
    if not math.isfinite(value):
        raise ValueError(f"Go's encoding/json cannot encode {value!r}")
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        # Go uses positional notation in this range where Python's repr switches to exponents.
        return format(Decimal(text), "f").encode()
    mantissa, exponent = text.split("e")
    sign, digits = exponent[0], exponent[1:].lstrip("0")
    # Go writes at least two exponent digits except that it shortens `e-0N` to `e-N`.
    if sign == "+" and len(digits) < 2:
        digits = digits.rjust(2, "0")
    return f"{mantissa}e{sign}{digits}".encode()
