"""`certlake validate-config`: the configuration was already loaded and validated by the CLI;
this reports what it amounts to, so an operator can check env overrides took effect."""

from __future__ import annotations

from pathlib import Path

import click

from certlake.cli.exits import EXIT_OK
from certlake.config import Config


def describe(config: Config, path: Path | None) -> list[str]:
    """Human-readable summary lines of an already validated configuration."""
    sink = config.delta_sink
    archive = (
        f"enabled, {sink.table_path} (flush at {sink.batch_size} records or every "
        f"{sink.flush_interval_secs} s, zstd {sink.compression_level})"
        if sink.enabled
        else f"disabled (backfill/merge target: {sink.table_path})"
    )
    state = config.ct_log.state_file or "disabled (every start begins at the tree head)"
    return [
        f"configuration OK: {path if path is not None else 'no file; defaults and environment'}",
        f"  server: {config.host}:{config.port}",
        f"  logs: list {config.ct_logs_url}, {len(config.custom_logs)} custom, "
        f"{len(config.static_logs)} static",
        f"  archive: {archive}",
        f"  state file: {state}",
    ]


def run_validate_config(config: Config, path: Path | None) -> int:
    for line in describe(config, path):
        click.echo(line)
    return EXIT_OK
