"""The relays Prometheus should scrape, as a file_sd target list (deploy/prometheus/).

Each ready relay that registered an admin port (`/metrics`) is one target group, labelled with
its room:

    [{"targets": ["127.0.0.1:40123"], "labels": {"gs2_namespace": "ns1", "gs2_room": "room1",
      "gs2_incarnation": "9f2c..."}}]

Prometheus re-reads the file when it changes (file_sd_configs), so relays are scraped from their
registration to their end without any reload. Registrations and ends only mark the list changed;
one task writes it (atomically: a temporary file renamed over it) at most once per
`min_interval`, so a burst of rooms costs one write, not one per room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("relay.control.targets")

RoomKey = tuple[str, str]


class PrometheusTargets:
    def __init__(self, path: Path, min_interval: float = 1.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._targets: dict[RoomKey, tuple[str, str]] = {}  # room -> (incarnation, host:port)
        self._changed = asyncio.Event()
        self._written: str | None = None

    def add(self, key: RoomKey, incarnation: str, target: str | None) -> None:
        """The room's relay serves /metrics at `target` (None: it has no admin server)."""
        current = self._targets.get(key)
        if target is None:
            self.remove(key)
        elif current != (incarnation, target):
            self._targets[key] = (incarnation, target)
            self._changed.set()

    def remove(self, key: RoomKey) -> None:
        if self._targets.pop(key, None) is not None:
            self._changed.set()

    def render(self) -> str:
        groups = [
            {
                "targets": [target],
                "labels": {"gs2_namespace": ns, "gs2_room": room, "gs2_incarnation": incarnation},
            }
            for (ns, room), (incarnation, target) in sorted(self._targets.items())
        ]
        return json.dumps(groups, indent=1) + "\n"

    def write(self) -> None:
        text = self.render()
        if text == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)
        self._written = text

    def clear(self) -> None:
        """No relay is left to scrape (the control plane stopped them all)."""
        self._targets.clear()
        self._try_write()

    def _try_write(self) -> None:
        try:
            self.write()
        except OSError as exc:
            log.warning("cannot write Prometheus targets %s: %r", self.path, exc)

    async def run(self) -> None:
        """Writes the list now, then at once after a change, at most once per min_interval."""
        while True:
            self._changed.clear()
            self._try_write()
            await asyncio.sleep(self.min_interval)  # changes meanwhile: one write for them all
            await self._changed.wait()
