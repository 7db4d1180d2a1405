"""Gap detection with the runs cache (`lake/known_runs`) makes the very plan it makes without
it, whatever the cache holds: nothing, some files, every file, or files the table has since
replaced (compacted, rows deleted), or files recorded by a detection of other logs or another
window; duplicates within and across files included. And once a detection has recorded what it
read, the same detection again opens no file."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.backfill.test_gaps_plan import LOG, LOG_B, LOG_C, write_files

from certlake.backfill.gaps import GapPlan
from certlake.backfill.presence import plan_gaps
from certlake.lake.known_runs import record

URLS = (LOG, LOG_B, LOG_C)
Key = tuple[str, int]
row = st.tuples(st.sampled_from(URLS), st.integers(0, 30))
# small ranges and up to 14 rows a file: duplicates within a file and across files are common
files = st.lists(st.lists(row, min_size=1, max_size=14), max_size=4)


class _Opened(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "gap detection read the table":
            self.counts.append(getattr(record, "files_opened", 0))


@contextmanager
def files_opened() -> Iterator[list[int]]:
    handler = _Opened()
    logger = logging.getLogger("certlake.backfill.presence")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.counts
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def paths_of(uri: Path) -> list[str]:
    table = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True))
    paths: list[str] = table.column("path").to_pylist()
    return paths


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    main_files=files,
    staging_files=st.none() | files,
    repeated=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 13)), max_size=4),
    cache=st.sampled_from(["empty", "partial", "full", "stale"]),
    chosen=st.sets(st.integers(0, 5)),
    deleted=st.lists(row, max_size=3),
    earlier=st.tuples(
        st.dictionaries(st.sampled_from(URLS), st.integers(0, 35), min_size=1),
        st.none() | st.integers(0, 35),
    ),
    ceilings=st.dictionaries(st.sampled_from(URLS), st.integers(0, 35), min_size=1),
    from_index=st.none() | st.integers(0, 35),
    split_size=st.integers(1, 9),
)
def test_the_plan_is_the_same_whatever_the_cache_holds(
    main_files: list[list[Key]],
    staging_files: list[list[Key]] | None,
    repeated: list[tuple[int, int]],
    cache: str,
    chosen: set[int],
    deleted: list[Key],
    earlier: tuple[dict[str, int], int | None],
    ceilings: dict[str, int],
    from_index: int | None,
    split_size: int,
) -> None:
    # rows written again in a file of their own, as a crashed writer or a staging table leaves
    again = [main_files[f][r % len(main_files[f])] for f, r in repeated if f < len(main_files)]
    if again:
        main_files = [*main_files, again]
    with tempfile.TemporaryDirectory() as tmp:
        main, staging = Path(tmp) / "main", Path(tmp) / "staging"
        write_files(main, main_files)
        write_files(staging, staging_files or [])
        tables = [t for t in (main, staging) if (t / "_delta_log").exists()]
        for t in tables:
            if cache == "partial":
                live = paths_of(t)
                record(str(t), None, paths=[p for n, p in enumerate(live) if n in chosen])
            elif cache in ("full", "stale"):
                record(str(t), None)
        if cache == "stale" and main in tables:
            # the cache keeps the replaced files' runs, some holding the rows now deleted
            table = DeltaTable(str(main))
            for url, index in deleted:
                table.delete(f"source_url = '{url}' AND cert_index = {index}")
            DeltaTable(str(main)).optimize.compact()

        def plan(cached: bool, ceilings: dict[str, int], from_index: int | None) -> GapPlan:
            return plan_gaps(
                str(main),
                None if staging_files is None else str(staging),
                ceilings,
                from_index,
                split_size=split_size,
                runs_cache=cached,
            )

        # a detection for other logs or another window fills the cache first: what it records
        # of a file must serve any later question, not only its own
        assert plan(True, *earlier) == plan(False, *earlier)
        expected = plan(False, ceilings, from_index)
        with files_opened() as opened:
            first = plan(True, ceilings, from_index)
            second = plan(True, ceilings, from_index)
    assert first == expected
    assert second == expected
    # the first detection recorded whatever it read: the second opens nothing
    assert opened[len(opened) // 2 :] == [0] * (len(opened) // 2)


def test_after_maintain_gap_detection_opens_no_data_file(tmp_path: Path) -> None:
    """`certlake maintain` compacts the archive and records the runs of the files it wrote, so
    the next detection opens none of them and still plans the same."""
    from certlake.lake.maintain import maintain

    main = tmp_path / "main"
    write_files(main, [[(LOG, i) for i in range(n * 10, n * 10 + 7)] for n in range(6)])
    ceilings = {LOG: 70}
    expected = plan_gaps(str(main), None, ceilings, None, runs_cache=False)
    report = maintain(str(main), None, compression_level=3, retention_hours=0)
    assert report is not None
    assert report.archive_files_after < report.archive_files_before
    assert report.runs_recorded_files == report.archive_files_after
    with files_opened() as opened:
        after = plan_gaps(str(main), None, ceilings, None)
    # the same gaps (the files consulted differ: compaction merged them)
    assert after.logs == expected.logs and after.missing_count == 5 * 3
    assert opened == [0]
    # a second pass has nothing new to record, and the files compaction removed are forgotten
    again = maintain(str(main), None, compression_level=3, retention_hours=0)
    assert again is not None and again.runs_recorded_files == 0
