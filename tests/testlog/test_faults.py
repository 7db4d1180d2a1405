"""The fault plan on its own: parsing, and which request gets which fault."""

from __future__ import annotations

import gzip
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.testlog.faults import (
    BodyMode,
    CorruptMode,
    DropMode,
    Endpoint,
    Fault,
    FaultKind,
    FaultPlan,
    FaultSpecError,
    LieMode,
    Oversize,
    gzip_padded,
    padded,
)

NOW = 1_700_000_000.0


def test_probability_shorthand_and_defaults() -> None:
    f = Fault.from_spec("429:0.25")
    assert f.kind is FaultKind.RATE_LIMITED
    assert f.p == 0.25
    assert f.n is None
    assert f.retry_after is not None and f.retry_after.header(NOW) == "1"


def test_options_round_trip_through_json() -> None:
    spec = "503:p=0.5,n=3,retry_after=date+7,endpoint=get-entries,endpoint=tile,log=a"
    f = Fault.from_spec(spec)
    assert f.endpoints == {Endpoint.GET_ENTRIES, Endpoint.HASH_TILE}
    assert f.logs == {"a"}
    assert Fault.from_json(f.to_json()) == f


@pytest.mark.parametrize(
    "spec",
    [
        "418",
        "429:p=2",
        "429:n=0",
        "429:n=x",
        "slow:delay=-1",
        "429:delay=1",
        "short:at=3",
        "corrupt",
        "corrupt:at=-1",
        "drop:mode=sideways",
        "503:endpoint=get-everything",
        "429:p=0.1,p=0.2",
        "429:retry_after=soon",
        "400:retry_after=1",
        "gzip-bomb:size=0",
        "gzip-bomb:size=3X",
        "gzip-bomb:size=-1M",
        "gzip-bomb:mode=length",
        "huge-body:mode=sideways",
        "huge-body:rate=fast",
        "lie:at=1,at=2",
        "lie:at=-1",
        "lie:mode=sideways",
        "lie:to=3",
    ],
)
def test_bad_specs_are_rejected_with_a_typed_error(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        Fault.from_spec(spec)


def test_count_limited_fault_fires_exactly_n_times() -> None:
    plan = FaultPlan([Fault.from_spec("503:n=3")])
    statuses = [plan.decide(Endpoint.GET_STH, "x", NOW).status for _ in range(6)]
    assert statuses == [503, 503, 503, None, None, None]


def test_same_seed_same_decisions_and_probability_is_respected() -> None:
    def run(seed: int) -> list[int | None]:
        plan = FaultPlan([Fault.from_spec("429:0.3")], seed=seed)
        return [plan.decide(Endpoint.GET_ENTRIES, "x", NOW).status for _ in range(2000)]

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    hits = first.count(429)
    assert 500 < hits < 700  # 600 expected; the bounds are ~4.6 sigma


def test_retry_after_as_http_date() -> None:
    plan = FaultPlan([Fault.from_spec("429:retry_after=date+30")])
    header = plan.decide(Endpoint.CHECKPOINT, None, NOW).headers["Retry-After"]
    assert parsedate_to_datetime(header).timestamp() == NOW + 30


def test_endpoint_and_log_filters() -> None:
    plan = FaultPlan([Fault.from_spec("502:endpoint=get-entries,log=a")])
    assert plan.decide(Endpoint.GET_STH, "a", NOW).status is None
    assert plan.decide(Endpoint.GET_ENTRIES, "b", NOW).status is None
    assert plan.decide(Endpoint.GET_ENTRIES, "a", NOW).status == 502


def test_log_list_is_reached_only_when_named() -> None:
    plan = FaultPlan([Fault.from_spec("503")])
    assert plan.decide(Endpoint.LOG_LIST, None, NOW).status is None
    named = FaultPlan([Fault.from_spec("503:endpoint=log-list")])
    assert named.decide(Endpoint.LOG_LIST, None, NOW).status == 503


def test_first_status_fault_wins_and_delays_accumulate() -> None:
    plan = FaultPlan(
        [Fault.from_spec("slow:delay=0.5"), Fault.from_spec("504"), Fault.from_spec("429")]
    )
    action = plan.decide(Endpoint.GET_STH, "x", NOW)
    assert action.delay == 0.5
    assert action.status == 504
    assert action.fired == [FaultKind.SLOW, FaultKind.GATEWAY_TIMEOUT]


def test_drop_modes() -> None:
    assert FaultPlan([Fault.from_spec("drop")]).decide(Endpoint.ISSUER, "x", NOW).drop is (
        DropMode.BEFORE
    )
    mid = FaultPlan([Fault.from_spec("drop:mode=mid")]).decide(Endpoint.ISSUER, "x", NOW)
    assert mid.drop is DropMode.MID and mid.status is None


def test_short_applies_to_get_entries_only_and_only_when_it_can_shorten() -> None:
    plan = FaultPlan([Fault.from_spec("short:to=10")])
    assert plan.decide(Endpoint.DATA_TILE, "x", NOW, batch=256).fired == []
    assert plan.decide(Endpoint.GET_ENTRIES, "x", NOW, batch=10).fired == []
    assert plan.decide(Endpoint.GET_ENTRIES, "x", NOW, batch=None).fired == []
    assert plan.decide(Endpoint.GET_ENTRIES, "x", NOW, batch=11).entries == 10


@given(batch=st.integers(min_value=2, max_value=5000), seed=st.integers(0, 2**32))
def test_random_short_is_always_strictly_shorter_and_non_empty(batch: int, seed: int) -> None:
    plan = FaultPlan([Fault.from_spec("short")], seed=seed)
    entries = plan.decide(Endpoint.GET_ENTRIES, "x", NOW, batch=batch).entries
    assert entries is not None and 1 <= entries < batch


def test_corruption_map_per_log() -> None:
    plan = FaultPlan(
        [Fault.from_spec("corrupt:at=5,at=9"), Fault.from_spec("corrupt:at=9,mode=framing,log=a")]
    )
    assert plan.corruption("a") == {5: CorruptMode.DER, 9: CorruptMode.FRAMING}
    assert plan.corruption("b") == {5: CorruptMode.DER, 9: CorruptMode.DER}
    # Content faults never turn a request into an error.
    assert plan.decide(Endpoint.GET_ENTRIES, "a", NOW, batch=20).fired == []


def test_replace_resets_counts_and_seed() -> None:
    plan = FaultPlan([Fault.from_spec("429:n=1")])
    assert plan.decide(Endpoint.GET_STH, "x", NOW).status == 429
    assert plan.decide(Endpoint.GET_STH, "x", NOW).status is None
    plan.replace(plan.faults, seed=3)
    assert plan.seed == 3
    assert plan.to_json()["faults"] == [
        {"kind": "429", "p": 1.0, "n": 1, "retry_after": "1", "remaining": 1}
    ]
    assert plan.decide(Endpoint.GET_STH, "x", NOW).status == 429


@pytest.mark.parametrize("code", [400, 404, 500])
def test_client_and_server_error_storms(code: int) -> None:
    plan = FaultPlan([Fault.from_spec(f"{code}:n=2,endpoint=get-entries")])
    assert plan.decide(Endpoint.GET_STH, "x", NOW).status is None
    actions = [plan.decide(Endpoint.GET_ENTRIES, "x", NOW) for _ in range(3)]
    assert [a.status for a in actions] == [code, code, None]
    assert actions[0].headers == {}  # no Retry-After: nothing tells a reader when to come back


def test_oversize_faults_default_sizes_and_options() -> None:
    bomb = Fault.from_spec("gzip-bomb:endpoint=data-tile")
    assert bomb.kind is FaultKind.GZIP_BOMB
    assert bomb.oversize() == Oversize(4 << 30, gzip=True)
    huge = Fault.from_spec("huge-body:size=300M,mode=length,rate=64K")
    assert huge.oversize() == Oversize(300 << 20, gzip=False, declared=True, rate=64 << 10)
    assert huge.body_mode is BodyMode.LENGTH
    assert Fault.from_spec("huge-body").oversize() == Oversize(512 << 20, gzip=False)
    assert Fault.from_spec("gzip-bomb:size=1g").oversize() == Oversize(1 << 30, gzip=True)
    assert Fault.from_spec("503").oversize() is None
    for fault in (bomb, huge):
        assert Fault.from_json(fault.to_json()) == fault


def test_an_oversize_fault_ends_the_roll() -> None:
    plan = FaultPlan([Fault.from_spec("huge-body:size=2M"), Fault.from_spec("503")])
    action = plan.decide(Endpoint.GET_ENTRIES, "x", NOW)
    assert action.oversize == Oversize(2 << 20, gzip=False)
    assert action.status is None
    assert action.fired == [FaultKind.HUGE_BODY]


@given(plain=st.binary(max_size=200), size=st.integers(0, 1 << 16), chunk=st.integers(1, 4096))
def test_padding_follows_the_answer(plain: bytes, size: int, chunk: int) -> None:
    parts = list(padded(plain, size, chunk))
    assert b"".join(parts) == plain + b" " * max(0, size - len(plain))
    assert max(map(len, parts[1:]), default=0) <= chunk


@given(plain=st.binary(max_size=200), size=st.integers(0, 3 << 20))
def test_the_bomb_is_valid_gzip_of_the_padded_answer(plain: bytes, size: int) -> None:
    want = plain + b" " * max(0, size - len(plain))
    assert gzip.decompress(b"".join(gzip_padded(plain, size))) == want


def test_a_bomb_is_small_on_the_wire_and_made_lazily() -> None:
    parts = gzip_padded(b'{"entries": []}', 1 << 30)
    first = [next(parts) for _ in range(64)]  # the header, then 63 MiB of spaces
    assert sum(map(len, first)) < 64 << 10
    wire = sum(len(p) for p in parts) + sum(map(len, first))
    assert wire < 2 << 20  # 1 GiB in under 2 MiB


def test_lie_spec_defaults_and_json_form() -> None:
    bare = Fault.from_spec("lie")
    assert (bare.kind, bare.lie_mode, bare.lie_at) == (FaultKind.LIE, LieMode.ROOT, None)
    fork = Fault.from_spec("lie:mode=fork,at=5,n=2,log=a")
    assert (fork.lie_mode, fork.lie_at, fork.n) == (LieMode.FORK, 5, 2)
    assert not fork.corrupt_at  # a lie's `at` corrupts no entry
    assert Fault.from_json({"kind": "lie", "mode": "fork", "at": 5, "n": 2, "log": ["a"]}) == fork
    for fault in (bare, fork, Fault.from_spec("lie:at=0,endpoint=checkpoint")):
        assert Fault.from_json(fault.to_json()) == fault
    # `at` is repeatable for corrupt only.
    assert Fault.from_spec("corrupt:at=1,at=2").corrupt_at == {1, 2}


def test_a_lie_reaches_tree_heads_that_hold_its_leaf() -> None:
    plan = FaultPlan([Fault.from_spec("lie:at=10")])
    assert plan.decide(Endpoint.GET_ENTRIES, "x", NOW, batch=20).lie is None
    assert plan.decide(Endpoint.HASH_TILE, "x", NOW).lie is None
    assert plan.decide(Endpoint.GET_STH, "x", NOW).lie is None  # no head size: no head
    assert plan.decide(Endpoint.GET_STH, "x", NOW, head_size=10).lie is None  # leaf 10 not in it
    action = plan.decide(Endpoint.GET_STH, "x", NOW, head_size=11)
    assert (action.lie, action.fired) == (10, [FaultKind.LIE])
    assert plan.decide(Endpoint.CHECKPOINT, "x", NOW, head_size=500).lie == 10
    last = FaultPlan([Fault.from_spec("lie")])
    assert last.decide(Endpoint.CHECKPOINT, "x", NOW, head_size=0).lie is None
    assert last.decide(Endpoint.CHECKPOINT, "x", NOW, head_size=1).lie == 0
    assert last.decide(Endpoint.GET_STH, "x", NOW, head_size=700).lie == 699


def test_n_counts_only_the_heads_a_lie_falsifies() -> None:
    plan = FaultPlan([Fault.from_spec("lie:at=5,n=1")])
    assert plan.decide(Endpoint.GET_STH, "x", NOW, head_size=5).lie is None
    assert plan.decide(Endpoint.GET_STH, "x", NOW, head_size=6).lie == 5
    assert plan.decide(Endpoint.GET_STH, "x", NOW, head_size=6).lie is None  # spent


def test_a_failed_head_request_carries_no_lie_and_uses_no_turn() -> None:
    plan = FaultPlan([Fault.from_spec("503:n=1"), Fault.from_spec("lie:n=1")])
    failed = plan.decide(Endpoint.GET_STH, "x", NOW, head_size=9)
    assert (failed.status, failed.lie, failed.fired) == (503, None, [FaultKind.UNAVAILABLE])
    assert plan.decide(Endpoint.GET_STH, "x", NOW, head_size=9).lie == 8


def test_a_fork_alternates_per_log_and_tree_size() -> None:
    plan = FaultPlan([Fault.from_spec("lie:mode=fork,at=3")])

    def lies(log: str, size: int, k: int) -> list[int | None]:
        return [plan.decide(Endpoint.GET_STH, log, NOW, head_size=size).lie for _ in range(k)]

    assert lies("a", 10, 3) == [None, 3, None]
    assert lies("b", 10, 2) == [None, 3]  # each log its own count
    assert lies("a", 11, 2) == [None, 3]  # a new size starts honest
    assert lies("c", 3, 2) == [None, None]  # no leaf 3: honest, and no turn taken
    assert lies("c", 4, 2) == [None, 3]
    plan.replace(plan.faults)
    assert lies("b", 10, 2) == [None, 3]  # replacing the plan starts over
