"""The `certlake` command: parses arguments, loads and validates the configuration, dispatches.

Each sub-command's work lives in a module of its own under `cli/`, imported inside the command
function so that `certlake --help` stays fast. Exit codes: `cli/exits.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from certlake import __version__
from certlake.cli.compat import translate_rust_argv
from certlake.cli.exits import EXIT_USAGE
from certlake.logsetup import LEVELS

if TYPE_CHECKING:
    from certlake.config import LoadedConfig

MERGE_NEEDS_STAGING: Final = "Error: --merge requires --staging-path <PATH>"

F = TypeVar("F", bound=Callable[..., Any])


def _common(func: F) -> F:
    """`--config` and `--log-level`, which every command takes."""
    func = click.option(
        "--log-level",
        type=click.Choice(list(LEVELS), case_sensitive=False),
        help="Override the configured log level.",
    )(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Configuration file (default: $CERTSTREAM_CONFIG, config.yaml, config.yml, "
        "/etc/certstream/config.yaml).",
    )(func)


def _check_table_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from certlake.config import table_path_problem

    problem = None if value is None else table_path_problem(value)
    if problem is not None:
        raise click.BadParameter(f"{value!r} is not allowed; expected {problem}")
    return value


def _check_table_paths(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    for value in values:
        _check_table_path(ctx, param, value)
    return values


_FROM = click.option(
    "--from",
    "from_index",
    type=click.IntRange(min=0),
    help="Historical mode: every index from N up to the state file's position.",
)


def _parse_to(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None or value == "head":
        return value
    if value.isascii() and value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}: expected a whole number or 'head'")


_TO = click.option(
    "--to",
    "to",
    callback=_parse_to,
    metavar="N|head",
    help="Explicit ceiling instead of the state file's: every index below N, or below the "
    "log's tree size (head, asked from the log). Without --from, starts at 0.",
)
_LOGS = click.option("--logs", help="Only logs whose URL or name contains this text.")
_STAGING = click.option(
    "--staging-path",
    callback=_check_table_path,
    help="Staging Delta table (local path, file:// or s3:// URI).",
)
_SUMMARY = click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the end-of-job summary to this file as JSON.",
)


def _load(
    config_file: Path | None, log_level: str | None, check_writes: bool = False
) -> LoadedConfig:
    """Load and validate the configuration, set up logging; exit 2 with the errors if invalid.
    `check_writes`: see `load_config`."""
    from certlake.config import ConfigError, LoadedConfig, load_config
    from certlake.logsetup import setup_logging

    try:
        loaded = load_config(config_file, check_writes=check_writes)
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    config = loaded.config
    if log_level is not None:
        config = dataclasses.replace(config, log_level=log_level.lower())
    setup_logging(config.log_level, config.log_format)
    return LoadedConfig(config, loaded.path)


def _contain_panics() -> None:
    """For the commands that use delta-rs: the panic reports of its worker threads become log
    lines (`lake/panics.py`). Before `_load`, whose log handler takes the new `sys.stderr`."""
    from certlake.lake import panics

    panics.contain()


def _exit(result: int | Coroutine[Any, Any, int]) -> NoReturn:
    """Exit with the command's code, running it first when it is a coroutine."""
    from certlake.stopping import exit_if_abandoned

    async def leaving(command: Coroutine[Any, Any, int]) -> int:
        code = await command
        # While the loop runs: closing it waits for its threads, one a stop left running too.
        exit_if_abandoned(code)
        return code

    code = result if isinstance(result, int) else asyncio.run(leaving(result))
    exit_if_abandoned(code)  # a thread left running would hold the interpreter's exit
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="certlake", message="%(prog)s %(version)s"
)
def cli() -> None:
    """certlake: Certificate Transparency firehose and archive.

    certstream-server-rust's spellings also work: --backfill, --merge, --validate-config.
    """


