"""Run by tests/server/test_udp_backlog.py inside a network namespace of its own (`unshare -n`):
its loopback shaped to 2 Mbit/s, a relay whose UDP socket has a small send buffer, and four UDP
members sending more than that for 3 s. Prints, as one JSON line, the most the relay's UDP
transport held queued (none where the port is read in C: it has no transport) and the relay's
drop counters."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess

import uvloop

import relay.client as rc
from relay.embedded import room


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


async def main() -> None:
    sh("ip", "link", "set", "lo", "up")
    sh("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "2mbit", "burst", "32kb", "limit", "64mb")
    async with room(host="127.0.0.1", messages_per_second=0, bytes_per_second=0, keepalive_timeout=30.0) as r:
        members = [
            await rc.connect(r.host, r.port, r.key, f"m{i}", transport="udp", timeout=10) for i in range(4)
        ]
        lane, transport = r.relay._udp_lane, r.relay._udp_transport
        if lane is not None:  # the port read in C (relay/server/_lane.c): no transport, no queue
            sock, queued = lane._sock, lambda: 0
        else:
            assert transport is not None
            sock, queued = transport.get_extra_info("socket"), transport.get_write_buffer_size
        # a small kernel send queue: the socket refuses more soon, and the transport queues
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        loop = asyncio.get_running_loop()
        most = 0
        end = loop.time() + 3.0
        while loop.time() < end:  # 4 x 200 messages of 500 bytes a second in, 3 times that out
            for member in members:
                for _ in range(4):
                    member.send(bytes(500))
            await asyncio.sleep(0.02)
            most = max(most, queued())
        print(json.dumps({"most": most, "drops": dict(r.relay.counters.drops)}), flush=True)
        sh("tc", "qdisc", "del", "dev", "lo", "root")  # let every queue drain before the close
        await asyncio.sleep(0.5)
        for member in members:
            await member.close()


if __name__ == "__main__":
    uvloop.run(main())
