"""Log entry → the three certstream payloads plus the archive row's fields.

`build_message` is the hot path: every entry of every log goes through it once. It parses the
leaf, takes each chain certificate's JSON from a cache, serializes the leaf once with orjson and
cuts the lite leaf and the domains list out of those bytes, so full, lite and domains-only come
from a single serialization.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import orjson

from certlake.certs.certificate import CertObject, certificate_object
from certlake.certs.errors import CertificateParseError
from certlake.certs.gojson import go_escape, go_float, html_escape
from certlake.ct.entry import EntryType, LogEntry, LogSource

_LEAF_HEAD = b'{"all_domains":'
_AS_DER_KEY = b',"as_der":"'


class CertMessage(NamedTuple):
    """One entry, serialized: the stream payloads and the plain values the archive row needs.

    `full` and `lite` end with `\\n` as Go's do; `domains` does not. `chain` holds one JSON
    document per chain certificate, exactly as in `full`. The parsed leaf object is not kept:
    the payloads and fields hold all of it, and a message may cross a process boundary and sit
    in the resume ring, where every object it holds costs.
    """

    full: bytes
    lite: bytes
    domains: bytes
    cert_index: int
    update_type: str
    seen: float
    source_name: str
    source_url: str
    cert_link: str
    serial_number: str
    fingerprint: str
    sha256: str
    sha1: str
    not_before: int
    not_after: int
    is_ca: bool
    signature_algorithm: str
    subject_aggregated: str
    issuer_aggregated: str
    all_domains: list[str]
    as_der: str
    chain: list[str]


class Streamed(NamedTuple):
    """A message as the live stream keeps it (the resume ring, /latest.json, /api/cert): the
    three payloads and the fields filters and de-duplication read, not the archive's columns,
    which would double what every kept message costs."""

    full: bytes
    lite: bytes
    domains: bytes
    cert_index: int
    update_type: str
    source_name: str
    source_url: str
    sha256: str
    sha1: str
    serial_number: str
    issuer_aggregated: str
    all_domains: list[str]

    @classmethod
    def of(cls, m: CertMessage) -> Streamed:
        return cls(
            m.full,
            m.lite,
            m.domains,
            m.cert_index,
            m.update_type,
            m.source_name,
            m.source_url,
            m.sha256,
            m.sha1,
            m.serial_number,
            m.issuer_aggregated,
            m.all_domains,
        )


def build_message(entry: LogEntry, source: LogSource, seen: float, cert_link: str) -> CertMessage:
    """Build the message for `entry`; raises `CertificateParseError` (with `part` naming the
    leaf or the chain element) if any certificate of the entry cannot be read."""
    leaf, chain_json, chain_text = _parse(entry)
    leaf_full = go_escape(orjson.dumps(leaf))
    # The as_der member follows the all_domains array; `,"as_der":"` cannot occur inside a JSON
    # string (its quotes would be escaped), so the first match is the key itself.
    cut = leaf_full.index(_AS_DER_KEY, len(_LEAF_HEAD))
    leaf_lite = leaf_full[:cut] + leaf_full[cut + len(_AS_DER_KEY) + len(leaf["as_der"]) + 1 :]
    domains_json = leaf_full[len(_LEAF_HEAD) : cut]

    source_head, source_tail = _source_fragments(source, entry.entry_type.update_type)
    head = b'{"data":{"cert_index":%d,"cert_link":%b' % (
        entry.index,
        go_escape(orjson.dumps(cert_link)),
    )
    tail = b"".join(
        (
            b',"seen":',
            go_float(seen),
            source_head,
            go_float(entry.timestamp_ms / 1000),
            source_tail,
        )
    )
    chain_part = b',"chain":[%b]' % b",".join(chain_json) if chain_json else b""
    return _message(
        entry,
        source,
        seen,
        cert_link,
        leaf,
        chain_text,
        full=b"".join((head, chain_part, b',"leaf_cert":', leaf_full, tail)),
        lite=b"".join((head, b',"leaf_cert":', leaf_lite, tail)),
        domains=b'{"data":%b,"message_type":"dns_entries"}' % html_escape(domains_json),
    )


def build_record(entry: LogEntry, source: LogSource, seen: float, cert_link: str) -> CertMessage:
    """The archive row of `entry` alone: every field exactly as `build_message` makes it, but the
    three stream payloads are left empty. Backfill streams nothing, and serializing the payloads
    is about a third of the cost of a message."""
    leaf, _, chain_text = _parse(entry)
    return _message(
        entry, source, seen, cert_link, leaf, chain_text, full=b"", lite=b"", domains=b""
    )


def _parse(entry: LogEntry) -> tuple[CertObject, list[bytes], list[str]]:
    """The leaf's object and each chain certificate's JSON (bytes and str)."""
    leaf = certificate_object(entry.cert_der, precert=entry.entry_type is EntryType.PRECERT)
    chain_json: list[bytes] = []
    chain_text: list[str] = []
    for position, der in enumerate(entry.chain):
        try:
            element = _chain_element(der)
        except CertificateParseError as exc:
            raise exc.in_part(f"chain[{position}]") from None
        chain_json.append(element[0])
        chain_text.append(element[1])
    return leaf, chain_json, chain_text


def _message(
    entry: LogEntry,
    source: LogSource,
    seen: float,
    cert_link: str,
    leaf: CertObject,
    chain_text: list[str],
    *,
    full: bytes,
    lite: bytes,
    domains: bytes,
) -> CertMessage:
    return CertMessage(
        full=full,
        lite=lite,
        domains=domains,
        cert_index=entry.index,
        update_type=entry.entry_type.update_type,
        seen=seen,
        source_name=source.name,
        source_url=source.url,
        cert_link=cert_link,
        serial_number=leaf["serial_number"],
        fingerprint=leaf["fingerprint"],
        sha256=leaf["sha256"],
        sha1=leaf["sha1"],
        not_before=leaf["not_before"],
        not_after=leaf["not_after"],
        is_ca=leaf["is_ca"],
        signature_algorithm=leaf["signature_algorithm"],
        subject_aggregated=leaf["subject"]["aggregated"],
        issuer_aggregated=leaf["issuer"]["aggregated"],
        all_domains=leaf["all_domains"],
        as_der=leaf["as_der"],
        chain=chain_text,
    )


# Chain certificates are the few intermediates and roots that sign nearly everything, so each
# distinct DER is parsed and serialized once. Bound: the public CT ecosystem has a few thousand
# distinct chain certificates; 4096 keeps all hot ones while capping memory (~8 KB each, ~32 MB
# worst case) against a log that sends a different junk chain with every entry.
@lru_cache(maxsize=4096)
def _chain_element(der: bytes) -> tuple[bytes, str]:
    """(JSON bytes, the same as str) of a chain certificate's object."""
    encoded = go_escape(orjson.dumps(certificate_object(der)))
    return encoded, encoded.decode("utf-8")


