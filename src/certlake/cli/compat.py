"""certstream-server-rust's command-line spelling, mapped onto certlake's sub-commands.

`certlake --backfill --from 5 --staging-path P` is rewritten to `certlake backfill --from 5
--staging-path P` before click parses anything, so both spellings reach the same command and get
the same validation (an unknown flag or `--from abc` is an error either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import click

RUST_MODES: Final = {
    "--backfill": "backfill",
    "--merge": "merge",
    "--validate-config": "validate-config",
}
# Options whose next token is their value, so a value that looks like a flag is not mistaken
# for a mode flag.
TAKES_VALUE: Final = frozenset(
    {
        "--config",
        "--from",
        "--to",
        "--logs",
        "--staging-path",
        "--summary-json",
        "--log-level",
        "--dask",
    }
)


def translate_rust_argv(args: Sequence[str]) -> list[str]:
    """`args` with a Rust mode flag turned into the sub-command name it stands for.

    Arguments that already name a sub-command, or carry no mode flag, are returned unchanged.
    Raises `click.UsageError` when two mode flags are combined.
    """
    modes: list[str] = []
    rest: list[str] = []
    takes_value = False
    for pos, token in enumerate(args):
        if takes_value:
            rest.append(token)
            takes_value = False
        elif token == "--":
            rest.extend(args[pos:])
            break
        elif token in RUST_MODES:
            modes.append(token)
        elif not token.startswith("-"):
            # A sub-command (or a stray argument): click's own parsing decides.
            return list(args)
        else:
            takes_value = token in TAKES_VALUE
            rest.append(token)
    if not modes:
        return list(args)
    if len(modes) > 1:
        raise click.UsageError(f"{modes[0]} and {modes[1]} cannot be used together")
    return [RUST_MODES[modes[0]], *rest]
