"""Certificates → certstream messages: the hot path from a log entry to its payloads."""

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import CertMessage, build_message

__all__ = ["CertMessage", "CertificateParseError", "build_message"]
