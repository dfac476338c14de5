"""Coalescing: what one pass queues for a recipient leaves as one packet, and a UDP pass that
has held output for `max_coalesce_delay_udp` flushes before reading on. And the WebSocket frames
a flush writes, checked against websockets' own serializer.

The datagrams are handed to Room.udp_datagram one after another without yielding to the loop,
which is exactly what uvloop does with a burst it reads in one pass; the relay's output goes out
through its real socket to real peers.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import WS_MAX_PACKET
from relay.server.links import WsConnection
from relay.server.room import _pack

from .rawpeer import UdpPeer


async def _pass_of(delay: float, gap_after_first: float = 0.0, held: bool = False) -> list[list[bytes]]:
    """Three SENDs from a, read in one pass; the payloads of each datagram b receives. `held`:
    the relay paces its reads (relay/server/pacing.py)."""
    async with room(max_coalesce_delay_udp=delay) as r:
        relay_room = r.relay.room
        assert relay_room is not None
        relay_room.held = held
        a = await UdpPeer.open(r.key, r.port)
        b = await UdpPeer.open(r.key, r.port)
        await a.start("a")
        await b.start("b")
        await a.expect(m.MemberJoined)
        await b.quiet(0.1)
        burst = [a.seal(m.Send(b"msg%d" % i).encode()) for i in range(3)]
        for i, packet in enumerate(burst):
            relay_room.udp_datagram(packet, a.address, time.monotonic())
            if i == 0 and gap_after_first:
                time.sleep(gap_after_first)  # a slow pass: the loop does not run meanwhile
        got = [[msg.data for msg in b.decode(p) if isinstance(msg, m.Message)] for p in await b.silence(0.2)]
        a.close()
        b.close()
        return got


async def test_one_pass_leaves_as_one_datagram_per_recipient() -> None:
    assert await _pass_of(delay=10.0) == [[b"msg0", b"msg1", b"msg2"]]


async def test_a_zero_delay_flushes_after_every_datagram() -> None:
    assert await _pass_of(delay=0.0) == [[b"msg0"], [b"msg1"], [b"msg2"]]


async def test_a_pass_that_held_output_too_long_flushes_before_reading_on() -> None:
    # 50 ms bound; the first datagram's output is 60 ms old when the second arrives: it leaves
    # before the second is handled, and the second and third leave together at the end of the pass
    assert await _pass_of(delay=0.05, gap_after_first=0.06) == [[b"msg0"], [b"msg1", b"msg2"]]


async def test_a_paced_relays_pass_is_flushed_whole() -> None:
    # its datagrams waited while it rested: the first would leave early only to cost a send each
    assert await _pass_of(delay=0.05, gap_after_first=0.06, held=True) == [[b"msg0", b"msg1", b"msg2"]]


class _Collect:
    """Just enough of a transport to catch what a WsConnection writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 125, 126, 65535, WS_MAX_PACKET])
def test_websocket_packet_frames_are_byte_for_byte_what_websockets_writes(size: int) -> None:
    conn = WsConnection(room=None, connections=set())  # type: ignore[arg-type]
    conn.transport = _Collect()  # type: ignore[assignment]
    conn.proto.state = State.OPEN
    packet = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert conn.send_packet(packet)
    assert conn.transport.written == [Frame(Opcode.BINARY, packet).serialize(mask=False, extensions=[])]  # type: ignore[attr-defined]
    conn.proto.state = State.CLOSING
    assert not conn.send_packet(packet)  # nothing after our close frame


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.binary(min_size=1, max_size=300), max_size=40), limit=st.integers(50, 1200))
def test_packing_keeps_order_fills_greedily_and_respects_the_limit(items: list[bytes], limit: int) -> None:
    chunks = _pack(items, limit) if items else []
    assert b"".join(chunks) == b"".join(items)
    rest = list(items)
    for i, chunk in enumerate(chunks):
        taken: list[bytes] = []
        while rest and b"".join(taken) != chunk:
            taken.append(rest.pop(0))
        assert b"".join(taken) == chunk  # chunks end on message boundaries
        assert len(chunk) <= limit or len(taken) == 1  # only a lone oversize message exceeds it
        if i + 1 < len(chunks):
            assert len(chunk) + len(rest[0]) > limit  # greedy: the next message did not fit
