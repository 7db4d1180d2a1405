"""`certlake merge --staging-path P [--staging-path Q ...]`: the merge job (`merge/run.py`) with
the configured main table, S3 options, commit size and compression."""

from __future__ import annotations

from pathlib import Path

from certlake.config import Config, s3_storage_options
from certlake.merge.run import merge_command, merge_stagings


def run_merge(config: Config, staging_path: str, summary_json: Path | None = None) -> int:
    return merge_command(
        config.delta_sink.table_path,
        staging_path,
        storage_options=s3_storage_options(config.storage.s3),
        batch_rows=config.delta_sink.batch_size,
        compression_level=config.delta_sink.compression_level,
        summary_json=summary_json,
    )


def run_merges(config: Config, staging_paths: list[str], summary_json: Path | None = None) -> int:
    """One staging: `run_merge` (its summary JSON as before); several: `merge_stagings`."""
    if len(staging_paths) == 1:
        return run_merge(config, staging_paths[0], summary_json)
    return merge_stagings(
        config.delta_sink.table_path,
        staging_paths,
        storage_options=s3_storage_options(config.storage.s3),
        batch_rows=config.delta_sink.batch_size,
        compression_level=config.delta_sink.compression_level,
        summary_json=summary_json,
    )
