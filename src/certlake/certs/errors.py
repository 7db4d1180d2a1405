"""The one error type the certificate layer raises for bytes it cannot read."""

from __future__ import annotations


class CertificateParseError(ValueError):
    """A certificate (leaf or chain element) that cannot be read.

    `part` says which certificate of the entry failed (`"leaf"`, `"chain[0]"`, ...), `offset` is
    the byte position inside that certificate's DER where reading stopped (when known), so a
    watcher can report log + index + this without keeping the bytes around.
    """

    def __init__(self, reason: str, offset: int | None = None, part: str = "leaf") -> None:
        self.reason = reason
        self.offset = offset
        self.part = part
        where = "" if offset is None else f" at byte {offset}"
        super().__init__(f"{part}: {reason}{where}")

    def in_part(self, part: str) -> CertificateParseError:
        """The same error, attributed to another certificate of the entry."""
        return CertificateParseError(self.reason, self.offset, part)
