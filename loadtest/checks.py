"""Self-consistency checks of a results folder (used by the tests, usable by hand).

`problems(folder)` returns what is wrong, empty when the report holds together: files written,
per recipient sent + unaddressed = delivered + lost with nothing negative, latency percentiles in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ORDER = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")


def _latencies(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "p50_ms" in node and "count" in node:
            yield path, node
        for k, v in node.items():
            yield from _latencies(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _latencies(v, f"{path}[{i}]")


def _accounts(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if {"sent", "delivered", "lost"} <= node.keys() and all(
            isinstance(node[k], int) for k in ("sent", "delivered", "lost")
        ):
            yield path, node
        for k, v in node.items():
            yield from _accounts(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _accounts(v, f"{path}[{i}]")


def latency_problems(results: Any) -> list[str]:
    out = []
    for path, lat in _latencies(results):
        if not lat.get("count"):
            continue
        values = [lat[k] for k in ORDER if k in lat]
        if values != sorted(values):
            out.append(f"{path}: percentiles out of order {values}")
    return out


def accounting_problems(results: Any, allow_negative_lost: bool = False) -> list[str]:
    out = []
    for path, acc in _accounts(results):
        extra = acc.get("unaddressed", 0)  # deliveries the sender could not count (loadtest.streams)
        if acc["sent"] + extra != acc["delivered"] + acc["lost"]:
            out.append(
                f"{path}: sent {acc['sent']} + unaddressed {extra} != delivered {acc['delivered']} "
                f"+ lost {acc['lost']}"
            )
        if min(acc["sent"], acc["delivered"], extra) < 0 or (acc["lost"] < 0 and not allow_negative_lost):
            out.append(f"{path}: negative figures {acc}")
    return out


def load(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "result.json").read_text())


def problems(folder: str | Path, allow_negative_lost: bool = False) -> list[str]:
    folder = Path(folder)
    out = [f"missing {name}" for name in ("result.json", "summary.md") if not (folder / name).is_file()]
    if out:
        return out
    doc = load(folder)
    out += [f"plot {p} listed but not written" for p in doc.get("plots", []) if not (folder / p).is_file()]
    out += latency_problems(doc["results"])
    out += accounting_problems(doc["results"], allow_negative_lost)
    for key in ("cpu_model", "cores", "kernel"):
        if not doc.get("machine", {}).get(key):
            out.append(f"machine.{key} missing")
    return out
