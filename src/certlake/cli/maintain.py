"""`certlake maintain` and `certlake index rebuild`: `lake/maintain.py` and `lake/domains.py` on
the configured archive (or `--table`), with a one-line report on standard error."""

from __future__ import annotations

import sys

from certlake.cli.exits import EXIT_FAILED, EXIT_OK
from certlake.config import Config, s3_storage_options
from certlake.lake import domains
from certlake.lake.domains import IndexBehindError
from certlake.lake.maintain import maintain
from certlake.lake.table import (
    TableUnreadableError,
    compaction_lease,
    open_table,
    table_storage_options,
    table_uri,
    writer_properties,
)


def _where(config: Config, table: str | None) -> tuple[str, dict[str, str] | None]:
    uri = table_uri(table or config.delta_sink.table_path)
    return uri, table_storage_options(uri, s3_storage_options(config.storage.s3))


def run_maintain(config: Config, *, table: str | None, cluster: bool) -> int:
    uri, options = _where(config, table)
    sink = config.delta_sink
    try:
        if open_table(uri, options) is None:
            print(f"Error: no archive table at {uri}", file=sys.stderr)
            return EXIT_FAILED
        report = maintain(
            uri,
            options,
            compression_level=sink.compression_level,
            retention_hours=sink.retention_hours,
            cluster=cluster,
        )
    except (TableUnreadableError, IndexBehindError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if report is None:
        print("Error: another process is compacting the archive; try later", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"archive files {report.archive_files_before} -> {report.archive_files_after}, "
        f"index files {report.index_files_before} -> {report.index_files_after}"
        f"{' (clustered)' if report.index_clustered else ''}, "
        f"{report.indexed_rows} rows indexed{' (index built)' if report.index_built else ''}, "
        f"{report.vacuumed_archive + report.vacuumed_index} old files deleted, "
        f"{report.seconds:.1f} s",
        file=sys.stderr,
    )
    return EXIT_OK


def run_index_rebuild(config: Config, *, table: str | None) -> int:
    uri, options = _where(config, table)
    level = config.delta_sink.compression_level
    try:
        archive = open_table(uri, options)
        if archive is None:
            print(f"Error: no archive table at {uri}", file=sys.stderr)
            return EXIT_FAILED
        # Under the compaction lease: a compaction meanwhile would replace files being read.
        with compaction_lease(archive, writer_properties(level)) as held:
            if not held:
                print(
                    "Error: another process is compacting the archive; try later", file=sys.stderr
                )
                return EXIT_FAILED
            built = domains.rebuild(uri, options, compression_level=level)
    except TableUnreadableError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if built is None:
        print(f"Error: no archive table at {uri}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"domain index of {built.archive_rows} rows ({built.index_rows} names) at archive"
        f" version {built.covered_to}",
        file=sys.stderr,
    )
    return EXIT_OK
