"""Structured logging: key=value and JSON lines, levels named as in the config file."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from certlake.logsetup import TRACE, parse_level, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_key_value_lines() -> None:
    out = io.StringIO()
    setup_logging("info", "text", out)
    log = logging.getLogger("certlake.test")
    log.info("saved state", extra={"path": "/var/lib/my state.json", "logs": 12})
    log.debug("not shown")
    line = out.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO certlake\.test saved state "
        r'path="/var/lib/my state\.json" logs=12\n',
        line,
    ), line


def test_json_lines_with_exception() -> None:
    out = io.StringIO()
    setup_logging("warn", "json", out)
    log = logging.getLogger("certlake.test")
    log.info("hidden")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("fetch failed", extra={"index": 7, "url": "https://ct.example.com"})
    (line,) = out.getvalue().splitlines()
    doc = json.loads(line)
    assert list(doc)[:4] == ["ts", "level", "logger", "msg"]
    assert (doc["level"], doc["msg"], doc["index"], doc["url"]) == (
        "ERROR",
        "fetch failed",
        7,
        "https://ct.example.com",
    )
    assert "RuntimeError: boom" in doc["exc"]


def test_setup_replaces_earlier_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", first)
    setup_logging("info", "text", second)
    logging.getLogger("certlake.test").info("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


def test_levels() -> None:
    assert parse_level("WARN") == logging.WARNING
    assert parse_level("trace") == TRACE < logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_level("loud")
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("info", "xml")
