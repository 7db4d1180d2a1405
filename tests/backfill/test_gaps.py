"""Gap arithmetic (pure): runs, coalescing, complements, splitting, windows, the plan."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.backfill.gaps import (
    NOT_IN_STATE,
    NOT_IN_TABLE,
    GapInputError,
    LogTarget,
    Runs,
    RunSet,
    build_plan,
    catch_up_window,
    coalesce,
    complement,
    format_plan_table,
    historical_window,
    keyed_runs,
    missing_ranges,
    runs_of,
    select_logs,
    split_ranges,
)

I64 = 2**63 - 1
indices = st.lists(st.integers(0, 120), max_size=80)


def expand(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> list[int]:
    return [i for start, end in ranges for i in range(start, end + 1)]


def assert_coalesced(ranges: list[tuple[int, int]]) -> None:
    for start, end in ranges:
        assert start <= end
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start > end + 1, f"{ranges} not coalesced"


def run_pairs(runs: Runs) -> list[tuple[int, int]]:
    return list(zip(runs.starts.to_pylist(), runs.ends.to_pylist(), strict=True))


# --- examples -------------------------------------------------------------------------------------


def test_missing_ranges_between_and_around_present_indices() -> None:
    assert missing_ranges([12, 10, 11, 15, 16, 15], 10, 20) == [(13, 14), (17, 20)]
    assert missing_ranges([], 3, 5) == [(3, 5)]
    assert missing_ranges([3, 4, 5], 3, 5) == []
    assert missing_ranges([1], 5, 4) == []


def test_hole_straddling_either_bound_is_found_up_to_the_bound() -> None:
    # present 5 and 30; the hole 6..29 crosses both bounds of [8, 19]
    assert missing_ranges([5, 30], 8, 19) == [(8, 19)]
    assert missing_ranges([5, 12, 30], 8, 19) == [(8, 11), (13, 19)]


def test_indices_at_the_int64_limit_do_not_overflow() -> None:
    assert missing_ranges([I64 - 5, I64], I64 - 6, 2**64 - 1) == [
        (I64 - 6, I64 - 6),
        (I64 - 4, I64 - 1),
        (I64 + 1, 2**64 - 1),
    ]
    both = coalesce([runs_of([I64 - 1]), runs_of([I64])])
    assert run_pairs(both) == [(I64 - 1, I64)]


def test_windows() -> None:
    runs = runs_of([10, 11, 25])
    assert catch_up_window(runs, 20) == (10, 19)  # capped at the ceiling
    assert catch_up_window(runs, 100) == (10, 25)  # nothing after max
    assert catch_up_window(runs, 10) is None  # nothing below the ceiling
    assert catch_up_window(runs_of([]), 10) is None
    assert historical_window(5, 20) == (5, 19)
    assert historical_window(20, 20) is None
    with pytest.raises(GapInputError):
        historical_window(-1, 20)


def test_split_ranges_cuts_large_ranges_only() -> None:
    assert split_ranges([(0, 9), (20, 21)], 4) == [(0, 3), (4, 7), (8, 9), (20, 21)]
    with pytest.raises(GapInputError):
        split_ranges([(0, 9)], 0)
    with pytest.raises(GapInputError):
        split_ranges([(5, 4)], 3)


def test_invalid_inputs_raise_typed_errors() -> None:
    with pytest.raises(GapInputError):
        complement(runs_of([1]), -1, 5)
    with pytest.raises(GapInputError):
        runs_of(pa.array([1, None], pa.int64()))
    with pytest.raises(GapInputError):
        keyed_runs(pa.array([0]), pa.array([1, 2]))


def test_select_logs_filters_by_url_or_name_and_skips_logs_without_ceiling() -> None:
    ceilings = {"https://a.example/2025": 10, "https://b.example/x": 5}
    logs = {"https://a.example/2025": "Alpha", "https://b.example/x": "Beta", "https://c/y": "G"}
    targets, skipped = select_logs(ceilings, logs)
    assert [t.url for t in targets] == ["https://a.example/2025", "https://b.example/x"]
    assert skipped[0].url == "https://c/y" and skipped[0].reason == NOT_IN_STATE
    targets, skipped = select_logs(ceilings, logs, "Bet")
    assert [t.url for t in targets] == ["https://b.example/x"] and not skipped
    targets, _ = select_logs(ceilings, logs, "a.example")
    assert [(t.name, t.ceiling) for t in targets] == [("Alpha", 10)]
    targets, skipped = select_logs(ceilings, None, "example")
    assert {t.url for t in targets} == set(ceilings) and not skipped
    with pytest.raises(GapInputError):
        select_logs({"https://a": -1})


def test_build_plan_modes() -> None:
    a, b = LogTarget("https://a", "A", 20), LogTarget("https://b", None, 8)
    present = {"https://a": runs_of([10, 11, 15, 30])}
    plan = build_plan([a, b], [], present, None, split_size=2)
    assert plan.mode == "catch-up"
    assert [g.url for g in plan.logs] == ["https://a"]
    assert plan.logs[0].missing == ((12, 14), (16, 19))
    assert plan.logs[0].work == ((12, 13), (14, 14), (16, 17), (18, 19))
    assert [(s.url, s.reason) for s in plan.skipped] == [("https://b", NOT_IN_TABLE)]
    assert plan.missing_count == 7
    assert plan.work_items[0] == ("https://a", 12, 13)

    plan = build_plan([a, b], [], present, 9)
    assert plan.mode == "historical"
    assert [g.missing for g in plan.logs] == [((9, 9), (12, 14), (16, 19)), ()]
    assert plan.logs[1].window is None  # --from 9 is past b's ceiling of 8
    plan = build_plan([a, b], [], present, 0)
    assert plan.logs[1].missing == ((0, 7),)  # absent from the table: the whole range


def test_format_plan_table_lists_logs_skips_and_totals() -> None:
    targets, skipped = select_logs({"https://a": 20}, {"https://a": "Alpha", "https://z": None})
    plan = build_plan(targets, skipped, {"https://a": runs_of([1, 5, 7, 12])}, None)
    text = format_plan_table(plan)
    row = next(line for line in text.splitlines() if line.startswith("Alpha"))
    assert row.split()[2:] == ["20", "1-12", "8", "3", "3", "2-4,", "6,", "8-11"]
    assert "skipped: https://z: not in the state file" in text
    assert "total: 8 missing entries in 3 ranges" in text


# --- properties -----------------------------------------------------------------------------------


@given(indices, st.integers(0, 130), st.integers(0, 130))
def test_missing_ranges_match_brute_force(present: list[int], lo: int, hi: int) -> None:
    got = missing_ranges(present, lo, hi)
    assert_coalesced(got)
    assert expand(got) == [i for i in range(lo, hi + 1) if i not in set(present)]


@given(st.lists(indices, max_size=6))
def test_coalesce_is_the_union(bags: list[list[int]]) -> None:
    merged = coalesce(runs_of(bag) for bag in bags)
    pairs = run_pairs(merged)
    assert_coalesced(pairs)
    assert expand(pairs) == sorted({i for bag in bags for i in bag})
    assert merged.count() == len({i for bag in bags for i in bag})


@given(st.lists(indices, max_size=12), st.integers(1, 4))
def test_run_set_compaction_keeps_every_index(bags: list[list[int]], compact_at: int) -> None:
    acc = RunSet(compact_at=compact_at)
    for bag in bags:
        acc.add(runs_of(bag))
    assert expand(run_pairs(acc.runs())) == sorted({i for bag in bags for i in bag})


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=80))
def test_keyed_runs_are_per_key_runs(rows: list[tuple[int, int]]) -> None:
    keys, starts, ends = keyed_runs(
        pa.array([k for k, _ in rows], pa.int32()), pa.array([v for _, v in rows], pa.int64())
    )
    got: dict[int, list[tuple[int, int]]] = {}
    for k, s, e in zip(keys.to_pylist(), starts.to_pylist(), ends.to_pylist(), strict=True):
        got.setdefault(k, []).append((s, e))
    for k, ranges in got.items():
        assert_coalesced(ranges)
        assert expand(ranges) == sorted({v for key, v in rows if key == k})
    assert set(got) == {k for k, _ in rows}


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), max_size=8), st.integers(1, 9))
def test_split_ranges_preserves_indices(spans: list[tuple[int, int]], size: int) -> None:
    ranges = [(s, s + n) for s, n in spans]
    pieces = split_ranges(ranges, size)
    assert expand(pieces) == expand(ranges)
    assert all(e - s + 1 <= size for s, e in pieces)
