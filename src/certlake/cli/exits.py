"""The exit codes of every `certlake` command, so that scripts and cron jobs can tell a failed
job from a mistake in how it was called."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
# The job ran and did not finish its work (anything left over is reported).
EXIT_FAILED: Final = 1
# The command was called wrongly: bad arguments, an invalid configuration, or a path that names
# something the command must not touch. Nothing was changed.
EXIT_USAGE: Final = 2
