"""The real `relay serve`, plus two misbehaviours on demand, for the cap tests.

SIGRTMIN: allocate and touch memory in 8 MiB steps until something stops it (the kernel, at the
cgroup's cap). SIGRTMIN+1: spin on the CPU (the event loop keeps turning between 10 ms bursts, so
the relay still serves, slowly). SIGRTMIN+2: hang (no heartbeat) for HANG seconds, then allocate
as on SIGRTMIN: a relay that goes silent while the kernel is still about to OOM-kill it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from relay.agent import serve
from relay.agent.launch import RelayLaunch

GROW = signal.SIGRTMIN
SPIN = signal.SIGRTMIN + 1
HANG_THEN_GROW = signal.SIGRTMIN + 2
HANG = 1.8
_hoard: list[bytearray] = []


def _grow() -> None:
    for _ in range(64):  # 512 MiB at most
        _hoard.append(bytearray(b"x" * (8 << 20)))


async def _spin() -> None:
    while True:
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def _serve(launch: RelayLaunch) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(GROW, _grow)
    loop.add_signal_handler(SPIN, lambda: loop.create_task(_spin()))
    loop.add_signal_handler(HANG_THEN_GROW, lambda: (time.sleep(HANG), _grow()))
    return await serve.serve(launch)


def main() -> int:
    import uvloop

    return uvloop.run(_serve(RelayLaunch.parse(sys.argv[1:])))


if __name__ == "__main__":
    sys.exit(main())