# One entry per watched log (a few hundred); the bound only guards against unbounded churn.
@lru_cache(maxsize=1024)
def _source_fragments(source: LogSource, update_type: str) -> tuple[bytes, bytes]:
    """The constant bytes around `source.timestamp` for this log and update type."""
    head = b',"source":{"name":%b,"url":%b,"timestamp":' % (
        go_escape(orjson.dumps(source.name)),
        go_escape(orjson.dumps(source.url)),
    )
    tail = b',"type":%b},"update_type":%b},"message_type":"certificate_update"}\n' % (
        orjson.dumps(source.kind.value),
        orjson.dumps(update_type),
    )
    return head, tail


def archived_message(
    *,
    cert_index: int,
    cert_link: str,
    update_type: str,
    seen: float,
    source_name: str,
    source_url: str,
    as_der: bytes,
    chain: list[str],
) -> bytes:
    """The full message of an archived row, as `build_message` made it, from the columns the
    archive keeps: the leaf is parsed again from its DER, the chain is stored as sent. The log's
    timestamp and type are not archived, so `source` holds only `name` and `url`; `archived`
    says where the message comes from. Raises `CertificateParseError` (never for a row certlake
    archived: it parsed the same DER then)."""
    leaf = certificate_object(as_der, precert=update_type == EntryType.PRECERT.update_type)
    chain_part = b',"chain":[%b]' % ",".join(chain).encode() if chain else b""
    return b"".join(
        (
            b'{"data":{"cert_index":%d,"cert_link":%b'
            % (cert_index, go_escape(orjson.dumps(cert_link))),
            chain_part,
            b',"leaf_cert":',
            go_escape(orjson.dumps(leaf)),
            b',"seen":',
            go_float(seen),
            b',"source":{"name":%b,"url":%b}'
            % (
                go_escape(orjson.dumps(source_name)),
                go_escape(orjson.dumps(source_url)),
            ),
            b',"update_type":%b},"message_type":"certificate_update","archived":true}\n'
            % go_escape(orjson.dumps(update_type)),
        )
    )
