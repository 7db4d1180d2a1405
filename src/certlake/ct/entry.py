"""The parsed log entry: what every reader produces and every consumer takes.

Plain values only; both protocols (RFC 6962 and static-ct-api) decode into this shape so that the
message builder, the stream and the archive never need to know where an entry came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EntryType(enum.IntEnum):
    X509 = 0
    PRECERT = 1

    @property
    def update_type(self) -> str:
        """The certstream `update_type` string for this entry type."""
        return "X509LogEntry" if self is EntryType.X509 else "PrecertLogEntry"


class LogKind(enum.Enum):
    RFC6962 = "rfc6962"
    STATIC = "tiled"  # the certstream `source.type` value for static-ct-api logs


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One decoded log entry.

    `cert_der` is what certstream shows as `as_der`: the X.509 certificate for an x509 entry, and
    the full pre-certificate (poison extension and signature included) for a precert entry.
    `tbs` is the logged TBSCertificate of a precert (poison removed); `None` for x509 entries.
    `chain` holds the DER of each chain certificate, issuer first, as the log gave them.
    """

    index: int
    timestamp_ms: int
    entry_type: EntryType
    cert_der: bytes
    chain: tuple[bytes, ...]
    tbs: bytes | None = None
    issuer_key_hash: bytes | None = None
    # The MerkleTreeLeaf bytes (0x00 0x00 ‖ TimestampedEntry); its leaf hash proves inclusion.
    leaf_input: bytes = b""


@dataclass(frozen=True, slots=True)
class LogSource:
    """Identity of a log as it appears in messages, state and the archive."""

    url: str  # normalized: scheme present, no trailing slash (monitoring prefix for static logs)
    name: str  # the log's description
    kind: LogKind
