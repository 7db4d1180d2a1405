"""The resume ring bounded in bytes as well as in messages: the oldest leave first, and what a
resuming client is told stays exact."""

from __future__ import annotations

import pytest

from certlake.stream.resume import CursorRing, ResumeError, plan_resume

BASE = 1000


def test_bytes_bound_drops_the_oldest_first() -> None:
    ring: CursorRing[bytes] = CursorRing(100, BASE, max_bytes=10, size_of=len)
    for n in range(1, 6):
        ring.append(BASE + n, b"x" * 4)
    # 10 bytes hold two 4-byte items: the newest two
    assert (ring.oldest, ring.newest, ring.bytes) == (BASE + 4, BASE + 5, 8)
    with pytest.raises(KeyError):
        ring.get(BASE + 3)
    assert [c for c, _ in ring.items(BASE + 1, 100)] == [BASE + 4, BASE + 5]
    # a client three messages behind is told exactly how many it lost
    plan = plan_resume(BASE + 1, ring.oldest, ring.newest, BASE)
    assert plan.start == BASE + 4
    assert plan.notice is not None and b'"lost":2' in plan.notice


def test_count_bound_still_applies_and_bytes_follow_it() -> None:
    ring: CursorRing[bytes] = CursorRing(3, BASE, max_bytes=10**6, size_of=len)
    for n in range(1, 8):
        ring.append(BASE + n, b"y" * n)
    assert (ring.oldest, ring.newest) == (BASE + 5, BASE + 7)
    assert ring.bytes == 5 + 6 + 7
    assert [item for _, item in ring.items(BASE, 10)] == [b"y" * 5, b"y" * 6, b"y" * 7]


def test_an_item_larger_than_the_bound_is_still_held_alone() -> None:
    # the newest message is always resumable, whatever its size
    ring: CursorRing[bytes] = CursorRing(10, BASE, max_bytes=5, size_of=len)
    ring.append(BASE + 1, b"a" * 3)
    ring.append(BASE + 2, b"b" * 50)
    assert (ring.oldest, ring.newest, ring.bytes) == (BASE + 2, BASE + 2, 50)


def test_bytes_bound_needs_a_size() -> None:
    with pytest.raises(ResumeError):
        CursorRing(10, BASE, max_bytes=5)
