"""What `certlake` asks of the allocators under delta-rs and Arrow (`cli/main.py`): memory a
commit frees goes back to the system, so a live server does not keep a commit's worth of freed
pages between commits. Measured in real processes, with and without the settings: if a new
deltalake or pyarrow wheel stops reading them, this fails and the settings must follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from certlake.cli.main import _RETURN_FREED_MEMORY

# Three commits of 10,000 archive rows of ~5.8 KB (the live sink's batch), then the growth of
# RSS over what the process held before the first commit, its rows built.
_SCRIPT = r"""
import os, random, sys
import psutil
import pyarrow as pa
from certlake.lake.schema import ARCHIVE_SCHEMA
from certlake.lake.table import ArchiveTable

rng = random.Random(7)
n = 10_000
def column(field):
    t = field.type
    if pa.types.is_list(t):
        return [[rng.randbytes(1500).hex()] * 2 for _ in range(n)]
    if pa.types.is_string(t):
        if field.name == "seen_date":
            return ["2026-12-04"] * n
        return [rng.randbytes(120).hex() for _ in range(n)]
    if pa.types.is_boolean(t):
        return [False] * n
    if pa.types.is_timestamp(t):
        return [1_780_000_000_000_000 + i for i in range(n)]
    return list(range(n))
rows = pa.table({f.name: pa.array(column(f), f.type) for f in ARCHIVE_SCHEMA})
table = ArchiveTable.open_or_create(sys.argv[1], compression_level=3)
before = psutil.Process().memory_info().rss
for k in range(3):
    table.append(rows, versions={"log": (k + 1) * n}, commit_id=f"c{k}")
print((psutil.Process().memory_info().rss - before) // 2**20)
"""


def _growth_mb(tmp_path: Path, name: str, env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip())


def test_memory_a_commit_frees_is_returned_with_the_settings_and_kept_without(
    tmp_path: Path,
) -> None:
    plain = {k: v for k, v in os.environ.items() if k not in _RETURN_FREED_MEMORY}
    # What the allocators do by themselves (empty values: their defaults).
    kept = _growth_mb(tmp_path, "kept", {**plain, **dict.fromkeys(_RETURN_FREED_MEMORY, "")})
    returned = _growth_mb(tmp_path, "returned", {**plain, **_RETURN_FREED_MEMORY})
    assert kept > 100, kept  # the defaults keep a commit's freed pages
    assert returned < kept / 2, (returned, kept)


def test_the_command_sets_them_unless_the_user_did(tmp_path: Path) -> None:
    code = (
        "import os; from certlake.cli.main import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ['_RJEM_MALLOC_CONF'], os.environ['MIMALLOC_PURGE_DELAY'])"
    )
    plain = {k: v for k, v in os.environ.items() if k not in _RETURN_FREED_MEMORY}
    out = subprocess.run(
        [sys.executable, "-c", code], env=plain, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-2:] == [_RETURN_FREED_MEMORY["_RJEM_MALLOC_CONF"], "0"]
    mine = {**plain, "_RJEM_MALLOC_CONF": "narenas:1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=mine, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-2] == "narenas:1"
