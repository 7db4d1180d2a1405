"""The per-log cursor file, in certstream-server-rust's format so its files can be reused.

    {"version": 1, "logs": {"<normalized url>": {"current_index": N, "tree_size": N,
                                                 "last_success": unix_seconds,
                                                 "verified": {...}}}}

`current_index` is the next index to fetch (exclusive). `verified` is certlake's own: where
verification stood (the last verified tree head, the subtree hashes of the tree up to it, and
whether the log was found inconsistent), so that a restart goes on verifying without reading the
log again; certstream-server-rust's reader ignores members it does not know.

`parse_state` / `serialize_state` are the pure halves; `StateStore` is the file shell: it loads
(a missing file is an empty state), moves a damaged file aside instead of discarding it, and
saves atomically and durably.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from certlake.ct.compact import subtrees
from certlake.ct.verify import Snapshot, TreeHead

log = logging.getLogger(__name__)

STATE_VERSION: Final = 1
# The Rust reader's types: u64 positions, i64 Unix time (negative times are damage, not data).
_UPPER: Final = {"current_index": 2**64 - 1, "tree_size": 2**64 - 1, "last_success": 2**63 - 1}


class StateDecodeError(ValueError):
    """The bytes are not a version-1 state document."""


class StateFileError(OSError):
    """The state file exists but cannot be read or written (permissions, I/O error, directory)."""


@dataclass(frozen=True, slots=True)
class LogState:
    current_index: int  # next index to fetch
    tree_size: int  # the log's tree size when current_index was last advanced
    last_success: int  # Unix seconds of that advance
    verified: Snapshot | None = None


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise StateDecodeError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _range_problem(key: str, value: int) -> str | None:
    upper = _UPPER[key]
    return None if 0 <= value <= upper else f"{key}: {value} is out of range 0..{upper}"


def _number(doc: Mapping[str, object], key: str, where: str) -> int:
    value = doc.get(key)
    if type(value) is not int:  # bool is an int subclass; floats would lose precision
        raise StateDecodeError(f"{where}.{key}: expected an integer, got {value!r}")
    problem = _range_problem(key, value)
    if problem is not None:
        raise StateDecodeError(f"{where}.{problem}")
    return value


def parse_state(data: bytes) -> dict[str, LogState]:
    """The logs of a state document; raises `StateDecodeError` for anything that is not one.

    Extra keys are ignored, as certstream-server-rust's reader does, so its newer files load.
    """
    try:
        doc = json.loads(data, object_pairs_hook=_reject_duplicates)
    except StateDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # bad JSON/UTF-8, 5000-digit numbers, deep nesting
        raise StateDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StateDecodeError(f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("version") != STATE_VERSION or type(doc.get("version")) is not int:
        raise StateDecodeError(f"version: expected {STATE_VERSION}, got {doc.get('version')!r}")
    logs = doc.get("logs")
    if not isinstance(logs, dict):
        raise StateDecodeError(f"logs: expected an object, got {logs!r}")
    out: dict[str, LogState] = {}
    for url, entry in logs.items():
        where = f"logs[{url!r}]"
        if not url:
            raise StateDecodeError("logs: empty log URL")
        if not isinstance(entry, dict):
            raise StateDecodeError(f"{where}: expected an object, got {entry!r}")
        numbers = {key: _number(entry, key, where) for key in _UPPER}
        verified = entry.get("verified")
        snapshot = None if verified is None else _snapshot(verified, f"{where}.verified")
        out[url] = LogState(**numbers, verified=snapshot)
    return out


def _snapshot(doc: object, where: str) -> Snapshot:
    if not isinstance(doc, dict):
        raise StateDecodeError(f"{where}: expected an object, got {doc!r}")
    size, timestamp = doc.get("tree_size"), doc.get("timestamp")
    if type(size) is not int or not 0 <= size < 2**64:
        raise StateDecodeError(f"{where}.tree_size: expected a tree size, got {size!r}")
    if type(timestamp) is not int or not 0 <= timestamp < 2**64:
        raise StateDecodeError(f"{where}.timestamp: expected milliseconds, got {timestamp!r}")
    inconsistent = doc.get("inconsistent")
    if type(inconsistent) is not bool:
        raise StateDecodeError(f"{where}.inconsistent: expected true or false")
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise StateDecodeError(f"{where}.nodes: expected a list")
    root, signature = (
        _b64(doc.get("root_hash"), f"{where}.root_hash"),
        _b64(doc.get("signature"), f"{where}.signature"),
    )
    hashes = tuple(_b64(n, f"{where}.nodes") for n in nodes)
    if len(root) != 32 or any(len(h) != 32 for h in hashes):
        raise StateDecodeError(f"{where}: hashes must be 32 bytes")
    if len(hashes) != len(subtrees(0, size)):
        raise StateDecodeError(f"{where}.nodes: a tree of {size} has {len(subtrees(0, size))}")
    return Snapshot(TreeHead(size, root, timestamp, signature), hashes, inconsistent)


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise StateDecodeError(f"{where}: expected base64 text, got {value!r:.40}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise StateDecodeError(f"{where}: {exc}") from None


def _snapshot_doc(snap: Snapshot) -> dict[str, object]:
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    head = snap.head
    return {
        "tree_size": head.size,
        "timestamp": head.timestamp_ms,
        "root_hash": b64(head.root),
        "signature": b64(head.signature),
        "nodes": [b64(h) for h in snap.nodes],
        "inconsistent": snap.inconsistent,
    }


def _log_doc(state: LogState) -> dict[str, object]:
    doc: dict[str, object] = {key: getattr(state, key) for key in _UPPER}
    if state.verified is not None:
        doc["verified"] = _snapshot_doc(state.verified)
    return doc


def serialize_state(logs: Mapping[str, LogState]) -> bytes:
    """The document certstream-server-rust writes (serde_json pretty: 2-space indent, no final
    newline, fields in declaration order), with logs sorted so equal states give equal bytes;
    `verified` follows the Rust fields where certlake has it."""
    doc = {"version": STATE_VERSION, "logs": {url: _log_doc(logs[url]) for url in sorted(logs)}}
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


# --- file shell ----------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any instant leaves the old or the new file.

    Temp file in the same directory (so the rename stays on one file system), fsync, rename over
    the target, fsync the directory so the rename itself is durable. On failure the temp file
    is removed and the old file is untouched.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _saving_now(temp: Path, path: Path) -> bool:
    """Whether `temp` is a save of `path` in progress in another running process: its pid is in
    the name (`write_atomic`). Two servers share a state file while a rolling restart overlaps
    them, and the new one must not delete the temp file the old one is about to rename."""
    pid = temp.name[len(path.name) + 2 :].split(".", 1)[0]
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


class StateStore:
    """The state file of one process. Thread-safe: the watchers update it from the event loop
    while `save()` may run in a worker thread."""

    def __init__(self, path: str | os.PathLike[str], logs: Mapping[str, LogState] | None = None):
        self.path = Path(path)
        self._logs: dict[str, LogState] = dict(logs or {})
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._dirty = False
        self.moved_aside: Path | None = None  # where a damaged file was put, if load found one

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StateStore:
        """Read `path`. Missing → empty. Damaged → logged at ERROR, moved to
        `<name>.corrupt-<UTC timestamp>` (kept for inspection), empty. Unreadable →
        `StateFileError`: starting empty would silently re-read every log from its head."""
        store = cls(path)
        target = store.path
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            if _saving_now(stale, target):
                continue
            # left by a save interrupted by a crash; the real file is intact by construction
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            log.info("no state file; starting without saved positions", extra={"path": str(target)})
            return store
        except OSError as exc:
            raise StateFileError(f"cannot read state file {target}: {exc}") from exc
        try:
            store._logs = parse_state(data)
        except StateDecodeError as exc:
            try:
                store.moved_aside = _move_aside(target)
            except OSError as move_exc:
                raise StateFileError(
                    f"state file {target} is damaged ({exc}) and could not be moved aside: "
                    f"{move_exc}"
                ) from move_exc
            log.error(
                "state file is damaged; moved aside, starting without saved positions",
                extra={"path": str(target), "moved_to": str(store.moved_aside), "reason": str(exc)},
            )
            return store
        log.info("loaded state file", extra={"path": str(target), "logs": len(store._logs)})
        return store

    def get(self, url: str) -> LogState | None:
        with self._lock:
            return self._logs.get(url)

    def update(
        self,
        url: str,
        current_index: int,
        tree_size: int,
        last_success: int | None = None,
        verified: Snapshot | None = None,
    ) -> None:
        """Record that `url` should next be read at `current_index` (`last_success` = now).

        Raises ValueError for a value the file format cannot hold, rather than writing a file
        that the next start would have to treat as damaged."""
        entry = LogState(
            current_index=current_index,
            tree_size=tree_size,
            last_success=int(time.time()) if last_success is None else last_success,
            verified=verified,
        )
        for key in _UPPER:
            problem = _range_problem(key, getattr(entry, key))
            if problem is not None:
                raise ValueError(f"state for {url}: {problem}")
        with self._lock:
            self._logs[url] = entry
            self._dirty = True

    def snapshot(self) -> dict[str, LogState]:
        with self._lock:
            return dict(self._logs)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> None:
        """Write the current state atomically and durably (see `write_atomic`)."""
        with self._save_lock:
            with self._lock:
                data = serialize_state(self._logs)
                self._dirty = False
            try:
                write_atomic(self.path, data)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                raise StateFileError(f"cannot write state file {self.path}: {exc}") from exc

    def save_if_dirty(self) -> bool:
        """Save when something changed since the last save; returns whether it wrote."""
        if not self._dirty:
            return False
        self.save()
        return True
