"""`python -m loadtest.firsttouch`: is this machine's memory slow the first time it is written?

Wants rooms back to back through `relay dev --warm-relays 0`, so that every room is a fresh fork
of the zygote template (its start writes some 1,600 pages it shared with the template: a new page
each), in three states of the machine:

1. as it is;
2. beside a process that holds `--hold-gib` of memory it has written;
3. that process still there, right after another `--touch-gib` were written and freed.

The first two start once the machine is idle (a thousand relays of an earlier step may still be
exiting) and, where the kernel counts what it has reported (`reported_kib`), once that count has
stopped rising: memory freed just before would otherwise still be backed, and make 2 look like 1.
The third starts right after the write, before the guest can report those pages.

On a guest that reports its free memory to the hypervisor (virtio-balloon free page reporting, as
on Firecracker; `/sys/module/page_reporting` exists), writing a page the guest had reported is a
fault on the host as well: then 2 is far slower than 1, and 3 (pages freed a moment ago, not yet
reported) is as fast as 1 again. On bare metal, or a guest without reporting, the three are alike.
docs/operations.md says what that means for the warm pool. Bounded: 3 x `--rooms` rooms, deleted
at the end; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import httpx

from loadtest.controlplane import ControlPlane
from loadtest.machine import wait_until_idle
from loadtest.report import table
from loadtest.scenarios.density import GIB, DensityConfig, _pcts, _ready, mem_available

REPORTING = "/sys/module/page_reporting"
REPORTED_KIB = f"{REPORTING}/parameters/reported_kib"

_WRITE = (
    "import mmap, sys\n"
    "n = int(sys.argv[1]); m = mmap.mmap(-1, n); block = b'\\1' * (1 << 20)\n"
    "for off in range(0, n - len(block) + 1, len(block)): m[off:off + len(block)] = block\n"
    "print('written', flush=True)\n"
    "if sys.argv[2] == 'hold': sys.stdin.read()\n"
)
"""Writes N bytes of anonymous memory; with "hold", keeps them until its stdin closes."""


def write_memory(gib: float, hold: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITE, str(int(gib * GIB)), "hold" if hold else "free"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "written":
        proc.kill()
        raise RuntimeError("the memory writer failed")
    return proc


def settle(limit: float) -> float:
    """Waits for an idle machine whose guest has reported what it had freed (see the module
    docstring), at most `limit` seconds; returns the seconds waited."""
    t0 = time.monotonic()
    wait_until_idle(limit=limit)
    last = _reported_kib()
    while last is not None and time.monotonic() - t0 < limit:
        time.sleep(2.0)
        now = _reported_kib()
        if now == last:
            break
        last = now
    return time.monotonic() - t0


def _reported_kib() -> int | None:
    try:
        with open(REPORTED_KIB) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


async def _starts(cp: ControlPlane, http: httpx.AsyncClient, ns: str, tag: str, rooms: int) -> list[float]:
    config = DensityConfig()
    return [(await _ready(cp, http, ns, f"{tag}{i}", config))["ready_ms"] for i in range(rooms)]


async def measure(
    cp: ControlPlane, rooms: int, hold_gib: float, touch_gib: float, settle_limit: float
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    async with httpx.AsyncClient(timeout=30.0) as http:
        await cp.login(http)
        ns = f"firsttouch{int(time.time())}"
        await cp.create_namespace(http, ns)
        hog = None
        try:
            settle(settle_limit)  # the control plane's start, and whatever ran before us
            out["as it is"] = await _starts(cp, http, ns, "a", rooms)
            hog = write_memory(hold_gib, hold=True)
            settle(settle_limit)
            out[f"beside {hold_gib:g} GiB held"] = await _starts(cp, http, ns, "b", rooms)
            write_memory(touch_gib, hold=False).wait(60)
            after = f"same, right after {touch_gib:g} GiB written and freed"
            out[after] = await _starts(cp, http, ns, "c", rooms)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait(10)
            await cp.delete_namespace(http, ns)
    return out


def run(
    rooms: int = 80, hold_gib: float = 4.0, touch_gib: float = 3.0, settle_limit: float = 180.0
) -> dict[str, Any]:
    """{"reporting": whether the guest reports free pages, "states": {state: percentiles in ms}}."""
    need = (hold_gib + touch_gib + 2) * GIB
    if mem_available() < need:
        raise RuntimeError(f"needs {need / GIB:.1f} GiB available, has {mem_available() / GIB:.1f}")
    cp = ControlPlane.start(extra_args=["--warm-relays", "0"])
    try:
        states = asyncio.run(measure(cp, rooms, hold_gib, touch_gib, settle_limit))
    finally:
        cp.stop()
    return {"reporting": os.path.isdir(REPORTING), "states": {k: _pcts(v) for k, v in states.items()}}


def markdown(result: dict[str, Any]) -> list[str]:
    head = "fresh forks back to back: wantRoom -> getRoom shows ipAddress (ms)"
    rows = [[state, *q.values()] for state, q in result["states"].items()]
    reporting = "yes" if result["reporting"] else "not seen"
    return [
        *table([head, "count", "p50", "p90", "p99", "max"], rows),
        "",
        f"- Free page reporting on this machine: {reporting} (`{REPORTING}`).",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.firsttouch", description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=80, help="rooms wanted back to back in each state")
    p.add_argument("--hold-gib", type=float, default=4.0)
    p.add_argument("--touch-gib", type=float, default=3.0)
    p.add_argument("--settle-limit", type=float, default=180.0, help="most seconds to wait for quiet")
    args = p.parse_args(argv)
    try:
        result = run(args.rooms, args.hold_gib, args.touch_gib, args.settle_limit)
    except RuntimeError as exc:
        print(f"firsttouch: {exc}", file=sys.stderr)
        return 2
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
