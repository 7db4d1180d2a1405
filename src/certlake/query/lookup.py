"""A certificate by its hash, from the archive (`/api/cert/<key>` once the live cache has
forgotten it).

The key is a SHA-256 (64 hex digits) or a SHA-1, which is also certstream's `fingerprint` (40),
with or without colons, any case; the archive stores them as certstream shows them
(`AB:CD:…`). Hashes are random, so no file statistics and no sort order narrow the search: the
lookup reads one column of every data file, the newest files first (a certificate asked for is
most often a recent one), and stops at the first match. Its cost is a column scan of the
archive, bounded by the query timeout.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from certlake.certs.message import archived_message
from certlake.lake.snapshot import Snapshot
from certlake.query.search import BATCH_ROWS, Deadline

_COLUMNS: Final = (
    "cert_index",
    "cert_link",
    "update_type",
    "seen",
    "source_name",
    "source_url",
    "as_der",
    "chain",
)


def hash_column(key: str) -> tuple[str, str]:
    """The archive column a hash key is looked up in, and the key as that column holds it."""
    digits = key.replace(":", "").upper()
    column = "sha256" if len(digits) == 64 else "sha1"
    return column, ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def find_archived(
    uri: str,
    storage_options: Mapping[str, str] | None,
    key: str,
    *,
    timeout_secs: float | None = None,
) -> bytes | None:
    """The full message of the certificate with hash `key` (the first archived entry of it:
    a certificate logged twice has two entries), or None. Raises as `search_page` does."""
    deadline = Deadline(timeout_secs)
    snapshot = Snapshot(uri, storage_options, None, with_index=False)
    column, value = hash_column(key)
    actions = pa.table(snapshot.table.get_add_actions(flatten=True))
    order = pc.sort_indices(actions, [("modification_time", "descending")])
    paths = [str(p) for p in pc.take(actions.column("path"), order).to_pylist()]
    predicate = pc.field(column) == value
    for batch in snapshot.files.scan(paths, _COLUMNS, predicate, BATCH_ROWS):
        deadline.check()
        if batch.num_rows:
            return _message(batch.slice(0, 1).to_pylist()[0])
    return None


def _message(row: dict[str, Any]) -> bytes:
    seen: dt.datetime = row["seen"]
    return archived_message(
        cert_index=row["cert_index"],
        cert_link=row["cert_link"],
        update_type=row["update_type"],
        seen=seen.timestamp(),
        source_name=row["source_name"],
        source_url=row["source_url"],
        as_der=base64.b64decode(row["as_der"]),
        chain=list(row["chain"] or ()),
    )
