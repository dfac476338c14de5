"""Whether this host can take another relay: a count of rooms, and memory kept free.

Every relay may grow to its tier's memory cap (realtime1.nano: 64 MiB) though an idle one uses
about 6 MiB, so a host is not full when its relays' caps add up to its memory, but when what is
left could no longer let a few of them grow: a room is refused while MemAvailable is below
`headroom_bytes` (a number of tier caps, ControlConfig.memory_headroom_rooms), or once
`max_rooms` relays run (ControlConfig.max_rooms). docs/operations.md says how to size both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's MemAvailable in bytes (None where it does not say)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True, slots=True)
class Capacity:
    max_rooms: int = 0
    """Rooms at once; 0: no count limit."""
    headroom_bytes: int = 0
    """MemAvailable a new room needs to find; 0: no memory check."""

    def refusal(self, rooms: int, meminfo: Path = Path("/proc/meminfo")) -> str | None:
        """Why this host, running `rooms`, cannot take one more; None when it can."""
        if self.max_rooms and rooms >= self.max_rooms:
            return f"this host runs its maximum of {self.max_rooms} rooms"
        if self.headroom_bytes:
            free = available_memory(meminfo)
            if free is not None and free < self.headroom_bytes:
                return (
                    f"this host has {free // MIB} MiB of memory available, "
                    f"below the {self.headroom_bytes // MIB} MiB kept free"
                )
        return None
