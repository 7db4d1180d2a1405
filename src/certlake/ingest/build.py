"""Packed entries → certstream messages: the live path's CPU-heavy step, run in build workers.

Pure, and the same `build_message` the pipeline runs when it has no workers. A worker gets one
log's consecutive entries (one `get-entries` answer, or a tile's worth) and returns, in the same
order, a message or the reason there is none for each.
"""

from __future__ import annotations

from typing import NamedTuple

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_message
from certlake.ct.entry import LogSource
from certlake.ingest.packed import Packed, unpacked


class NotBuilt(NamedTuple):
    """An index passed without a message: its entry does not decode (`part` "entry") or its
    certificate does not parse ("certificate")."""

    cert_index: int
    part: str
    reason: str


Built = CertMessage | NotBuilt


def build_messages(source: LogSource, packed: Packed, seen: float) -> list[Built]:
    """The messages of a packed batch of `source`'s entries, first seen at `seen`."""
    out: list[Built] = []
    for index, entry, cert_link, _, reason in unpacked(source, packed):
        if entry is None:
            out.append(NotBuilt(index, "entry", reason))
            continue
        try:
            out.append(build_message(entry, source, seen, cert_link))
        except CertificateParseError as e:
            out.append(NotBuilt(index, "certificate", str(e)))
    return out
