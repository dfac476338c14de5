"""The operation log (a namespace's logSetting): JSON lines for room created / ready / deleted / closed.

Every event goes to the main log ({data_dir}/operations.log by default). When the room's
namespace has logSetting.loggingNamespaceId, the event also goes to that logging namespace's
own stream: {data_dir}/logs/<the GRN as a file name>.jsonl (relay/control/filenames.py: two
GRNs never share a file), so each GS2-Log namespace is one file that can be shipped or tailed
on its own.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from relay.control.filenames import component


def stream_file(logs_dir: Path, logging_namespace_id: str) -> Path:
    return logs_dir / (component(logging_namespace_id) + ".jsonl")


class OperationLog:
    def __init__(self, path: Path, logs_dir: Path) -> None:
        self.path = path
        self.logs_dir = logs_dir
        self._lock = threading.Lock()

    def write(
        self, event: str, namespace: str, room: str | None, logging_namespace_id: str | None, **fields: Any
    ) -> None:
        """Appends one line (small, unbuffered appends: safe to call from the event loop)."""
        ts = time.time()
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z",
            "timestamp": int(ts * 1000),
            "event": event,
            "namespaceName": namespace,
        }
        if room is not None:
            record["roomName"] = room
        if logging_namespace_id:
            record["loggingNamespaceId"] = logging_namespace_id
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, separators=(",", ":")) + "\n"
        targets = [self.path]
        if logging_namespace_id:
            targets.append(stream_file(self.logs_dir, logging_namespace_id))
        with self._lock:
            for target in targets:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "a", encoding="utf-8") as f:
                        f.write(line)
                except OSError:
                    pass  # logging must never break the API
