"""Packed entries → certstream messages: the live path's CPU-heavy step, run in build workers.

Pure, and the same `build_message` the pipeline runs when it has no workers. A worker gets one
log's consecutive entries (one `get-entries` answer, or a tile's worth) and returns, in the same
order, a message or the reason there is none for each.
"""

from __future__ import annotations

from typing import NamedTuple

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, Streamed, build_message
from certlake.ct.entry import LogSource
from certlake.ingest.packed import Packed, unpacked


class NotBuilt(NamedTuple):
    """An index passed without a message: its entry does not decode (`part` "entry") or its
    certificate does not parse ("certificate")."""

    cert_index: int
    part: str
    reason: str


Built = CertMessage | Streamed | NotBuilt


def build_messages(
    source: LogSource, packed: Packed, seen: float, archived: bool = True
) -> list[Built]:
    """The messages of a packed batch of `source`'s entries, first seen at `seen`. Without an
    archive (`archived` false) only what the stream keeps comes back: the archive's columns
    would be a third of the bytes pickled, piped and unpickled for nothing."""
    out: list[Built] = []
    for index, entry, cert_link, _, reason in unpacked(source, packed):
        if entry is None:
            out.append(NotBuilt(index, "entry", reason))
            continue
        try:
            msg = build_message(entry, source, seen, cert_link)
        except CertificateParseError as e:
            out.append(NotBuilt(index, "certificate", str(e)))
            continue
        out.append(msg if archived else Streamed.of(msg))
    return out
