"""Retention of the local relays' logs: `relay-logs/<namespace>/<room>.log` and `standby.log`.

Every room leaves a log, and a machine that opens a room a second for a day would otherwise keep
86,400 files. `prune()` removes the logs of a room that no longer runs once nothing has been
written to them for `keep_seconds`, and cuts a running relay's log, or standby.log, once it has
grown past `max_bytes` (copied to
`<log>.1`, replacing the last such copy, then truncated in place: relays write with O_APPEND, so
they go on at the new end; lines written between the copy and the cut are lost, as with
logrotate's copytruncate). The local provisioner runs it every PRUNE_INTERVAL seconds in a
thread; directories are left in place (a room starting in one must find it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PRUNE_INTERVAL = 300.0
"""Seconds between two passes over the log directory."""


@dataclass(frozen=True, slots=True)
class LogRetention:
    keep_seconds: float = 86400.0
    """An ended room's log is removed this long after its last write; 0 keeps every log."""
    max_bytes: int = 16 << 20
    """A log past this size is cut (copied to <log>.1, then truncated); 0: never."""


@dataclass(slots=True)
class PruneResult:
    removed: int = 0
    cut: int = 0


def prune(
    log_dir: Path,
    running: Callable[[str, str], bool],
    retention: LogRetention,
    now: float | None = None,
) -> PruneResult:
    """One pass. `running(namespace, room)` says whether that room's relay is (being) started:
    its log is never removed, only cut. Files vanishing meanwhile are not an error."""
    now = time.time() if now is None else now
    result = PruneResult()
    if not log_dir.is_dir():
        return result
    for path in log_dir.glob("*.log"):  # standby.log: written by whichever standby is starting
        _cut_if_large(path, retention, result)
    for ns_dir in log_dir.iterdir():
        if not ns_dir.is_dir():
            continue
        for path in ns_dir.iterdir():
            name = path.name
            room = name.removesuffix(".1").removesuffix(".log") if name.endswith((".log", ".log.1")) else None
            if room is None:
                continue
            if running(ns_dir.name, room):
                if name.endswith(".log"):
                    _cut_if_large(path, retention, result)
                continue
            if retention.keep_seconds <= 0:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < now - retention.keep_seconds:
                    path.unlink()
                    result.removed += 1
    return result


def _cut_if_large(path: Path, retention: LogRetention, result: PruneResult) -> None:
    with contextlib.suppress(FileNotFoundError):
        if not retention.max_bytes or path.stat().st_size <= retention.max_bytes:
            return
        shutil.copyfile(path, path.with_name(path.name + ".1"))
        os.truncate(path, 0)
        result.cut += 1
