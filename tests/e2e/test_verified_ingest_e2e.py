"""Verified ingest end to end, with real processes: `certlake testlog` (honest, or lying on
demand) → `certlake serve` with its archive. An honest log is verified up to every head; each
kind of lie is caught at the first head it touches, reported (ERROR line, /api/logs,
/health/deep, /metrics, the archive's table of verified heads), and nothing it touched is ever
marked verified."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from certlake.lake.heads import read_heads
from certlake.lake.heads_rows import HeadKind
from certlake.testlog.ecosystem import ecosystem_logs
from support.live import full_stream, get_json, grow, heads_known, set_faults
from support.procs import Procs, read_state, server_config
from support.waiting import until

INITIAL = 40


def _archive(tmp_path: Path) -> dict[str, object]:
    return {
        "enabled": True,
        "table_path": str(tmp_path / "archive"),
        "batch_size": 100,
        "flush_interval_secs": 1,
        "compaction_interval_secs": 0,
    }


async def _logs(server: str) -> dict[str, dict[str, object]]:
    doc = await get_json(f"{server}/api/logs")
    return {log["url"]: log for log in doc["logs"]}


async def _metric(server: str, name: str) -> dict[str, float]:
    """Each sample of metric `name`, keyed by its label text."""
    async with aiohttp.ClientSession() as s, s.get(f"{server}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


async def test_an_honest_log_is_verified_up_to_every_head_and_the_archive_says_so(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", str(INITIAL), "--batch-cap", "32", "--seed", "3")
    table = tmp_path / "archive"
    server = procs.serve(
        server_config(tmp_path, f"{testlog.url}/log_list.json", delta_sink=_archive(tmp_path))
    )
    await until(lambda: heads_known(server.url, 2), 30, "both watchers at the tree head")
    final = INITIAL + 3 * 200
    async with full_stream(server.url) as seen:
        for _ in range(3):
            await grow(testlog.url, 200)
            await asyncio.sleep(0.3)

        async def verified_to_the_end() -> bool:
            logs = await _logs(server.url)
            return all(
                log["verification"] == "ok" and log["verified_index"] == final
                for log in logs.values()
            )

        await until(verified_to_the_end, 60, "both logs verified up to their newest head")
    assert len(seen) == 2 * (final - INITIAL)
    deep = await get_json(f"{server.url}/health/deep")
    assert deep["inconsistent_logs"] == [] and deep["status"] == "healthy"
    assert all(log["verification"] == "ok" for log in deep["logs"])
    state = await _metric(server.url, "certlake_log_verification")
    assert [k for k, v in state.items() if v == 1] == [
        k for k in state if 'state="ok"' in k
    ] and len(state) == 6
    failures = await _metric(server.url, "certlake_verification_failures_total")
    assert failures == {}
    assert server.stop() == 0

    urls = sorted(read_state(tmp_path)["logs"])
    records = read_heads(str(table))
    assert {r.kind for r in records} == {HeadKind.VERIFIED}
    for url in urls:
        newest = max(r.head.size for r in records if r.source_url == url)
        assert newest == final, (url, newest)
        saved = read_state(tmp_path)["logs"][url]["verified"]
        assert saved["tree_size"] == final and not saved["inconsistent"]
    assert "log inconsistent" not in server.log.read_text()


async def test_each_kind_of_lie_is_caught_at_the_first_head_it_touches(
    procs: Procs, tmp_path: Path
) -> None:
    """Eight logs of both protocols: a tampered entry, a head whose root is not its entries',
    a split view (two roots for one size), a head inconsistent with the verified ones, each on
    one RFC 6962 and one static-ct log; the rest honest."""
    names = [log.name for log in ecosystem_logs(10, 2, static_share=0.5)]
    rfc = [n for n in names if n.startswith("rfc6962")]
    static = [n for n in names if n.startswith("static")]
    lies = {
        "tamper": "corrupt:at=100,mode=tamper",
        "root": "lie:at=100",
        "fork": "lie:mode=fork,at=100",
    }
    plan = {kind: (rfc[i], static[i]) for i, kind in enumerate(lies)}
    honest = (rfc[3], static[3])
    late = (rfc[4], static[4])  # lies once the honest heads are verified
    testlog = procs.testlog(
        "--logs", "10", "--operators", "2", "--static-share", "0.5",
        "--initial-size", str(INITIAL), "--batch-cap", "32", "--seed", "8",
    )  # fmt: skip
    table = tmp_path / "archive"
    server = procs.serve(
        server_config(tmp_path, f"{testlog.url}/log_list.json", delta_sink=_archive(tmp_path))
    )
    await until(lambda: heads_known(server.url, 10), 30, "every watcher at the tree head")
    by_name = {url.split("/")[3]: url for url in await _logs(server.url)}
    await set_faults(
        testlog.url,
        [f"{lies[kind]},log={name}" for kind, pair in plan.items() for name in pair],
    )
    await grow(testlog.url, 300)  # one head at 340 for every log: leaf 100 is in it

    async def verified(names: tuple[str, ...], size: int) -> bool:
        logs = await _logs(server.url)
        return all(logs[by_name[n]]["verified_index"] == size for n in names)

    await until(lambda: verified((*honest, *late), INITIAL + 300), 60, "honest logs verified")

    async def caught(names: list[str]) -> bool:
        logs = await _logs(server.url)
        return all(logs[by_name[n]]["verification"] == "inconsistent" for n in names)

    # Before the plan is replaced (which starts the fork's alternation afresh).
    first = [n for pair in plan.values() for n in pair]
    await until(lambda: caught(first), 60, "every lying log found inconsistent")
    # A head inconsistent with the one verified: its root has a leaf below it replaced.
    await set_faults(testlog.url, [f"lie:at=200,log={name}" for name in late])
    await grow(testlog.url, 300)
    lying = [*first, *late]
    await until(lambda: caught(lying), 60, "the late liars found inconsistent")
    await until(lambda: verified(honest, INITIAL + 600), 60, "honest logs verified again")
    logs = await _logs(server.url)
    for name in lying:
        log = logs[by_name[name]]
        assert log["verification_error"], name
        # Nothing the lie touched is verified: leaf 100 is beyond it. (The late liar's heads
        # were honest up to 340, and the fork's first head at 340 was the honest one.)
        limit = INITIAL + 300 if name in (*late, *plan["fork"]) else 100
        assert log["verified_index"] <= limit, (name, log["verified_index"])
    for name in honest:
        assert logs[by_name[name]]["verification"] == "ok"
    deep = await get_json(f"{server.url}/health/deep")
    assert sorted(deep["inconsistent_logs"]) == sorted(by_name[n] for n in lying)
    assert deep["status"] == "degraded"
    failures = await _metric(server.url, "certlake_verification_failures_total")
    suspect = await _metric(server.url, "certlake_log_suspect_range")
    for name in lying:
        assert any(by_name[name] in k for k in failures), name
        if name in plan["tamper"] or name in plan["root"]:
            # The range: from the start (40, a fresh start) to the head it did not match.
            first = suspect[f'{{bound="first",log="{by_name[name]}"}}']
            end = suspect[f'{{bound="end",log="{by_name[name]}"}}']
            assert (first, end) == (INITIAL, INITIAL + 300), (name, first, end)
    assert server.stop() == 0

    text = server.log.read_text()
    records = read_heads(str(table))
    for kind, pair in [*plan.items(), ("late", late)]:
        for name in pair:
            url = by_name[name]
            assert f"log={url}" in text and "log inconsistent" in text
            mine = [r for r in records if r.source_url == url]
            evidence = [r for r in mine if r.is_evidence]
            assert evidence, (kind, name)
            limit = INITIAL + 300 if kind in ("late", "fork") else 100
            good = [r.head for r in mine if r.kind is HeadKind.VERIFIED]
            assert all(h.size <= limit for h in good), (kind, name, good)
            # The lying root is never among the verified ones.
            assert not {r.head.root for r in evidence} & {h.root for h in good}
            first = min(evidence, key=lambda r: r.head.size)
            # Caught at the first head the lie touched. The late lie reaches the head of 340
            # (verified already) if that is asked for again before the log grows: a split view.
            if kind == "late" and first.kind is HeadKind.SPLIT_VIEW:
                assert first.head.size == INITIAL + 300, (name, first)
                continue
            expected = INITIAL + 600 if kind == "late" else INITIAL + 300
            assert first.head.size == expected, (kind, name, first)
            if kind == "fork":
                assert any(r.kind is HeadKind.SPLIT_VIEW for r in evidence), (name, evidence)
            else:
                assert first.kind is HeadKind.MISMATCH, (kind, name, first)
    for name in honest:
        mine = [r for r in records if r.source_url == by_name[name]]
        assert not any(r.is_evidence for r in mine)
        assert max(r.head.size for r in mine) == INITIAL + 600
