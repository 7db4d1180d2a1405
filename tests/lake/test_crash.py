"""kill -9 of a process feeding the sink, at random instants, then a restart from the archive's
cursor: every index ends up in the table or recorded as unparseable, and none twice; and every
archived row ends up in the domain index, once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from deltalake import DeltaTable

from certlake.lake import domains
from certlake.lake.table import read_skipped
from certlake.lake.txn import SkipKind, app_id
from certlake.query.spec import domain_key

from .conftest import LOG_A, LOG_B
from .helpers import table_keys

CHILD = Path(__file__).with_name("sink_child.py")
TARGET = 400


def _cursor(table: str) -> int:
    if not DeltaTable.is_deltatable(table):
        return 0
    return DeltaTable(table).transaction_version(app_id(LOG_A)) or 0


def _child(table: str, start: int, stop: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), table, str(start), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_kill_9_at_random_instants_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    table = str(tmp_path / "archive")
    rng = random.Random(20261122)
    kills = 0
    for _ in range(5):
        committed = _cursor(table)
        # The state file may lag the archive: resume a little before the committed cursor.
        start = max(0, committed - rng.randrange(0, 20))
        child = _child(table, start, TARGET)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.8))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
    assert kills >= 3
    start = _cursor(table)
    assert start < TARGET, "the crashes should have left work for the last run"
    child = _child(table, max(0, start - 5), TARGET)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.split() == ["ready", "done"]

    keys = table_keys(table)
    assert len(keys) == len(set(keys)), "a (source_url, cert_index) was written twice"
    skipped = read_skipped(table)
    assert {r.kind for r in skipped} == {SkipKind.UNPARSEABLE}
    for url, offset in ((LOG_A, 0), (LOG_B, 1000)):
        rows = {i for u, i in keys if u == url}
        passed = {i for r in skipped if r.source_url == url for i in range(r.start, r.end + 1)}
        expected = set(range(offset, offset + TARGET))
        assert rows | passed == expected
        assert not rows & passed
        assert passed == {i for i in expected if i % 13 == 0}
        assert DeltaTable(table).transaction_version(app_id(url)) == offset + TARGET

    # The domain index, caught up behind the killed writers, holds every archived row's names
    # once: the last, clean run left it covering the archive's last version.
    archive = DeltaTable(table)
    index = domains.open_index(table, None)
    assert domains.covered_version(index) == archive.version()
    assert index is not None
    entries = index.to_pyarrow_table().to_pylist()
    got = Counter((e["key"], e["cert_index"], e["source_url"]) for e in entries)
    assert max(got.values()) == 1, "an index entry written twice"
    want = {
        (domain_key(name), r["cert_index"], r["source_url"])
        for r in archive.to_pyarrow_table(
            columns=["cert_index", "source_url", "all_domains"]
        ).to_pylist()
        for name in r["all_domains"]
    }
    assert set(got) == want
