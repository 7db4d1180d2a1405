"""`config.example.yaml`, the file operators copy: every key of the schema, at its default, with a
comment — checked against the schema itself, so a key added there cannot be forgotten here."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from certlake.config import Config, parse_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.yaml"
CERTLAKE = Path(sys.executable).with_name("certlake")
_KEY_LINE = re.compile(r"^( *)([a-z0-9_]+):(.*)$")


def _schema_keys(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf key of the schema and its default (sections are walked into)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _schema_keys(tp, path)
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        yield path, list(default) if isinstance(default, tuple) else default


def _example_lines() -> dict[tuple[str, ...], str]:
    """Each key of the example (by path) and its comment: the text after `#` on its line, or
    the comment line just above it."""
    found: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    above = ""
    for line in EXAMPLE.read_text().splitlines():
        m = _KEY_LINE.match(line)
        if m is None:
            above = line.strip()[1:].strip() if line.lstrip().startswith("#") else ""
            continue
        indent, key, rest = len(m[1]), m[2], m[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        inline = rest.split(" # ", 1)[1].strip() if " # " in rest else ""
        found[tuple(k for _, k in stack)] = inline or above
        above = ""
    return found


def _value_at(doc: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def test_the_example_sets_every_schema_key_to_its_default_with_a_comment() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    lines = _example_lines()
    keys = list(_schema_keys(Config))
    assert ("storage", "s3", "endpoint") in dict(keys)  # the walk reaches into sections
    for path, default in keys:
        dotted = ".".join(path)
        assert path in lines, f"{dotted} is missing from config.example.yaml"
        assert _value_at(doc, path) == default, f"{dotted}: not the schema's default {default!r}"
        assert type(_value_at(doc, path)) is type(default), f"{dotted}: written as another type"
        assert lines[path], f"{dotted} has no comment"
    # And nothing else: every key of the example is one of the schema's.
    sections = {path[:i] for path, _ in keys for i in range(1, len(path))}
    assert set(lines) == {path for path, _ in keys} | sections
    # The file is what the loader accepts, and amounts to the defaults.
    assert parse_config(doc, {}) == Config()


def test_validate_config_accepts_the_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTSTREAM_")}
    result = subprocess.run(
        [str(CERTLAKE), "validate-config", "--config", str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"configuration OK: {EXAMPLE}")
