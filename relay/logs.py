"""Process logs of every command: JSON lines on stderr by default (one object per record, for a
log shipper), or plain text for a person at a terminal (`--log-format text`).

A JSON line holds `time` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`, the
record's `extra` fields, and `exception` (the traceback as one string) when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")

# What every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


ROOM_LOG: ContextVar[TextIO | None] = ContextVar("ROOM_LOG", default=None)
"""The log of the room the current task works for, in a process serving several rooms
(relay/host/group.py): its records go there, as a room's own process would write them."""


class RoutedStream:
    """stderr, or the current context's room log (ROOM_LOG) where one is set."""

    def __init__(self, default: TextIO) -> None:
        self.default = default

    def write(self, text: str) -> int:
        return (ROOM_LOG.get() or self.default).write(text)

    def flush(self) -> None:
        (ROOM_LOG.get() or self.default).flush()


def configure(level: str = "info", fmt: str = "json", stream: TextIO | RoutedStream | None = None) -> None:
    """Sends every logger's records to stderr in `fmt` at `level`, replacing earlier handlers
    (a forked relay inherits its template's)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


class FailureLog:
    """Logs a failure that repeats (a sidecar or a server not answering) sparingly: the first at
    WARNING, then only the 2nd, 4th, 8th, ... with the count (a retry loop with a capped backoff
    would otherwise write a line per try, hundreds a minute), and one INFO line when it passes."""

    __slots__ = ("failures", "logger", "what")

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.failures = 0

    def failed(self, why: object, then: str = "") -> None:
        """Counts one failure; logs it when the count is a power of two."""
        self.failures += 1
        n = self.failures
        if n & (n - 1) == 0:
            count = "" if n == 1 else f" ({n} failures in a row; next logged at {2 * n})"
            tail = f"; {then}" if then else ""
            self.logger.warning("%s: %s%s%s", self.what, why, tail, count, extra={"failures": n})

    def succeeded(self) -> None:
        """Logs the recovery once, if anything failed."""
        if self.failures:
            self.logger.info("%s: answering again after %d failures", self.what, self.failures)
            self.failures = 0