@cli.command()
@_common
@click.option(
    "--demo", is_flag=True, help="Offline: also run the built-in test log and watch only it."
)
@click.option(
    "--edge",
    is_flag=True,
    help="Watch no log, archive nothing: serve clients from the NATS relay (stream.nats_url).",
)
def serve(config_file: Path | None, log_level: str | None, demo: bool, edge: bool) -> None:
    """Watch the logs, stream to clients, archive if delta_sink.enabled."""
    _contain_panics()
    if demo and edge:
        raise click.UsageError("--demo and --edge cannot be used together")
    # The demo writes its own state file under ./data, which it creates; an edge writes none.
    config = _load(config_file, log_level, check_writes=not (demo or edge)).config
    if edge and config.stream.nats_url is None:
        raise click.UsageError("--edge needs stream.nats_url: the relay it serves clients from")
    from certlake.cli.serve import run_serve

    _exit(run_serve(config, demo=demo, edge=edge))


@cli.command()
@_common
@_FROM
@_TO
@_LOGS
@_STAGING
@_SUMMARY
@click.option(
    "--dask",
    "dask_scheduler",
    metavar="ADDRESS",
    help="Run the work items on the Dask cluster of this scheduler (tcp://HOST:PORT); "
    "needs the cluster extra.",
)
def backfill(
    config_file: Path | None,
    log_level: str | None,
    from_index: int | None,
    to: int | str | None,
    logs: str | None,
    staging_path: str | None,
    summary_json: Path | None,
    dask_scheduler: str | None,
) -> None:
    """Fetch what the archive is missing, write it, exit."""
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.backfill import run_backfill

    _exit(
        run_backfill(
            config,
            from_index=from_index,
            to=to,
            logs=logs,
            staging_path=staging_path,
            summary_json=summary_json,
            cluster=dask_scheduler,
        )
    )


@cli.command()
@_common
@click.option(
    "--staging-path",
    "staging_paths",
    multiple=True,
    callback=_check_table_paths,
    help="Staging Delta table (local path, file:// or s3:// URI); repeat to merge several.",
)
@_SUMMARY
def merge(
    config_file: Path | None,
    log_level: str | None,
    staging_paths: tuple[str, ...],
    summary_json: Path | None,
) -> None:
    """Merge staging tables into the main table, then delete them."""
    if not staging_paths:
        click.echo(MERGE_NEEDS_STAGING, err=True)
        sys.exit(EXIT_USAGE)
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.merge import run_merge

    paths = staging_paths[0] if len(staging_paths) == 1 else list(staging_paths)
    _exit(run_merge(config, paths, summary_json=summary_json))


@cli.command()
@_common
@_FROM
@_TO
@_LOGS
@_STAGING
def gaps(
    config_file: Path | None,
    log_level: str | None,
    from_index: int | None,
    to: int | str | None,
    logs: str | None,
    staging_path: str | None,
) -> None:
    """Print, per log, what backfill would fetch; fetch nothing."""
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.backfill import run_gaps

    _exit(run_gaps(config, from_index=from_index, to=to, logs=logs, staging_path=staging_path))


@cli.command()
@_common
@click.option(
    "--tiled",
    is_flag=True,
    help="LOG_URL is a static-ct-api monitoring prefix (only needed for a log that neither the "
    "log list nor the configuration describes).",
)
@click.option(
    "--stream",
    type=click.Choice(["full", "lite", "domains"]),
    default="full",
    show_default=True,
    help="Which stream's message to print.",
)
@click.argument("log_url")
@click.argument("indices", nargs=-1, required=True, type=click.IntRange(min=0))
def fetch(
    config_file: Path | None,
    log_level: str | None,
    tiled: bool,
    stream: str,
    log_url: str,
    indices: tuple[int, ...],
) -> None:
    """Print the stream message of each INDEX of LOG_URL, one per line."""
    config = _load(config_file, log_level).config
    from certlake.cli.fetch import run_fetch

    _exit(run_fetch(config, tiled, log_url, indices, stream))


