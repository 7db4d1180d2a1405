"""Rust panics inside delta-rs, kept off the user's screen.

delta-rs does its I/O in tokio worker threads. When one of them panics — deltalake 1.6.6 does
whenever a data file cannot be created (object_store's BufWriter: "Already shut down"; a
read-only table, a file where a partition directory should be) — the panic raises nothing in
Python: the call that waited for the task raises an ordinary `DeltaError` (the I/O error behind
it, or "writer join error: task N panicked"), which the jobs report with their exit code. But
Rust's panic hook has already printed "thread 'tokio-rt-worker' panicked at …", and with
RUST_BACKTRACE set a backtrace, straight onto file descriptor 2, in the middle of the log lines,
where it reads like a crash of certlake.

`contain()` routes file descriptor 2 through a pipe. A thread copies what arrives to the real
stderr line by line, except a panic report, which it turns into one log line (thread, where,
message). Python's own `sys.stderr` keeps writing to the real stderr directly, so a terminal
stays a terminal (the progress display). Only what is recognised as a panic report is held back
(`PanicFilter`); anything else, from delta-rs or a child process, passes unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

# "thread 'tokio-rt-worker' (4620) panicked at src/buffered.rs:369:41:" (Rust >= 1.73: the
# message follows on its own line; the thread id since 1.87) or, before 1.73, "thread 'main'
# panicked at 'message', src/main.rs:2:5".
_HEADER: Final = re.compile(r"thread '(?P<thread>[^']*)'(?: \(\d+\))? panicked at (?P<rest>.*)")
_OLD_STYLE: Final = re.compile(r"'(?P<message>.*)', (?P<at>\S+)")
_BACKTRACE: Final = "stack backtrace:"


@dataclass(frozen=True, slots=True)
class Panic:
    thread: str
    at: str
    message: str


class PanicFilter:
    """Lines in, the lines to pass on out; each panic report found goes to `on_panic` instead.

    A report is: an optional blank line (Rust starts one with it), the header, the message line
    (Rust >= 1.73), then optionally Rust's note on RUST_BACKTRACE, or "stack backtrace:", its
    indented frames and a closing note. A message of several lines keeps all but its first."""

    def __init__(self, on_panic: Callable[[Panic], None]) -> None:
        self._on_panic = on_panic
        self._blank = False  # a blank line held back: it may open a panic report
        self._state = "text"  # text | message | after | frames
        self._header: tuple[str, str] | None = None

    def feed(self, line: str) -> list[str]:
        state, self._state = self._state, "text"
        if state == "message" and self._header is not None:
            thread, at = self._header
            self._on_panic(Panic(thread, at, line))
            self._state = "after"
            return []
        if state in ("after", "frames"):
            if line.startswith("note: ") and "RUST_BACKTRACE" in line:
                return []
            if state == "after" and line == _BACKTRACE:
                self._state = "frames"
                return []
            if state == "frames" and line[:1].isspace():
                self._state = "frames"
                return []
        header = _HEADER.fullmatch(line)
        if header is not None:
            self._blank = False
            self._report(header.group("thread"), header.group("rest"))
            return []
        out = [""] if self._blank else []
        self._blank = line == ""
        return out if self._blank else [*out, line]

    def close(self) -> list[str]:
        """What is still held back, once no more lines come."""
        out = [""] if self._blank else []
        self._blank = False
        return out

    def _report(self, thread: str, rest: str) -> None:
        if rest.endswith(":"):
            self._header = (thread, rest[:-1])
            self._state = "message"
            return
        old = _OLD_STYLE.fullmatch(rest)
        message, at = (old.group("message"), old.group("at")) if old else (rest, "")
        self._on_panic(Panic(thread, at, message))
        self._state = "after"


def _log_panic(panic: Panic) -> None:
    log.warning(
        "delta-rs panicked in a worker thread; the call it served fails with its own error",
        extra={"rust_thread": panic.thread, "at": panic.at, "panic": panic.message},
    )


class _Route:
    """File descriptor 2 → pipe → the copying thread → the real stderr."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._filter = PanicFilter(_log_panic)
        self._thread = threading.Thread(target=self._copy, name="stderr-panic-filter", daemon=True)
        encoding = sys.stderr.encoding or "utf-8"
        sys.stderr = open(  # noqa: SIM115 - it is the process's stderr from now on
            os.dup(self.real), "w", buffering=1, encoding=encoding, errors="backslashreplace"
        )
        self._thread.start()

    def _copy(self) -> None:
        pending = b""
        while chunk := os.read(self._read, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            try:
                out = [out for line in lines for out in self._filter.feed(_text(line))]
            except Exception:  # never lose a line, nor stop reading: a full pipe blocks writers
                out = [_text(line) for line in lines]
            self._pass(out)
        tail = [_text(pending)] if pending else []
        self._pass(self._filter.close() + tail, end="" if tail else "\n")
        os.close(self._read)

    def _pass(self, lines: list[str], end: str = "\n") -> None:
        data = ("\n".join(lines) + end).encode(errors="backslashreplace") if lines else b""
        try:
            while data:
                data = data[os.write(self.real, data) :]
        except OSError:  # the real stderr is gone (closed terminal): keep draining the pipe
            pass

    def drain(self) -> None:
        """Put the real stderr back on file descriptor 2 and let the thread pass on what it
        holds (it stops once no other process holds the pipe either)."""
        sys.stderr.flush()
        os.dup2(self.real, 2)
        self._thread.join(timeout=1.0)


def _text(line: bytes) -> str:
    return line.decode(errors="backslashreplace")


_route: _Route | None = None


def contain() -> None:
    """Route file descriptor 2 through the panic filter, once per process (a no-op after)."""
    global _route
    if _route is None:
        _route = _Route()
        atexit.register(drain)


def drain() -> None:
    """Undo `contain` and pass on what the filter still holds (before the process exits)."""
    global _route
    if _route is not None:
        route, _route = _route, None
        route.drain()
