"""The merge's pure parts: deciding a window from its keys, and comparing table locations."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.lake.location import (
    Location,
    TableLocationError,
    local_path,
    object_location,
)
from certlake.merge.keys import MergeKeyError, WindowKeys

A = "https://a.example/log"
B = "https://b.example/log"


def window(rows: list[tuple[str, int]]) -> WindowKeys:
    urls = pa.array([u for u, _ in rows], pa.string())
    return WindowKeys.build([(urls, pa.array([i for _, i in rows], pa.int64()))])


def mark(keys: WindowKeys, rows: list[tuple[str, int]]) -> None:
    keys.mark_present(
        pa.array([u for u, _ in rows], pa.string()), pa.array([i for _, i in rows], pa.int64())
    )


def test_first_row_of_each_key_is_kept_and_rows_in_main_are_not() -> None:
    rows = [(A, 5), (B, 5), (A, 5), (A, 6), (B, 7), (A, 6), (A, 9)]
    keys = window(rows)
    assert (keys.rows, keys.distinct, keys.duplicates) == (7, 5, 2)
    mark(keys, [(A, 9), (B, 100), ("https://other.example", 5)])
    assert keys.already_present == 1
    assert keys.insert_mask().to_pylist() == [True, True, False, True, True, False, False]


def test_main_keys_arrive_in_chunks_dictionary_encoded_and_repeated() -> None:
    keys = window([(A, 1), (A, 2), (B, 1), (B, 2)])
    keys.mark_present(pa.array([B, A, B]).dictionary_encode(), pa.array([2, 7, 2], pa.int64()))
    keys.mark_present(pa.array([A], pa.string()), pa.array([1], pa.int64()))
    assert keys.already_present == 2
    assert keys.insert_mask().to_pylist() == [False, True, True, False]


def test_segments_split_a_log_at_its_largest_holes() -> None:
    keys = window([(A, 10), (A, 12), (A, 11), (A, 500), (B, 3), (A, 520)])
    assert keys.segments(max_segments=3) == [(A, 10, 12), (A, 500, 520), (B, 3, 3)]
    assert keys.segments(max_segments=9) == [(A, 10, 12), (A, 500, 500), (A, 520, 520), (B, 3, 3)]
    assert keys.segments(max_segments=2) == [(A, 10, 520), (B, 3, 3)]
    assert keys.segments(max_segments=1) == [(A, 10, 520), (B, 3, 3)]  # one per log at least
    assert keys.url_bounds() == [(A, 10, 520), (B, 3, 3)]


def test_empty_window() -> None:
    keys = window([])
    assert (keys.rows, keys.distinct, keys.already_present) == (0, 0, 0)
    assert keys.segments(10) == [] and keys.url_bounds() == []
    assert keys.insert_mask().to_pylist() == []


def test_null_keys_and_mismatched_lengths_are_typed_errors() -> None:
    with pytest.raises(MergeKeyError):
        WindowKeys.build([(pa.array([A, None]), pa.array([1, 2], pa.int64()))])
    with pytest.raises(MergeKeyError):
        WindowKeys.build([(pa.array([A]), pa.array([1, 2], pa.int64()))])


keys_strategy = st.lists(st.tuples(st.sampled_from([A, B, "c"]), st.integers(0, 40)), max_size=60)


@given(
    staging=keys_strategy,
    main=keys_strategy,
    chunk=st.integers(1, 7),
    max_segments=st.integers(1, 12),
)
def test_insert_mask_matches_a_plain_model(
    staging: list[tuple[str, int]], main: list[tuple[str, int]], chunk: int, max_segments: int
) -> None:
    # staging arrives in parts (row groups), some with dictionary-encoded URLs
    parts = []
    for n, k in enumerate(range(0, len(staging), chunk + 1)):
        part = staging[k : k + chunk + 1]
        urls = pa.array([u for u, _ in part], pa.string())
        parts.append(
            (
                urls.dictionary_encode() if n % 2 else urls,
                pa.array([i for _, i in part], pa.int64()),
            )
        )
    keys = WindowKeys.build(parts)
    for k in range(0, len(main), chunk):
        mark(keys, main[k : k + chunk])
    seen: set[tuple[str, int]] = set()
    expected = []
    for key in staging:
        expected.append(key not in seen and key not in set(main))
        seen.add(key)
    assert keys.insert_mask().to_pylist() == expected
    assert keys.already_present == len(set(staging) & set(main))
    assert keys.duplicates == len(staging) - len(set(staging))
    segments = keys.segments(max_segments)
    assert len(segments) <= max(max_segments, len({u for u, _ in staging}))
    for url, i in staging:  # every key lies in a segment of its log
        assert any(u == url and lo <= i <= hi for u, lo, hi in segments)
    for u, lo, hi in segments:  # and every segment starts and ends at a key
        assert (u, lo) in set(staging) and (u, hi) in set(staging)


# --- locations ------------------------------------------------------------------------------------


def test_local_spellings() -> None:
    assert local_path("data/x") == "data/x"
    assert local_path("file:///srv/lake/main/") == "/srv/lake/main/"
    assert local_path("file://localhost/srv/a%20b") == "/srv/a b"
    assert local_path("s3://bucket/x") is None
    with pytest.raises(TableLocationError):
        local_path("file://otherhost/srv/x")


def test_relations() -> None:
    main = Location.local("/srv/lake/main")
    assert Location.local("/srv/lake/main/").relation(main) == "same"
    assert Location.local("/srv/lake/main/staging").relation(main) == "inside"
    assert Location.local("/srv/lake").relation(main) == "contains"
    assert Location.local("/srv/lake/main2").relation(main) is None
    assert object_location("s3://b/srv/lake/main").relation(main) is None
    with pytest.raises(TableLocationError):
        Location.local("relative/path")


def test_object_store_keys_are_normalized() -> None:
    main = object_location("s3://bucket/lake/main")
    for spelling in (
        "s3://bucket/lake/main/",
        "s3://bucket//lake/main",
        "s3://bucket/lake/x/../main",
    ):
        assert object_location(spelling).relation(main) == "same"
    assert object_location("s3://bucket/lake/main-staging").relation(main) is None
    assert object_location("s3://other/lake/main").relation(main) is None
    assert str(main) == "s3://bucket/lake/main"
    with pytest.raises(TableLocationError):
        object_location("gs://bucket/lake")
