"""`certlake maintain`, on demand and on `serve`'s schedule: the archive kept fast to read while
writers go on.

In this order, under the archive's compaction lease (`table.compaction_lease`: never two
compactions of one table at once, whoever runs them):
1. the domain index catches up with the archive (built if there is none): it must read the
   files of the commits it does not cover before a compaction replaces them and a vacuum
   deletes them;
2. the archive's small files are merged (`optimize.compact`, per `seen_date`);
3. the index's small files are merged too, and when it is spread over more than
   `CLUSTER_FILES` files (or when asked) it is clustered: rewritten sorted by key
   (`optimize.z_order` on the one column), so that a domain's key range lies in one file or two;
4. files replaced more than `retention_hours` ago are deleted from both (vacuum): a query cursor,
   which reads the table version of its first page, stays valid that long;
5. the index catches up once more, past the compaction's commits (see `search.Snapshot`: files
   added after the version the index covers are read directly);
6. the runs cache gap detection reads (`known_runs`) forgets the files compaction removed and
   records the files it wrote, so that the next `certlake backfill` opens no data file to find
   what is missing. Best effort: a failure here costs gap detection a read, never a row.
Compaction commits remove files without changing data (`dataChange: false`) and append-only
writers never conflict with it: the live sink, backfill and merge go on committing meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from deltalake import DeltaTable

from certlake.lake import domains, known_runs
from certlake.lake.table import (
    STORAGE_ERRORS,
    TableUnreadableError,
    compaction_lease,
    open_table,
    writer_properties,
)

log = logging.getLogger(__name__)

CLUSTER_FILES: Final = 64


@dataclass
class MaintainReport:
    archive_files_before: int = 0
    archive_files_after: int = 0
    index_files_before: int = 0
    index_files_after: int = 0
    indexed_rows: int = 0  # archive rows the index caught up with
    index_built: bool = False
    index_clustered: bool = False
    vacuumed_archive: int = 0
    vacuumed_index: int = 0
    runs_recorded_files: int = 0  # data files whose key runs were recorded for gap detection
    runs_pruned: int = 0  # runs-cache rows of files the archive no longer holds, dropped
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def maintain(
    uri: str,
    storage_options: Mapping[str, str] | None,
    *,
    compression_level: int,
    retention_hours: int,
    cluster: bool = False,
) -> MaintainReport | None:
    """One maintenance pass (see the module doc); None when there is no archive yet or another
    process holds the compaction lease. Raises `TableUnreadableError` on storage failures;
    what was committed before one stays (every step is a commit of its own)."""
    started = time.monotonic()
    archive = open_table(uri, storage_options)
    if archive is None:
        return None
    writer = writer_properties(compression_level)
    report = MaintainReport()
    with compaction_lease(archive, writer) as held:
        if not held:
            return None
        try:
            report.archive_files_before = _files(archive)
            caught_up = domains.catch_up(
                uri, storage_options, compression_level=compression_level, build=True
            )
            if caught_up is not None:
                report.indexed_rows = caught_up.archive_rows
                report.index_built = caught_up.covered_from is None
            archive.optimize.compact(writer_properties=writer)
            index = domains.open_index(uri, storage_options)
            if index is not None:
                report.index_files_before = _files(index)
                index_writer = domains.index_writer(compression_level)
                index.optimize.compact(writer_properties=index_writer)
                if cluster or _files(index) > CLUSTER_FILES:
                    index.optimize.z_order([domains.KEY], writer_properties=index_writer)
                    report.index_clustered = True
                report.vacuumed_index = _vacuum(index, retention_hours)
                report.index_files_after = _files(index)
            report.vacuumed_archive = _vacuum(archive, retention_hours)
            report.archive_files_after = _files(archive)
            # Past the compaction's commit too (it indexes nothing: no data changed), or searches
            # would read every rewritten file directly until the next writer's catch-up.
            domains.catch_up(uri, storage_options, compression_level=compression_level)
        except STORAGE_ERRORS as exc:
            raise TableUnreadableError(f"maintenance of {uri} failed: {exc}") from exc
        _keep_runs(uri, storage_options, report)
    report.seconds = round(time.monotonic() - started, 3)
    log.info("archive maintained", extra={"table": uri, **report.as_dict()})
    return report


def _keep_runs(uri: str, storage_options: Mapping[str, str] | None, report: MaintainReport) -> None:
    try:
        pruned = known_runs.prune(uri, storage_options)
        report.runs_pruned = 0 if pruned is None else pruned.dropped
        report.runs_recorded_files = known_runs.record(uri, storage_options).files
    except Exception as exc:  # whatever failed, it only costs gap detection a read of files
        log.warning(
            "the runs cache was not brought up to date; gap detection will read the files",
            extra={"table": uri, "error": str(exc)},
        )


def _files(table: DeltaTable) -> int:
    table.update_incremental()
    return len(table.file_uris())


def _vacuum(table: DeltaTable, retention_hours: int) -> int:
    return len(
        table.vacuum(
            retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False
        )
    )
