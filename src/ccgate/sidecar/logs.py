"""The sidecar's own log: floods of one kind of line are summarised, and the file rotates by size while it runs.

Anyone who can reach the port can make the sidecar log (malformed requests need no token), so no kind of line
may grow the file faster than `LINES_PER_KIND` per `FLOOD_INTERVAL`, and garbage from a client costs one line,
not a traceback. `ccgate sidecar start` points the sidecar's stdout and stderr at `sidecar.log`; past
`LOG_ROTATE_BYTES` the handler moves it to `sidecar.log.1` (as a start does) and points both at a fresh file, so
output that bypasses logging (a crash's traceback) follows too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ccgate.sidecar.process import LOG_ROTATE_BYTES

LINES_PER_KIND = 10
FLOOD_INTERVAL = 60.0
# kinds are templates from the code, so few; a cap keeps a bug that logs formatted strings from growing it
MAX_KINDS = 1000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(slots=True)
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0
    template: str = ""


def _client_error_name(record: logging.LogRecord) -> str | None:
    """The exception's name when the record is aiohttp reporting a request it could not parse: the client's
    fault, so a traceback says nothing useful."""
    if record.exc_info is None or not record.name.startswith("aiohttp."):
        return None
    exc = record.exc_info[1]
    if exc is None:
        return None
    # aiohttp.http_exceptions.HttpProcessingError is the root of every parse error (bad method, header, length)
    if any(cls.__name__ == "HttpProcessingError" for cls in type(exc).__mro__):
        return type(exc).__name__
    return None


class FloodLimiter:
    """At most `per_kind` lines of a kind (logger, level, message template) per `interval`; the rest are
    counted, and one summary line per kind reports them once the interval is over."""

    def __init__(
        self,
        per_kind: int = LINES_PER_KIND,
        interval: float = FLOOD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_kind = per_kind
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def admit(self, record: logging.LogRecord) -> bool:
        """Whether to write this record; a client's parse error loses its traceback here."""
        template = str(record.msg)
        name = _client_error_name(record)
        # a flood of client garbage must not silence a real error logged by the same line of code
        kind = (record.name, record.levelno, template if name is None else f"{template} ({name})")
        if name is not None:
            record.msg = f"{record.getMessage()}: malformed request ({name})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        now = self.clock()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self.interval:  # `due` reported the old one's count
            if len(self._windows) >= MAX_KINDS:
                self._windows.clear()
            window = self._windows[kind] = _Window(now, template=template[:200])
        if window.passed < self.per_kind:
            window.passed += 1
            return True
        window.suppressed += 1
        return False

    def due(self, *, everything: bool = False) -> list[logging.LogRecord]:
        """Summary records of windows that are over (all of them at shutdown), each reported once."""
        now = self.clock()
        summaries = []
        for kind, window in list(self._windows.items()):
            if not everything and now - window.started < self.interval:
                continue
            del self._windows[kind]
            if window.suppressed:
                name, level, _ = kind
                summaries.append(
                    logging.LogRecord(
                        name,
                        level,
                        __file__,
                        0,
                        "suppressed %d similar lines in %g s: %s",
                        (window.suppressed, self.interval, window.template),
                        None,
                    )
                )
        return summaries


class SidecarLogHandler(logging.StreamHandler[TextIO]):
    """stderr with a flood limit; when stderr is `log_file`, it rotates to `log_file.1` past `max_bytes`."""

    def __init__(
        self,
        log_file: Path | None = None,
        *,
        max_bytes: int = LOG_ROTATE_BYTES,
        limiter: FloodLimiter | None = None,
    ) -> None:
        super().__init__(sys.stderr)
        self.log_file = log_file
        self.max_bytes = max_bytes
        self.limiter = limiter or FloodLimiter()
        self.setFormatter(logging.Formatter(FORMAT))

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.acquire()
        try:
            for summary in self.limiter.due():
                self.emit(summary)
            if not self.limiter.admit(record):
                return False
            self.emit(record)
            self._rotate_if_big()
        finally:
            self.release()
        return True

    def close(self) -> None:
        self.acquire()
        try:
            for summary in self.limiter.due(everything=True):
                self.emit(summary)
        finally:
            self.release()
        super().close()

    def _rotate_if_big(self) -> None:
        """Only the file stderr really is: started in a terminal, the sidecar never moves a file."""
        if self.log_file is None:
            return
        try:
            self.flush()
            written = os.fstat(self.stream.fileno())
            if written.st_size <= self.max_bytes:
                return
            on_disk = os.stat(self.log_file)
            if (on_disk.st_dev, on_disk.st_ino) != (written.st_dev, written.st_ino):
                return
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
            fresh = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                for fd in (1, 2):  # both go to the log when `sidecar start` started the sidecar
                    if _same_file(fd, written):
                        os.dup2(fresh, fd)
            finally:
                os.close(fresh)
        except (OSError, ValueError):
            # a full disk or a closed stream must never take the sidecar down; the next line tries again
            return


def _same_file(fd: int, stat: os.stat_result) -> bool:
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (stat.st_dev, stat.st_ino)


def configure(level: str, log_file: Path | None) -> SidecarLogHandler:
    """The root logger writes through one SidecarLogHandler (replacing any handler set before)."""
    handler = SidecarLogHandler(log_file)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