@cli.command()
@_common
@click.option("--host", help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (0 = any free port).")
@click.option("--seed", type=int, help="Seed for keys and certificates (same seed, same log).")
@click.option("--initial-size", type=click.IntRange(min=0), help="Entries at start.")
@click.option("--rate", type=click.FloatRange(min=0), help="New entries per second, in every log.")
@click.option(
    "--total-rate",
    type=click.FloatRange(min=0),
    help="New entries per second over all logs together, round-robin.",
)
@click.option(
    "--sequence-interval",
    type=click.FloatRange(min=0),
    help="Publish tree heads every S seconds (default 1; 0 = at once).",
)
@click.option("--batch-cap", type=click.IntRange(min=1), help="Most entries per get-entries.")
@click.option(
    "--max-entries",
    type=click.IntRange(min=1),
    help="Most entries per get-entries, answers ending on multiples of it (Google: 32).",
)
@click.option(
    "--logs",
    type=click.IntRange(min=1),
    help="Host N logs (default: one RFC 6962 and one static-ct log).",
)
@click.option("--operators", type=click.IntRange(min=1), help="Spread the --logs over K operators.")
@click.option(
    "--static-share",
    type=click.FloatRange(0, 1),
    help="Share of the --logs that are static-ct (default 0.25).",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    help="Requests per second per operator and client, then 429 (burst: max(1, Q)).",
)
@click.option("--fault", "faults", multiple=True, help="Inject a fault, e.g. 429:0.1 (repeatable).")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the base URL here once listening.",
)
def testlog(config_file: Path | None, log_level: str | None, **options: Any) -> None:
    """Run the built-in test CT log server."""
    _load(config_file, log_level)
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    from certlake.cli.testlog import run_testlog

    _exit(run_testlog(**given))


_TABLE = click.option(
    "--table",
    callback=_check_table_path,
    help="The archive (default: query_api.table_path, else delta_sink.table_path).",
)


@cli.command()
@_common
@click.option("--domain", help="example.com (exact), *.example.com (under it), or a substring.")
@click.option("--issuer", help="Text the issuer's name contains (any case).")
@click.option("--from", "date_from", metavar="YYYY-MM-DD", help="Seen on or after this day.")
@click.option("--to", "date_to", metavar="YYYY-MM-DD", help="Seen on or before this day.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "csv", "parquet"]),
    default="jsonl",
    show_default=True,
    help="JSON lines, CSV (all_domains space-separated) or Parquet.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output.",
)
@_TABLE
def query(
    config_file: Path | None,
    log_level: str | None,
    domain: str | None,
    issuer: str | None,
    date_from: str | None,
    date_to: str | None,
    output_format: str,
    output: Path | None,
    table: str | None,
) -> None:
    """Print every archived certificate that matches, as GET /api/query/certs finds them."""
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.query import run_query

    filters = {"domain": domain, "issuer": issuer, "from": date_from, "to": date_to}
    _exit(run_query(config, filters, output_format=output_format, output=output, table=table))


@cli.command()
@_common
@click.option("--cluster", is_flag=True, help="Also rewrite the domain index sorted by name.")
@_TABLE
def maintain(
    config_file: Path | None, log_level: str | None, cluster: bool, table: str | None
) -> None:
    """Compact the archive, bring its domain index up to date, vacuum (safe beside serve)."""
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.maintain import run_maintain

    _exit(run_maintain(config, table=table, cluster=cluster))


@cli.group()
def index() -> None:
    """The archive's domain index."""


@index.command("rebuild")
@_common
@_TABLE
def index_rebuild(config_file: Path | None, log_level: str | None, table: str | None) -> None:
    """Build the domain index again from the archive."""
    _contain_panics()
    config = _load(config_file, log_level).config
    from certlake.cli.maintain import run_index_rebuild

    _exit(run_index_rebuild(config, table=table))


@cli.command("validate-config")
@_common
def validate_config(config_file: Path | None, log_level: str | None) -> None:
    """Check the configuration (file, environment, defaults) and summarize it."""
    # As `serve` checks it at start, so that OK here means serve will not stop on it.
    loaded = _load(config_file, log_level, check_writes=True)
    from certlake.cli.validate import run_validate_config

    _exit(run_validate_config(loaded.config, loaded.path))


# The allocators of delta-rs (jemalloc, built into the deltalake wheel) and of Arrow (mimalloc)
# keep the pages a commit freed for reuse, and a 10,000-row commit frees ~200 MB: `serve` with
# the archive stayed at ~650 MB between commits. Told to return them at once (they read these
# variables when the libraries load), it holds ~320 MB (measured: docs/benchmarks.md, "the live
# server's memory with the archive"). A value the user set wins.
_RETURN_FREED_MEMORY: Final = {
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    "MIMALLOC_PURGE_DELAY": "0",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    for name, value in _RETURN_FREED_MEMORY.items():
        os.environ.setdefault(name, value)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = translate_rust_argv(args)
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    cli.main(args=args, prog_name="certlake")
