"""The layout's promises, checked: the pure core imports no I/O, Delta is touched only under
`lake/`, and the commands are reached by ordinary imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "certlake"

# Decoding, message building, tile paths, Merkle hashing, gap arithmetic, pacing, lag, config
# validation, fan-out decisions: values in, values out.
PURE = [
    "certlake.ct.tls",
    "certlake.ct.leaf",
    "certlake.ct.tile",
    "certlake.ct.merkle",
    "certlake.ct.sth",
    "certlake.ct.checkpoint",
    "certlake.ct.keys",
    "certlake.ct.entry",
    "certlake.ct.urls",
    "certlake.ct.loglist",
    "certlake.ct.backoff",
    "certlake.ct.health",
    "certlake.ct.pacing",
    "certlake.ct.lag",
    "certlake.ct.errors",
    "certlake.ct.limits",
    "certlake.certs.message",
    "certlake.certs.certificate",
    "certlake.certs.der",
    "certlake.certs.names",
    "certlake.certs.extensions",
    "certlake.certs.algorithms",
    "certlake.certs.gojson",
    "certlake.stream.hub",
    "certlake.stream.filters",
    "certlake.stream.frames",
    "certlake.stream.resume",
    "certlake.stream.dedupe",
    "certlake.stream.relay_codec",
    "certlake.backfill.gaps",
    "certlake.merge.keys",
    "certlake.query.spec",
    "certlake.lake.location",
    "certlake.lake.heads_rows",
    "certlake.config.schema",
    "certlake.ranges",
    "certlake.texttable",
    "certlake.testlog.faults",
]
# Nothing of the event loop, the HTTP stack, Delta or the shells' libraries is loaded by a pure
# module, directly or through another; ...
LOADED_NOWHERE = {"asyncio", "aiohttp", "deltalake", "prometheus_client", "click", "rich"}
# ... and its own source imports no module that does I/O. (The standard library's `email.utils`
# and pyarrow load `socket` for their own ends; that is not this code doing I/O.)
IMPORTED_NOWHERE = {"socket", "selectors", "ssl", "subprocess", "threading", "os", "shutil"}

_PROBE = """
import json, sys
before = set(sys.modules)
import {module}
loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(json.dumps(sorted(loaded)))
"""


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_pull_in_no_io(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    loaded = set(json.loads(out)) & LOADED_NOWHERE
    assert not loaded, f"{module} loads {sorted(loaded)}"
    source = SRC.parent / (module.replace(".", "/") + ".py")
    direct = {name.split(".")[0] for name in _imports(source)} & IMPORTED_NOWHERE
    assert not direct, f"{module} imports {sorted(direct)}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _is_delta(module: str) -> bool:
    return module == "deltalake" or module.startswith(("deltalake.", "pyarrow.dataset"))


def test_delta_is_touched_only_under_lake() -> None:
    offenders = {
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "lake" not in p.relative_to(SRC).parts[:1]
        and any(
            n == "deltalake" or n.startswith(("deltalake.", "pyarrow.dataset")) for n in _imports(p)
        )
    }
    assert not offenders


def test_commands_are_plain_imports() -> None:
    main = (SRC / "cli" / "main.py").read_text()
    assert "importlib" not in main
    imported = _imports(SRC / "cli" / "main.py")
    for command in ("serve", "backfill", "merge", "fetch", "testlog", "validate"):
        assert f"certlake.cli.{command}" in imported, command
