"""Backfill verifies what it writes: each range it fetched, as it fetched it, is checked to be in
a tree head the log signed, without reading the rest of the log.

The head is the newest one the live server verified for the log and recorded beside the main
archive (`lake/heads.py`), when it covers the job's ceiling; otherwise a fresh head is asked of
the log, and the summary says so. Against it, a range [first, end) needs the log's proof of what
comes before it (RFC 6962: the inclusion proof of its first entry; static-ct: hash tiles) and of
what follows (a consistency proof from `end` to the head; none when the range ends at the head):
`ct/verify.range_in_head`. A range that does not verify is evidence (recorded, in the summary,
exit code 1); its rows are written all the same, as the live server streams a lying log's
entries, and nothing records them as verified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import retried
from certlake.ct.client.reader import LogReader, ProofRefused
from certlake.ct.compact import CompactRange
from certlake.ct.errors import FetchError
from certlake.ct.verify import TreeHead, range_in_head, range_root
from certlake.lake.heads_rows import HeadKind, HeadRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignedHead:
    """The head a log's ranges are checked against, and where it came from."""

    head: TreeHead
    fresh: bool  # asked of the log by this job (no stored verified head covered the ceiling)

    @property
    def source(self) -> str:
        how = "a fresh head from the log" if self.fresh else "the stored verified head"
        return f"{how} ({self.head.size})"


async def head_for(
    reader: LogReader,
    ceiling: int,
    stored: Mapping[str, TreeHead],
    policy: RetryPolicy,
    on_error: Callable[[FetchError, int], None] | None = None,
) -> SignedHead | str:
    """The head to check a job against, or why there is none (the log did not answer)."""
    head = stored.get(reader.source.url)
    if head is not None and head.size >= ceiling:
        return SignedHead(head, fresh=False)
    try:
        fresh = await retried(reader.latest_head, policy, on_error=on_error)
    except FetchError as e:
        return f"no signed head: {e}"
    if fresh.size < ceiling:
        return f"the log's tree head ({fresh.size}) is below the ranges ({ceiling})"
    return SignedHead(fresh, fresh=True)


async def check_range(
    reader: LogReader,
    signed: SignedHead,
    leaves: CompactRange,
    first_leaf: bytes,
    policy: RetryPolicy,
) -> HeadRecord:
    """Whether the downloaded `leaves` are in the tree of `signed`: a record either way. Raises
    FetchError when the log does not give its proofs (retried as any read)."""
    url, head = reader.source.url, signed.head
    first, end = leaves.begin, leaves.end
    try:
        prefix = await retried(lambda: reader.prefix(first, head, first_leaf), policy)
        assert prefix is not None  # the head is past the range's first entry
        proof: list[bytes] = []
        if end != head.size:
            proof = await retried(lambda: reader.consistency(end, head), policy)
    except ProofRefused as e:
        return _mismatch(url, head, first, end, e.computed, str(e))
    if range_in_head(prefix, leaves, head, proof):
        detail = f"entries [{first}, {end}) as downloaded are in the tree of {signed.source}"
        return HeadRecord.range_verified(url, head, first, end, detail)
    computed = range_root(prefix, leaves)
    return _mismatch(
        url,
        head,
        first,
        end,
        computed,
        f"entries [{first}, {end}) as downloaded are not in the tree of {signed.source}: their "
        f"root at {end} is {computed.hex()}, and the log's consistency proof to its signed root "
        "does not hold",
    )


def _mismatch(
    url: str, head: TreeHead, first: int, end: int, computed: bytes, detail: str
) -> HeadRecord:
    log.error(
        "backfilled range does not verify",
        extra={"log": url, "range": f"[{first}, {end})", "tree_size": head.size, "detail": detail},
    )
    return HeadRecord(
        url,
        HeadKind.MISMATCH,
        head,
        detail,
        computed_root=computed,
        first_index=first,
        end_index=end,
    )
