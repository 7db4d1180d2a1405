"""The certificates the test log's growth logs: issued by `CertFactory`, then recycled.

Issuing costs ~0.3 ms per certificate (an ECDSA or RSA signature over a freshly built TBS), which
would make a 100k-entry log take half a minute. So the pool issues its first `size` certificates
for real — a mix of final certificates (x509 entries) and precertificates, under the ECDSA or
the RSA intermediate, 1–50 SANs — and then hands the same ones out again in order. Every entry is
still a real, parseable, correctly signed certificate; entries `size` apart share their
certificate (not their leaf: the timestamp and, in static logs, the leaf index differ).
"""

from __future__ import annotations

import random

from certlake.ct.entry import EntryType
from certlake.testlog.certs import CertFactory, IssuedCert, IssuedPrecert, KeyType
from certlake.testlog.log import LoggedCert

DEFAULT_POOL_SIZE = 4096
# Roughly the share of precertificates in real RFC 6962 logs' recent entries.
PRECERT_SHARE = 0.5
RSA_INTERMEDIATE_SHARE = 0.2


def logged(issued: IssuedCert | IssuedPrecert) -> LoggedCert:
    """What a log stores for a certificate or precertificate from `CertFactory`."""
    if isinstance(issued, IssuedPrecert):
        return LoggedCert.create(
            EntryType.PRECERT,
            issued.precert_der,
            issued.chain,
            issued.tbs,
            issued.issuer_key_hash,
        )
    return LoggedCert.create(EntryType.X509, issued.der, issued.chain)


class CertPool:
    """Certificates in issue order, recycled after the first `size`; deterministic per seed."""

    def __init__(self, seed: int, size: int = DEFAULT_POOL_SIZE) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.size = size
        self._factory = CertFactory(seed)
        self._rng = random.Random(seed)
        self._issued: list[LoggedCert] = []
        self._taken = 0

    def _issue(self) -> LoggedCert:
        signer: KeyType = "rsa" if self._rng.random() < RSA_INTERMEDIATE_SHARE else "ec"
        if self._rng.random() < PRECERT_SHARE:
            return logged(self._factory.issue_precert(signer=signer))
        return logged(self._factory.issue(signer=signer))

    def take(self, n: int) -> list[LoggedCert]:
        out = []
        for _ in range(n):
            if len(self._issued) < self.size:
                self._issued.append(self._issue())
            out.append(self._issued[self._taken % self.size])
            self._taken += 1
        return out
