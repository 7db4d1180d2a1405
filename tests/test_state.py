"""The state file: certstream-server-rust's format, atomic durable writes, damaged files kept."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.ct.compact import CompactRange
from certlake.ct.verify import Snapshot, TreeHead
from certlake.ingest.state import (
    LogState,
    StateDecodeError,
    StateFileError,
    StateStore,
    parse_state,
    serialize_state,
)

ARGON = "https://ct.googleapis.com/logs/us1/argon2025h2"
SYCAMORE = "https://mon.sycamore.ct.letsencrypt.org/2026h1"

# As certstream-server-rust writes it (serde_json pretty printing of its StateFile struct).
RUST_FILE = (
    b'{\n  "version": 1,\n  "logs": {\n'
    b'    "https://ct.googleapis.com/logs/us1/argon2025h2": {\n'
    b'      "current_index": 1329315675,\n'
    b'      "tree_size": 1329316675,\n'
    b'      "last_success": 1766102400\n'
    b"    },\n"
    b'    "https://mon.sycamore.ct.letsencrypt.org/2026h1": {\n'
    b'      "current_index": 0,\n'
    b'      "tree_size": 256,\n'
    b'      "last_success": 1766102401\n'
    b"    }\n"
    b"  }\n"
    b"}"
)


def test_rust_file_bytes_round_trip_exactly() -> None:
    logs = parse_state(RUST_FILE)
    assert logs == {
        ARGON: LogState(current_index=1329315675, tree_size=1329316675, last_success=1766102400),
        SYCAMORE: LogState(current_index=0, tree_size=256, last_success=1766102401),
    }
    assert serialize_state(logs) == RUST_FILE


def test_serialized_keys_and_order() -> None:
    data = serialize_state({"b": LogState(1, 2, 3), "a": LogState(4, 5, 6)})
    doc = json.loads(data)
    assert list(doc) == ["version", "logs"]
    assert doc["version"] == 1
    assert list(doc["logs"]) == ["a", "b"]
    assert list(doc["logs"]["a"]) == ["current_index", "tree_size", "last_success"]
    assert serialize_state({}) == b'{\n  "version": 1,\n  "logs": {}\n}'


def test_compact_rust_file_with_extra_fields_loads() -> None:
    # serde ignores unknown fields, so a newer Rust release's extra keys must not make it damaged
    data = (
        b'{"version":1,"logs":{"https://ct.example.com":{"current_index":42,'
        b'"tree_size":1000,"last_success":1700000000,"log_id":"abc"}},"written_by":"x"}'
    )
    assert parse_state(data) == {"https://ct.example.com": LogState(42, 1000, 1700000000)}


def _snapshot(size: int = 1000, inconsistent: bool = False) -> Snapshot:
    tree = CompactRange.of_leaves(0, [b"leaf %d" % i for i in range(size)])
    head = TreeHead(size, tree.root(), 1766102400123, b"\x04\x03sig")
    return Snapshot(head, tuple(n.hash for n in tree.nodes), inconsistent)


def test_where_verification_stood_round_trips_after_the_rust_fields() -> None:
    logs = {ARGON: LogState(1000, 1200, 1766102400, verified=_snapshot())}
    data = serialize_state(logs)
    doc = json.loads(data)["logs"][ARGON]
    # certstream-server-rust's fields first and as they were; its reader ignores the rest.
    assert list(doc) == ["current_index", "tree_size", "last_success", "verified"]
    # 1000 = 512 + 256 + 128 + 64 + 32 + 8: six subtrees.
    assert doc["verified"]["tree_size"] == 1000 and len(doc["verified"]["nodes"]) == 6
    assert parse_state(data) == logs
    assert parse_state(serialize_state({ARGON: LogState(1, 2, 3, _snapshot(7, True))})) == {
        ARGON: LogState(1, 2, 3, _snapshot(7, True))
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"nodes": []}, "a tree of 1000 has 6"),
        ({"nodes": ["AAAA", "AAAA"]}, "32 bytes"),
        ({"root_hash": "not base64!"}, "root_hash"),
        ({"tree_size": -1}, "tree_size"),
        ({"inconsistent": "no"}, "inconsistent"),
        ({"timestamp": 1.5}, "timestamp"),
    ],
)
def test_a_damaged_verification_block_is_a_damaged_file(
    change: dict[str, object], problem: str
) -> None:
    doc = json.loads(serialize_state({ARGON: LogState(1000, 1200, 0, verified=_snapshot())}))
    doc["logs"][ARGON]["verified"].update(change)
    with pytest.raises(StateDecodeError, match=problem):
        parse_state(json.dumps(doc).encode())


urls = st.text(min_size=1, max_size=40)
states = st.builds(
    LogState,
    current_index=st.integers(0, 2**64 - 1),
    tree_size=st.integers(0, 2**64 - 1),
    last_success=st.integers(0, 2**63 - 1),
)


@given(st.dictionaries(urls, states, max_size=8))
def test_round_trip(logs: dict[str, LogState]) -> None:
    assert parse_state(serialize_state(logs)) == logs


DAMAGED = {
    "empty": b"",
    "truncated": RUST_FILE[: len(RUST_FILE) // 2],
    "not json": b"not valid json",
    "not utf-8": b"\xff\xfe{}",
    "array": b"[1, 2]",
    "no version": b'{"logs": {}}',
    "version 2": b'{"version": 2, "logs": {}}',
    "version as string": b'{"version": "1", "logs": {}}',
    "version true": b'{"version": true, "logs": {}}',
    "logs missing": b'{"version": 1}',
    "logs a list": b'{"version": 1, "logs": []}',
    "entry not an object": b'{"version": 1, "logs": {"u": 5}}',
    "field missing": b'{"version": 1, "logs": {"u": {"current_index": 1, "tree_size": 2}}}',
    "negative index": (
        b'{"version":1,"logs":{"u":{"current_index":-1,"tree_size":2,"last_success":3}}}'
    ),
    "negative time": (
        b'{"version":1,"logs":{"u":{"current_index":1,"tree_size":2,"last_success":-3}}}'
    ),
    "float index": (
        b'{"version":1,"logs":{"u":{"current_index":1.5,"tree_size":2,"last_success":3}}}'
    ),
    "string index": (
        b'{"version":1,"logs":{"u":{"current_index":"1","tree_size":2,"last_success":3}}}'
    ),
    "bool index": (
        b'{"version":1,"logs":{"u":{"current_index":true,"tree_size":2,"last_success":3}}}'
    ),
    "u64 overflow": (
        b'{"version":1,"logs":{"u":{"current_index":18446744073709551616,"tree_size":2,'
        b'"last_success":3}}}'
    ),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "5000-digit number": b'{"version": 1, "logs": {"u": {"current_index": ' + b"9" * 5000 + b"}}}",
    "NaN": b'{"version":1,"logs":{"u":{"current_index":NaN,"tree_size":2,"last_success":3}}}',
    "empty url": b'{"version":1,"logs":{"":{"current_index":1,"tree_size":2,"last_success":3}}}',
    "duplicate log": (
        b'{"version":1,"logs":{"u":{"current_index":1,"tree_size":2,"last_success":3},'
        b'"u":{"current_index":9,"tree_size":9,"last_success":9}}}'
    ),
}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_input_parses_or_raises_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(StateDecodeError):
        parse_state(data)


@pytest.mark.parametrize("data", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_documents_are_rejected(data: bytes) -> None:
    with pytest.raises(StateDecodeError):
        parse_state(data)


@pytest.mark.parametrize("data", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_file_is_moved_aside_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    path = tmp_path / "certstream_state.json"
    path.write_bytes(data)
    with caplog.at_level(logging.ERROR, logger="certlake.ingest.state"):
        store = StateStore.load(path)
    assert store.snapshot() == {}
    assert not path.exists()
    moved = store.moved_aside
    assert moved is not None and moved.parent == tmp_path
    assert moved.name.startswith("certstream_state.json.corrupt-")
    assert moved.read_bytes() == data  # kept as it was, for inspection
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.path == str(path)  # type: ignore[attr-defined]
    assert record.moved_to == str(moved)  # type: ignore[attr-defined]


def test_two_damaged_files_in_one_second_both_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"first")
    first = StateStore.load(path).moved_aside
    path.write_bytes(b"second")
    second = StateStore.load(path).moved_aside
    assert first is not None and second is not None and first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


def test_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    store = StateStore.load(tmp_path / "none.json")
    assert store.snapshot() == {} and store.moved_aside is None and not store.dirty


def test_unreadable_path_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateFileError):
        StateStore.load(path)


def test_update_save_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore.load(path)
    assert store.get(ARGON) is None
    store.update(ARGON, 100, 500, last_success=1700000000)
    before = int(time.time())
    store.update(SYCAMORE, 7, 256)
    assert store.dirty
    assert store.save_if_dirty() is True
    assert not store.dirty and store.save_if_dirty() is False
    again = StateStore.load(path)
    assert again.get(ARGON) == LogState(100, 500, 1700000000)
    sycamore = again.get(SYCAMORE)
    assert sycamore is not None and sycamore.current_index == 7
    assert before <= sycamore.last_success <= int(time.time())
    assert path.read_bytes() == serialize_state(again.snapshot())


def test_positions_the_format_cannot_hold_are_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json")
    with pytest.raises(ValueError, match="current_index: -1 is out of range"):
        store.update(ARGON, -1, 5)
    with pytest.raises(ValueError, match="tree_size: 18446744073709551616 is out of range"):
        store.update(ARGON, 1, 2**64)
    with pytest.raises(ValueError, match="last_success"):
        store.update(ARGON, 1, 2, last_success=-5)
    assert store.snapshot() == {} and not store.dirty


def test_save_into_missing_directory_fails_loudly(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "missing" / "s.json")
    store.update(ARGON, 1, 2)
    with pytest.raises(StateFileError):
        store.save()
    assert store.dirty  # nothing was written, so it is still unsaved


# A child process that saves a large state under a file-size limit: the write of the temp file
# fails for real (EFBIG), as it would on a full disk.
_FAILING_SAVE = textwrap.dedent(
    """
    import resource, signal, sys
    from certlake.ingest.state import StateStore, StateFileError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = StateStore.load(sys.argv[1])
    for i in range(2000):
        store.update(f"https://ct{i}.example.com/log", i, i + 1, last_success=1)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        store.save()
    except StateFileError as exc:
        print("failed:", exc)
        sys.exit(3)
    """
)


def test_failed_write_leaves_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "certstream_state.json"
    path.write_bytes(RUST_FILE)
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_SAVE, str(path)], capture_output=True, text=True
    )
    assert result.returncode == 3, result.stderr
    assert "File too large" in result.stdout
    assert path.read_bytes() == RUST_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certstream_state.json"]


_SAVE_FOREVER = textwrap.dedent(
    """
    import sys
    from certlake.ingest.state import StateStore
    store = StateStore.load(sys.argv[1])
    i = 0
    while True:
        i += 1
        for n in range(50):
            store.update(f"https://ct{n}.example.com/log", i, i + 1, last_success=i)
        store.save()
        if i == 5:
            print("saving", flush=True)
    """
)


def test_kill_9_during_saves_never_leaves_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "certstream_state.json"
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "saving\n"
        time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        store = StateStore.load(path)
        assert store.moved_aside is None
        logs = store.snapshot()
        assert len(logs) == 50
        # one save's worth: every log at the same cursor
        assert len({s.current_index for s in logs.values()}) == 1
        # a temp file from the interrupted save is cleaned up by load
        assert sorted(p.name for p in tmp_path.iterdir()) == ["certstream_state.json"]


def test_load_keeps_the_temp_file_of_a_save_in_progress_in_another_process(
    tmp_path: Path,
) -> None:
    # A rolling restart: the new server loads the state file while the old one is saving it.
    path = tmp_path / "certstream_state.json"
    path.write_bytes(RUST_FILE)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        saving = tmp_path / f".{path.name}.{other.pid}.k2j4h1x9.tmp"
        saving.write_bytes(b"half a save")
        crashed = tmp_path / f".{path.name}.abc.tmp"  # no pid: not known to be anyone's
        crashed.write_bytes(b"")
        StateStore.load(path)
        assert saving.exists() and not crashed.exists()
    finally:
        other.kill()
        other.wait()
    StateStore.load(path)  # its writer is gone now: a crashed save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certstream_state.json"]
