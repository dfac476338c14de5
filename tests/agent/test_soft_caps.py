"""Soft caps (no cgroup): a real `relay serve --tier realtime1.nano --caps soft`, a plain
subprocess as the local provisioner starts one where it cannot write cgroups, measured as its
guard measures it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import relay.client as rc
from loadtest.controlplane import free_port
from relay.agent.launch import ENV_AGENT_SECRET, ENV_ROOM_KEY
from relay.agent.tiers import NANO
from relay.host.spawner import SubprocessSpawner, pid_alive, relay_environment
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from tests.control.helpers import REAL_RELAY, wait_for
from tests.host import greedy_relay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
SOFT_NANO = ("--tier", NANO.name, "--caps", "soft")
QUIET_CHECK = 5.0  # CapsGuard's quiet_interval: its first look at an empty room
MIB = 1 << 20
GREEDY_RELAY = (sys.executable, "-m", "tests.host.greedy_relay")  # relay serve that grows on a signal


@contextlib.asynccontextmanager
async def soft_relay(
    log: Path, key: str, *flags: str, command: tuple[str, ...] = REAL_RELAY
) -> AsyncIterator[tuple[int, int, int]]:
    """(pid, port, admin port) of a soft-capped nano relay once it serves; killed at the end."""
    port, admin = free_port(), free_port()
    argv = [*command, "--host", HOST, "--port", str(port), "--admin-port", str(admin), *SOFT_NANO, *flags]
    env = relay_environment({ENV_ROOM_KEY: key, ENV_AGENT_SECRET: "secret"})
    handle = await SubprocessSpawner().spawn(argv, env, log)
    try:
        await wait_for(lambda: gauges(admin), timeout=30)
        yield handle.pid, port, admin
    finally:
        if pid_alive(handle.pid):
            handle.kill()
        await asyncio.wait_for(handle.wait(), 10)


async def gauges(admin: int) -> dict[str, float]:
    """The relay's /metrics samples by name ({} until it answers)."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://{HOST}:{admin}/metrics")).text
    except httpx.TransportError:
        return {}
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def proc_number(path: Path, pattern: str) -> int:
    """The number `pattern` (one group) finds in a /proc file."""
    found = re.search(pattern, path.read_text(), re.M)
    assert found is not None, (path, pattern)
    return int(found.group(1))


async def test_an_idle_soft_capped_relay_admits_members_and_growth_still_closes_it(tmp_path: Path) -> None:
    """Found in review: the guard read RSS, pages shared with every other Python process
    included (the interpreter's and libraries' code): an idle relay read 58 MiB, over the
    57.6 MiB join-refusal line, and refused every JOIN from its first check on. Its private
    memory is what its room costs."""
    key = generate_room_key()
    async with soft_relay(tmp_path / "relay.log", key, command=GREEDY_RELAY) as (pid, port, admin):
        started = time.monotonic()
        memory = (await gauges(admin))["relay_memory_bytes"]  # what the guard compares with the cap
        refusal_line = NANO.memory_bytes * NANO.join_refusal_ratio
        assert memory <= refusal_line - NANO.memory_bytes / 4, memory / MIB  # room for members
        await asyncio.sleep(max(0.0, started + QUIET_CHECK + 1.5 - time.monotonic()))  # guard looked
        assert (await gauges(admin))["relay_accepting_joins"] == 1.0
        a = await rc.connect(HOST, port, key, "a", transport="ws")
        b = await rc.connect(HOST, port, key, "b", transport="ws")
        try:
            os.kill(pid, greedy_relay.GROW)  # real growth, past the cap: the guard closes the room
            for member in (a, b):
                closing = await member.next_event_of(rc.ClosingEvent, timeout=15)
                assert isinstance(closing, rc.ClosingEvent) and closing.reason == CloseReason.CAP_EXCEEDED
        finally:
            await a.close()
            await b.close()


async def test_resolving_the_control_host_leaves_the_address_space_backstop_its_room(tmp_path: Path) -> None:
    """Found in review: each resolver thread (libuv's, for a control URL that names a host) took
    a malloc arena of its own, 64 MiB of address space: three of them left 31 MiB under RLIMIT_AS,
    and the relay would have met MemoryError far below its 64 MiB cap. Here the control plane is
    down, so the agent resolves `localhost` again for every retry of its registration."""
    control = f"http://localhost:{free_port()}/internal"
    log = tmp_path / "relay.log"
    flags = ("--control-url", control, "--namespace", "n", "--room", "r", "--heartbeat-interval", "0.05")
    async with soft_relay(log, generate_room_key(), *flags) as (pid, _, _):
        await wait_for(lambda: "(8 failures in a row" in log.read_text(), timeout=30)
        address_space = proc_number(Path(f"/proc/{pid}/limits"), r"^Max address space\s+(\d+)")
        size = proc_number(Path(f"/proc/{pid}/status"), r"^VmSize:\s+(\d+) kB") * 1024
        # Half of the backstop's room (four caps) is left for the room to grow into.
        assert address_space - size >= 2 * NANO.memory_bytes, ((address_space - size) / MIB, size / MIB)
