"""Entry → message throughput on one core: RFC 6962 decode + certificate parse + full, lite and
domains-only serialization, against a naive builder over `cryptography`'s object API; and what
verified ingest adds to it (a kernel: leaf hash + compact range append, without the watcher's
loop around them).

    .venv/bin/python benchmarks/parse.py [--entries N] [--seconds S]

The mix: half precerts, half final certificates; 80 % issued by the ECDSA intermediate, 20 % by
the RSA one (so two distinct 2-certificate chains, as the few big CAs dominate real logs);
1–50 SANs (60 % 1–3, 30 % 4–12, 10 % 13–50); a quarter RSA leaf keys; some OV subjects and
email/IP SANs. Every leaf is distinct; chain certificates repeat, as they do in real logs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certlake.certs.message import build_message
from certlake.ct.compact import CompactRange
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.ct.leaf import (
    decode_rfc6962_entry,
    encode_extra_data_precert,
    encode_extra_data_x509,
    encode_leaf_input,
)
from certlake.ct.merkle import leaf_hash
from certlake.testlog.certs import CertFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.reference_cert import expected_object

SOURCE = LogSource("https://ct.certlake.test/bench", "certlake bench log", LogKind.RFC6962)
RawEntry = tuple[int, bytes, bytes]


def make_entries(count: int, seed: int = 1) -> list[RawEntry]:
    factory = CertFactory(seed)
    entries: list[RawEntry] = []
    timestamp = 1_750_000_000_000
    for index in range(count):
        signer = "rsa" if index % 5 == 4 else "ec"
        if index % 2:
            pre = factory.issue_precert(signer=signer)
            leaf_input = encode_leaf_input(
                timestamp + index, EntryType.PRECERT, pre.tbs, pre.issuer_key_hash
            )
            extra = encode_extra_data_precert(pre.precert_der, pre.chain)
        else:
            cert = factory.issue(signer=signer)
            leaf_input = encode_leaf_input(timestamp + index, EntryType.X509, cert.der)
            extra = encode_extra_data_x509(cert.chain)
        entries.append((index, leaf_input, extra))
    return entries


def certlake_message(index: int, leaf_input: bytes, extra: bytes) -> bytes:
    entry = decode_rfc6962_entry(index, leaf_input, extra)
    message = build_message(entry, SOURCE, time.time(), _link(index))
    return message.full


def _link(index: int) -> str:
    return f"{SOURCE.url}/ct/v1/get-entries?start={index}&end={index}"


# --- the naive baseline: what a straightforward implementation over the object API does ------
# (the same reference model the certificate tests check certlake against)


def naive_data(index: int, leaf_input: bytes, extra: bytes) -> dict[str, Any]:
    entry: LogEntry = decode_rfc6962_entry(index, leaf_input, extra)
    return {
        "cert_index": entry.index,
        "cert_link": _link(index),
        "chain": [expected_object(der) for der in entry.chain],
        "leaf_cert": expected_object(entry.cert_der, entry.entry_type is EntryType.PRECERT),
        "seen": time.time(),
        "source": {
            "name": SOURCE.name,
            "url": SOURCE.url,
            "timestamp": entry.timestamp_ms / 1000,
            "type": "rfc6962",
        },
        "update_type": entry.entry_type.update_type,
    }


def naive_message(index: int, leaf_input: bytes, extra: bytes) -> bytes:
    data = naive_data(index, leaf_input, extra)
    leaf = data["leaf_cert"]
    full = json.dumps(
        {"data": data, "message_type": "certificate_update"},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    del data["chain"], leaf["as_der"]
    lite = json.dumps(
        {"data": data, "message_type": "certificate_update"},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    domains = json.dumps(
        {"data": leaf["all_domains"], "message_type": "dns_entries"}, separators=(",", ":")
    )
    return (full + lite + domains).encode()


def rate(
    fn: Callable[[int, bytes, bytes], bytes], entries: list[RawEntry], seconds: float
) -> float:
    """Entries per second: best of repeated passes over `entries` for about `seconds`."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.process_time()
        for index, leaf_input, extra in entries:
            fn(index, leaf_input, extra)
        best = min(best, time.process_time() - start)
        if time.perf_counter() > deadline:
            return len(entries) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="distinct entries in the mix")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    args = parser.parse_args()

    built = time.perf_counter()
    entries = make_entries(args.entries)
    print(
        f"mix: {len(entries)} entries built in {time.perf_counter() - built:.1f} s "
        f"(python {platform.python_version()})"
    )
    sizes = sorted(len(extra) + len(leaf) for _, leaf, extra in entries)
    print(f"entry bytes (leaf_input+extra_data): median {sizes[len(sizes) // 2]}")
    # Both builders must produce the same certificate objects, or the ratio means nothing.
    for raw in entries[:100]:
        ours_data, naive = json.loads(certlake_message(*raw))["data"], naive_data(*raw)
        assert ours_data["leaf_cert"] == naive["leaf_cert"], raw[0]
        assert ours_data["chain"] == naive["chain"], raw[0]
    print("certlake and the naive builder agree on the first 100 entries")
    full_sizes = sorted(len(certlake_message(*e)) for e in entries[:200])
    print(f"full message bytes: median {full_sizes[len(full_sizes) // 2]}")

    decode_only = rate(
        lambda i, li, ed: decode_rfc6962_entry(i, li, ed).cert_der, entries, args.seconds / 4
    )
    ours = rate(certlake_message, entries, args.seconds)
    naive = rate(naive_message, entries, args.seconds / 2)
    # What verified ingest adds per entry: its leaf hash folded into the log's compact range.
    folded = CompactRange(0)
    verify = rate(lambda i, li, ed: folded.append(leaf_hash(li)), entries, args.seconds / 4)
    print(f"decode only                         : {decode_only:10,.0f} entries/s")
    print(
        f"certlake decode+parse+3 payloads    : {ours:10,.0f} entries/s ({1e6 / ours:.1f} µs/entry)"
    )
    print(
        f"naive cryptography object API       : {naive:10,.0f} entries/s "
        f"({1e6 / naive:.1f} µs/entry)"
    )
    print(f"ratio                               : {ours / naive:10.1f} x")
    print(
        f"verification (leaf hash + range)    : {verify:10,.0f} entries/s "
        f"({1e6 / verify:.2f} µs/entry, {100 * ours / verify:.1f} % of the message build)"
    )


if __name__ == "__main__":
    main()
