"""Rewriting this process's command line (what `ps` and /proc/PID/cmdline show).

A relay forked from the zygote template, or a standby given its room later, must show the room's
own `relay serve` flags: after a control-plane restart the provisioner adopts running relays by
reading /proc/PID/cmdline (relay/control/provisioner.py: pid_is_relay). The template is started
with a blank-padded argv so that there is room to write.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path


def set_cmdline(argv: Sequence[str]) -> bool:
    """Writes argv over this process's argv area; False where /proc lacks the addresses or argv does
    not fit (best effort: the process runs the same either way)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return False
    data = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    if not start or len(data) > end - start:
        return False
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    return True
