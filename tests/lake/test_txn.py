"""`plan_commit`: which rows a commit writes and which cursors it records; and the arithmetic of
skipped ranges (what a merge adds to main's record)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.certs.message import CertMessage
from certlake.lake.txn import SkipKind, SkippedRange, app_id, plan_commit, skips_to_add
from certlake.ranges import subtract_ranges

from .conftest import LOG_A, LOG_B, make_message


def _unparseable(url: str, lo: int, hi: int) -> SkippedRange:
    return SkippedRange(url, lo, hi, SkipKind.UNPARSEABLE, "bad bytes")


def test_app_id_names_the_log() -> None:
    assert app_id(LOG_A) == f"certlake:{LOG_A}"


def test_first_commit_of_a_log_takes_everything_and_sets_the_cursor() -> None:
    items = [make_message(i) for i in range(5, 9)]
    plan = plan_commit(items, {LOG_A: None})
    assert plan.rows == items
    assert plan.versions == {LOG_A: 9}
    assert plan.skipped == [] and plan.duplicates == 0


def test_rows_below_the_committed_cursor_are_left_out() -> None:
    items = [make_message(i) for i in range(0, 10)]
    plan = plan_commit(items, {LOG_A: 6})
    assert [m.cert_index for m in plan.rows] == [6, 7, 8, 9]
    assert plan.duplicates == 6 and plan.versions == {LOG_A: 10}


def test_nothing_new_moves_no_cursor() -> None:
    plan = plan_commit([make_message(i) for i in range(3)], {LOG_A: 3})
    assert plan.rows == [] and plan.versions == {} and plan.duplicates == 3


def test_unparseable_ranges_advance_the_cursor_and_are_trimmed() -> None:
    items: list[CertMessage | SkippedRange] = [
        _unparseable(LOG_A, 3, 6),
        make_message(7),
        _unparseable(LOG_A, 8, 8),
    ]
    plan = plan_commit(items, {LOG_A: 5})
    assert [m.cert_index for m in plan.rows] == [7]
    assert plan.skipped == [_unparseable(LOG_A, 5, 6), _unparseable(LOG_A, 8, 8)]
    assert plan.versions == {LOG_A: 9}


def test_holes_are_recorded_as_gaps_for_backfill() -> None:
    items = [make_message(i) for i in (10, 11, 15)]
    plan = plan_commit(items, {LOG_A: 8})
    gaps = [(r.start, r.end) for r in plan.skipped if r.kind is SkipKind.GAP]
    assert gaps == [(8, 9), (12, 14)]
    assert all(r.kind.refill for r in plan.skipped)
    assert plan.versions == {LOG_A: 16}


def test_logs_are_independent() -> None:
    items = [make_message(0), make_message(50, LOG_B), make_message(1), make_message(51, LOG_B)]
    plan = plan_commit(items, {LOG_A: 1, LOG_B: None})
    assert [(m.source_url, m.cert_index) for m in plan.rows] == [
        (LOG_B, 50),
        (LOG_A, 1),
        (LOG_B, 51),
    ]
    assert plan.versions == {LOG_A: 2, LOG_B: 52}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    committed=st.dictionaries(st.sampled_from([LOG_A, LOG_B]), st.integers(0, 30)),
)
def test_every_index_below_the_new_cursor_is_committed_recorded_or_was_already(
    data: st.DataObject, committed: dict[str, int]
) -> None:
    """The invariant behind "archive and state agree": after the commit, every index of a log
    below its cursor is a row (now or before) or a recorded range, and no row is written twice."""
    per_log: dict[str, list[CertMessage | SkippedRange]] = {}
    for url in (LOG_A, LOG_B):
        items: list[CertMessage | SkippedRange] = []
        index = data.draw(st.integers(0, 40))
        for _ in range(data.draw(st.integers(0, 12))):
            index += data.draw(st.integers(0, 3))  # holes: indices never offered
            if data.draw(st.booleans()):
                items.append(make_message(index, url))
                index += 1
            else:
                width = data.draw(st.integers(1, 3))
                items.append(_unparseable(url, index, index + width - 1))
                index += width
        per_log[url] = items
    # Each log's own order is kept; the logs interleave arbitrarily.
    tags = data.draw(st.permutations([u for u, items in per_log.items() for _ in items]))
    queues = {u: iter(items) for u, items in per_log.items()}
    arrival = [next(queues[u]) for u in tags]
    known = {u: committed.get(u) for u in (LOG_A, LOG_B)}
    plan = plan_commit(arrival, known)

    for url, offered in per_log.items():
        rows = [m.cert_index for m in plan.rows if m.source_url == url]
        assert len(rows) == len(set(rows))
        floor = known[url]
        assert all(floor is None or i >= floor for i in rows)
        covered = set(rows)
        for r in plan.skipped:
            if r.source_url == url:
                assert floor is None or r.start >= floor
                covered.update(range(r.start, r.end + 1))
        if url not in plan.versions:
            assert covered == set()
            continue
        first = offered[0]
        start = floor if floor is not None else (
            first.cert_index if isinstance(first, CertMessage) else first.start
        )  # fmt: skip
        assert covered == set(range(start, plan.versions[url]))


def test_subtract_ranges_keeps_exactly_the_uncovered_indices() -> None:
    ranges = [(0, 9), (20, 29), (31, 31), (40, 45)]
    taken = [(3, 4), (8, 21), (25, 25), (31, 31), (44, 60), (-5, -1)]
    expected = {i for lo, hi in ranges for i in range(lo, hi + 1)} - {
        i for lo, hi in taken for i in range(lo, hi + 1)
    }
    got = subtract_ranges(ranges, taken)
    assert got == [(0, 2), (5, 7), (22, 24), (26, 29), (40, 43)]
    assert {i for lo, hi in got for i in range(lo, hi + 1)} == expected
    assert subtract_ranges([(5, 9)], []) == [(5, 9)]
    assert subtract_ranges([], [(1, 2)]) == []


def test_skips_to_add_is_what_the_record_lacks_per_log_and_kind() -> None:
    a, b = "https://a.example/", "https://b.example/"
    staging = [
        SkippedRange(a, 3, 5, SkipKind.UNPARSEABLE, "bad DER"),
        SkippedRange(a, 6, 8, SkipKind.UNPARSEABLE, "bad leaf"),  # adjacent: coalesced
        SkippedRange(a, 7, 7, SkipKind.MALFORMED, "too long"),
        SkippedRange(b, 3, 5, SkipKind.UNPARSEABLE, "bad DER"),
    ]
    main = [
        SkippedRange(a, 4, 4, SkipKind.UNPARSEABLE, "bad DER"),
        SkippedRange(a, 7, 7, SkipKind.DROPPED, "buffer full"),  # another kind: no cover
        SkippedRange(b, 0, 9, SkipKind.UNPARSEABLE, "bad DER"),
    ]
    assert skips_to_add(staging, main) == [
        SkippedRange(a, 7, 7, SkipKind.MALFORMED, "too long"),
        SkippedRange(a, 3, 3, SkipKind.UNPARSEABLE, "bad DER"),
        SkippedRange(a, 5, 8, SkipKind.UNPARSEABLE, "bad DER"),
    ]
    assert skips_to_add(staging, [*main, *skips_to_add(staging, main)]) == []
