"""Cross-log de-duplication for one stream client (`?dedupe=1`).

A CA submits each certificate to several logs, so the firehose carries it several times; and it
logs the precertificate first, then often the final certificate. A client that asked for
de-duplication gets a certificate once:

- a certificate whose leaf SHA-256 it was already sent (the same certificate from another log);
- a certificate whose (serial number, issuer) it was already sent: a precertificate and its
  final certificate differ in bytes and hashes but share both, and a CA never reuses a serial
  under one issuer name. Whichever of the two comes first is sent; the other is dropped.

Memory is bounded: the client remembers the last `window` certificates it was sent (first in,
first out). Keys are the message's own strings, so the memory is references, not copies.
Applied only on the way to one client — never to the archive, which keeps every entry.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class DedupeConfigError(ValueError):
    """The de-duplication window is out of range."""


class Identified(Protocol):
    """The message fields de-duplication reads (`certs.message.CertMessage` has them)."""

    @property
    def sha256(self) -> str: ...

    @property
    def serial_number(self) -> str: ...

    @property
    def issuer_aggregated(self) -> str: ...


class Deduper:
    """Call with each message the client would be sent: True the first time a certificate is
    seen (it is then remembered), False for a duplicate."""

    __slots__ = ("_hashes", "_order", "_serials", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise DedupeConfigError(f"dedupe window must be >= 1, got {window}")
        self.window = window
        self._hashes: set[str] = set()
        # serial → issuer: serials are random and unique per CA, so one issuer per serial is
        # what the window holds in practice; on a clash the newer certificate is remembered.
        self._serials: dict[str, str] = {}
        self._order: deque[tuple[str, str, str]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def __call__(self, message: Identified) -> bool:
        sha, serial, issuer = message.sha256, message.serial_number, message.issuer_aggregated
        if sha in self._hashes or self._serials.get(serial) == issuer:
            return False
        if len(self._order) == self.window:
            old_sha, old_serial, old_issuer = self._order.popleft()
            self._hashes.discard(old_sha)
            if self._serials.get(old_serial) == old_issuer:
                del self._serials[old_serial]
        self._hashes.add(sha)
        self._serials[serial] = issuer
        self._order.append((sha, serial, issuer))
        return True
