"""What a run of `certlake serve` left in its archive, checked against the promise
(docs/architecture.md, "Archive and state agree")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable

from certlake.lake.table import read_skipped
from certlake.lake.txn import app_id
from support.procs import read_state


def check_archive(tmp_path: Path, table: Path) -> int:
    """For every log of the state file: no index written twice, and every index from the first
    archived one up to the table's cursor is in the table (or recorded as unparseable in the side
    table); the state file claims no more than the cursor. Returns how many rows the table has."""
    state = read_state(tmp_path)["logs"]
    delta = DeltaTable(str(table))
    rows = delta.to_pyarrow_table(columns=["source_url", "cert_index"])
    skipped = read_skipped(str(table))
    for url, log_state in state.items():
        cursor = delta.transaction_version(app_id(url))
        assert cursor is not None, f"{url}: no cursor in the table"
        assert log_state["current_index"] <= cursor, f"{url}: the state claims more than the table"
        indices = rows.filter(pc.equal(rows["source_url"], url))["cert_index"].to_pylist()
        dupes = [i for i, n in Counter(indices).items() if n > 1]
        assert not dupes, f"{url}: written twice: {sorted(dupes)[:10]} ({len(dupes)} in all)"
        present = set(indices)
        for r in skipped:
            if r.source_url == url:
                # Only unparseable/malformed entries may stand in for rows; the test log serves
                # none here, so any other kind (dropped, gap) would be a loss.
                assert not r.kind.refill, r
                present |= set(range(r.start, r.end + 1))
        assert present, f"{url}: nothing archived"
        missing = sorted(set(range(min(present), cursor)) - present)
        assert not missing, f"{url}: below the cursor but not archived: {missing[:10]}"
    return rows.num_rows
