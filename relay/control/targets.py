"""The relays Prometheus should scrape, as a file_sd target list (deploy/prometheus/).

Each ready relay of this node that registered an admin port (`/metrics`) is one target group,
labelled with its room:

    [{"targets": ["127.0.0.1:40123"], "labels": {"gs2_namespace": "ns1", "gs2_room": "room1",
      "gs2_incarnation": "9f2c..."}}]

Prometheus re-reads the file when it changes (file_sd_configs), so relays are scraped from their
registration to their end without any reload. The list is derived from the node's rooms
(`RoomRuntime.metrics_target`), so a room that ends leaves it with its runtime entry; one task
renders it every `min_interval` and writes it (atomically: a temporary file renamed over it) only
when it changed, so a burst of rooms costs one write, not one per room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from relay.control.cluster import RoomKey, RoomRuntime

log = logging.getLogger("relay.control.targets")


class PrometheusTargets:
    def __init__(self, path: Path, runtime: Mapping[RoomKey, RoomRuntime], min_interval: float = 1.0) -> None:
        self.path = path
        self.runtime = runtime
        self.min_interval = min_interval
        self._written: str | None = None

    def render(self) -> str:
        groups = [
            {
                "targets": [rt.metrics_target],
                "labels": {"gs2_namespace": ns, "gs2_room": room, "gs2_incarnation": rt.incarnation},
            }
            for (ns, room), rt in sorted(self.runtime.items())
            if rt.metrics_target is not None
        ]
        return json.dumps(groups, indent=1) + "\n"

    def write(self, text: str) -> None:
        if text == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)
        self._written = text

    def clear(self) -> None:
        """No relay is left to scrape (the control plane stopped them all)."""
        self._try_write("[]\n")

    def _try_write(self, text: str) -> None:
        try:
            self.write(text)
        except OSError as exc:
            log.warning("cannot write Prometheus targets %s: %r", self.path, exc)

    async def run(self) -> None:
        """Writes the list now, then whenever it changed, looking every min_interval."""
        while True:
            self._try_write(self.render())
            await asyncio.sleep(self.min_interval)
