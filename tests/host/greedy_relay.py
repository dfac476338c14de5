"""The real `relay serve`, plus two misbehaviours on demand, for the cap tests.

SIGRTMIN: allocate and touch memory in 8 MiB steps until something stops it (the kernel, at the
cgroup's cap). SIGRTMIN+1: spin on the CPU (the event loop keeps turning between 10 ms bursts, so
the relay still serves, slowly)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from relay.agent import serve
from relay.agent.launch import RelayLaunch

GROW = signal.SIGRTMIN
SPIN = signal.SIGRTMIN + 1
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
    return await serve.serve(launch)


def main() -> int:
    import uvloop

    return uvloop.run(_serve(RelayLaunch.parse(sys.argv[1:])))


if __name__ == "__main__":
    sys.exit(main())
