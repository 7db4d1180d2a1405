"""Backfill verifies what it writes: each range fetched is proven to be in a signed head of its
log (the one the live server verified and recorded beside the archive, or else a fresh one), and
a range that is not is said so (summary, exit code, the archive's table of heads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backfill.conftest import SIZE, Lake
from certlake.ct.verify import TreeHead
from certlake.lake.heads import append_heads, read_heads
from certlake.lake.heads_rows import HeadKind, HeadRecord
from certlake.testlog.faults import Endpoint

HEADS = (Endpoint.GET_STH, Endpoint.CHECKPOINT)


def _summary(lake: Lake, *args: str, config: Path | None = None) -> tuple[int, dict[str, Any]]:
    path = lake.tmp / "summary.json"
    result = lake.run("backfill", "--summary-json", str(path), *args, config=config)
    return result.returncode, {log["url"]: log for log in json.loads(path.read_text())["logs"]}


def _honest_head(lake: Lake, name: str) -> TreeHead:
    sth = lake.log.bg.call(lambda s: s.logs[name].head.sth)
    return TreeHead(sth.tree_size, sth.root_hash, sth.timestamp_ms, sth.signature)


def test_ranges_are_verified_against_the_head_the_live_server_stored(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(250, 270), 700])
    lake.punch(static, [*range(500, 520), 1098])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    append_heads(
        str(lake.main),
        None,
        [
            HeadRecord.verified(rfc, _honest_head(lake, "rfc6962")),
            HeadRecord.verified(static, _honest_head(lake, "static")),
        ],
    )
    code, logs = _summary(lake)
    assert code == 0
    # No log was asked for a head: the stored ones covered the ceilings.
    assert lake.log.requests(*HEADS) == 0
    for url, fetched in ((rfc, 21), (static, 21)):
        assert logs[url]["verified_against"] == f"the stored verified head ({SIZE})"
        assert logs[url]["verified"] == fetched == logs[url]["fetched"]
    ranges = [r for r in read_heads(str(lake.main)) if r.kind is HeadKind.RANGE_VERIFIED]
    covered = {(r.source_url, i) for r in ranges for i in range(r.first_index, r.end_index)}
    assert covered == {(rfc, i) for i in [*range(250, 270), 700]} | {
        (static, i) for i in [*range(500, 520), 1098]
    }
    assert all(r.head.size == SIZE for r in ranges)


def test_a_stored_head_the_entries_do_not_fit_is_evidence(lake: Lake) -> None:
    """The check is real: against a head with another root, nothing verifies."""
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, list(range(250, 270)))
    lake.ceilings(rfc6962=SIZE)
    honest = _honest_head(lake, "rfc6962")
    wrong = TreeHead(SIZE, bytes(32), honest.timestamp_ms, honest.signature)
    append_heads(str(lake.main), None, [HeadRecord.verified(rfc, wrong)])
    code, logs = _summary(lake)
    assert code == 1
    assert logs[rfc]["verified"] == 0 and logs[rfc]["fetched"] == 20
    (left,) = logs[rfc]["unverified"]
    assert (left["start"], left["end"]) == (250, 269)
    assert "does not lead to the signed root" in left["reason"]
    # The rows are written all the same, and the evidence is kept beside them.
    assert all(lake.keys(lake.main)[(rfc, i)] == 1 for i in range(250, 270))
    (evidence,) = [r for r in read_heads(str(lake.main)) if r.is_evidence]
    assert (evidence.kind, evidence.first_index, evidence.end_index) == (
        HeadKind.MISMATCH,
        250,
        270,
    )


def test_a_tampered_entry_in_a_backfilled_range_is_caught(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(250, 270), *range(600, 610)])
    lake.punch(static, list(range(500, 520)))
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("corrupt:at=605,mode=tamper,log=rfc6962", "corrupt:at=510,mode=tamper")
    result = lake.run("backfill")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "entries not verified" in line]
    assert len(lines) == 2 and any(f"log={rfc}" in line and "600" in line for line in lines)
    assert any(f"log={static}" in line and "500" in line for line in lines)
    assert "backfilled range does not verify" in result.stderr
    records = read_heads(str(lake.main))
    evidence = {(r.source_url, r.first_index, r.end_index) for r in records if r.is_evidence}
    assert evidence == {(rfc, 600, 610), (static, 500, 520)}
    verified = {(r.source_url, r.first_index) for r in records if not r.is_evidence}
    assert verified == {(rfc, 250)}


def test_without_verification_no_head_is_asked_for(lake: Lake) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, list(range(250, 270)))
    lake.ceilings(rfc6962=SIZE)
    code, logs = _summary(lake, config=lake.config(ct_log={"verify": False}))
    assert code == 0
    assert lake.log.requests(*HEADS) == 0
    assert logs[rfc]["verified"] == 0 and logs[rfc]["verified_against"] is None
    assert read_heads(str(lake.main)) == []
