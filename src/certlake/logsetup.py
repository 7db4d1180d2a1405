"""Structured logging on top of the standard library.

Call sites log a short constant message and put the variable parts in `extra`:

    log.info("saved state", extra={"path": str(path), "logs": 12})

so the line can be read by people (``key=value``) and by machines (one JSON object per line)
without parsing prose. Everything goes to stderr: stdout belongs to commands such as
`certlake fetch` whose output is data.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Final, TextIO

import orjson

# Rust's tracing levels (the config file's vocabulary) mapped onto the stdlib's; "trace" has no
# stdlib equivalent, so it gets a level of its own below DEBUG.
TRACE: Final = 5
LEVELS: Final[dict[str, int]] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS: Final = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra` and is a field.
_RESERVED: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO certlake.ingest.state saved state path=/x logs=12`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts.extend(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the `extra` fields, then exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def parse_level(name: str) -> int:
    """The stdlib level for a config/CLI level name; raises ValueError for unknown names."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route all logging to one handler on `stream` (stderr by default), replacing earlier setup.

    Idempotent, so every CLI command can call it once it knows the configured level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
