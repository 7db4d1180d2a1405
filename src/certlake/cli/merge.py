"""`certlake merge --staging-path P [--staging-path Q ...]`: the merge job (`merge/run.py`) with
the configured main table, S3 options, commit size and compression."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from certlake.config import Config, s3_storage_options
from certlake.merge.run import merge_command


def run_merge(
    config: Config, staging_paths: str | Sequence[str], summary_json: Path | None = None
) -> int:
    """One staging path, or several (`merge_command` says how they are merged)."""
    return merge_command(
        config.delta_sink.table_path,
        staging_paths,
        storage_options=s3_storage_options(config.storage.s3),
        batch_rows=config.delta_sink.batch_size,
        compression_level=config.delta_sink.compression_level,
        summary_json=summary_json,
    )
