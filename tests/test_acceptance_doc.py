"""docs/acceptance.md maps every acceptance criterion of the seeds to tests that exist.

The ids are read from the seed documents themselves (`tests/data/seeds/`), so a
criterion added there and forgotten here fails this test; a test renamed or deleted without
updating the map fails it too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*`?([a-z-]+\.(?:AC\d+\.\d+|HV\d))`?\s*\|(.*)\|\s*$")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def seed_ids(seeds: Path) -> set[str]:
    ids: set[str] = set()
    for path in seeds.glob("*.txt"):
        text = path.read_text()
        ids |= set(re.findall(r"(?:delta|staging)-backfill\.AC\d+\.\d+", text))
        if "Test Requirements: Staging Backfill" in text:
            # This file names its criteria without the prefix (table rows `| AC2.1 |`, `HV1`).
            ids |= {f"staging-backfill.{a}" for a in re.findall(r"\|\s*(AC\d+\.\d+)\b", text)}
            ids |= {f"staging-backfill.{h}" for h in re.findall(r"\b(HV\d)\b", text)}
    return ids


def mapped_tests(doc: Path) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for line in doc.read_text().splitlines():
        m = ROW.match(line)
        if m:
            out.setdefault(m.group(1), []).extend(TEST_REF.findall(m.group(2)))
    return out


@pytest.fixture(scope="module")
def mapping() -> dict[str, list[tuple[str, str]]]:
    return mapped_tests(REPO / "docs" / "acceptance.md")


def test_every_seed_criterion_has_tests(
    shared_data: Path, mapping: dict[str, list[tuple[str, str]]]
) -> None:
    ids = seed_ids(shared_data / "seeds")
    assert len(ids) >= 30  # the seeds name 29 criteria and HV1–HV5
    missing = sorted(i for i in ids if not mapping.get(i))
    assert not missing, f"criteria without a test in docs/acceptance.md: {missing}"


def test_every_mapped_test_exists_and_carries_its_id(
    mapping: dict[str, list[tuple[str, str]]],
) -> None:
    for ac, refs in mapping.items():
        for path, name in refs:
            source = (REPO / path).read_text() if (REPO / path).exists() else ""
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{ac}: {path}::{name}"
            short = ac.split(".", 1)[1].lower().replace(".", "_")  # AC3.2 → ac3_2, HV2 → hv2
            assert short in name, f"{ac}: {name} does not carry its id"
