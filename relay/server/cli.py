"""`relay serve`: one relay for one room, from the command line.

    relay serve --host 127.0.0.1 --port 7800 --room-key KEY --admin-port 7801

Secrets may come from the environment instead of argv (argv is visible in `ps`):
RELAY_ROOM_KEY, RELAY_AGENT_SECRET. With --control-url the agent registers the relay's address
into its room record and heartbeats (relay/agent). SIGTERM or SIGINT: CLOSING (shutdown) to
every member, flush, exit 0. SIGUSR1: the room was deleted (CLOSING deleted), exit 0.

`relay serve --standby` (alone) starts a relay before its room exists and reads the rest of its
command line from stdin later: the local provisioner's warm pool (relay/agent/standby.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import os
import signal
import sys
from dataclasses import fields

from relay.agent.caps import apply_soft_limits, guard_relay
from relay.agent.tiers import get_tier
from relay.protocol.constants import CloseReason
from relay.protocol.keys import decode_room_key
from relay.server.app import Relay
from relay.server.config import RelayConfig

log = logging.getLogger("relay.server")

_TUNABLES = (
    "max_players",
    "max_payload_udp",
    "max_payload_ws",
    "max_profile",
    "messages_per_second",
    "message_burst",
    "bytes_per_second",
    "byte_burst",
    "ws_send_buffer",
    "keepalive_timeout",
    "resume_grace",
    "idle_timeout",
    "lifetime",
    "coalesce_tick",
    "max_coalesce_delay_udp",
)


SECRET_FLAGS = ("--room-key", "--agent-secret", "--token-public-key")
"""Their values are base64url, which begins with "-" one time in 64: argparse would take such a
value for an option (a standby's rehearsal died of it, and `relay serve --room-key KEY` with
a key from getRoom would too), so the value after one of these is always taken as its value."""


def _bind_secret_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SECRET_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once, in the zygote template's rehearsal (relay/agent/zygote.py): a relay forked from
    it then only parses, instead of building some thirty actions in pages it shares with the
    template (each write there a copy-on-write fault on the way to registering). Defaults that
    come from the environment are read at parse time, not here, so they are the relay's own."""
    defaults = RelayConfig()
    p = argparse.ArgumentParser(prog="relay serve", description="Run one relay (one room).")
    p.add_argument(
        "--host", default=defaults.host, help="address for UDP and WebSocket (default %(default)s)"
    )
    p.add_argument("--port", type=int, default=0, help="UDP and TCP port; 0 picks a free one")
    p.add_argument("--room-key", help="or env RELAY_ROOM_KEY")
    p.add_argument("--admin-host", default=defaults.admin_host)
    p.add_argument("--admin-port", type=int, default=None, help="/metrics and /healthz; 0 picks a free one")
    p.add_argument("--token-public-key", help="or env RELAY_TOKEN_PUBLIC_KEY")
    p.add_argument("--control-url", help="or env RELAY_CONTROL_URL")
    p.add_argument("--namespace")
    p.add_argument("--room")
    p.add_argument("--agent-secret", default=None, help="or env RELAY_AGENT_SECRET")
    p.add_argument("--advertise-host", default=None)
    p.add_argument("--tier", help="caps to keep to (or env RELAY_TIER)")
    p.add_argument(
        "--caps",
        choices=("cgroup", "soft"),
        help="cgroup: the spawner capped this process; soft (default): kept in-process (or env RELAY_CAPS)",
    )
    p.add_argument("--log-level", default="info")
    types = {f.name: f.type for f in fields(RelayConfig)}
    for name in _TUNABLES:
        kind = float if types[name] in (float, "float") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name))
    return p


def parse_args(argv: list[str]) -> RelayConfig:
    p = _parser()
    args = p.parse_args(_bind_secret_values(argv))
    env = os.environ
    args.room_key = args.room_key or env.get("RELAY_ROOM_KEY", "")
    args.token_public_key = args.token_public_key or env.get("RELAY_TOKEN_PUBLIC_KEY")
    args.control_url = args.control_url or env.get("RELAY_CONTROL_URL")
    args.tier = args.tier or env.get("RELAY_TIER")
    args.caps = args.caps or env.get("RELAY_CAPS") or "soft"
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Under Agones (AGONES_SDK_HTTP_PORT set) the room key may come later, from the allocation.
    if args.room_key or not os.environ.get("AGONES_SDK_HTTP_PORT"):
        try:
            decode_room_key(args.room_key)
        except ValueError as exc:
            p.error(f"--room-key: {exc}")
    if args.tier:
        try:
            get_tier(args.tier)
        except ValueError as exc:
            p.error(f"--tier: {exc}")
    return RelayConfig(
        room_key=args.room_key,
        host=args.host,
        port=args.port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        token_public_key=args.token_public_key,
        control_url=args.control_url,
        namespace=args.namespace,
        room=args.room,
        agent_secret=args.agent_secret or os.environ.get("RELAY_AGENT_SECRET"),
        advertise_host=args.advertise_host,
        tier=args.tier,
        caps=args.caps,
        **{name: getattr(args, name) for name in _TUNABLES},
    )


async def serve(config: RelayConfig) -> int:
    if config.tier and config.caps == "soft":
        apply_soft_limits(get_tier(config.tier))
    relay = Relay(config)
    await relay.start()
    guard = guard_relay(relay, config.tier, config.caps)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            sig, lambda: loop.create_task(relay.close(CloseReason.SHUTDOWN, "relay stopping"))
        )
    # The local provisioner's deleteRoom: drain now rather than at the agent's next heartbeat.
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(relay.close(CloseReason.DELETED)))
    agent = None
    if config.control_url:
        from relay.agent.agent import Agent

        agent = Agent(relay, config)
        await agent.start()
    admin = f" admin {config.admin_host}:{relay.admin_port}" if relay.admin_port else ""
    print(f"relay listening udp+ws {relay.host}:{relay.port}{admin}", flush=True)
    gc.freeze()  # start-up objects never need collecting; keeps GC passes short
    reason = await relay.wait_closed()
    if guard is not None:
        guard.stop()
    if agent is not None:
        await agent.stop(reason)
    log.info("relay exiting: %s", reason.name.lower())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--standby"]:
        from relay.agent.standby import run_standby

        return run_standby()
    config = parse_args(args)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep serving without it
        runner = asyncio.run
    if not config.room_key:  # only under Agones: wait to be allocated a room (docs/agones.md)
        from relay.agent.agones import serve_agones

        return runner(serve_agones(config))
    return runner(serve(config))
