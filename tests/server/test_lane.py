"""The room's UDP port and its members' WebSocket connections read in C (relay/server/_lane.c):
members' plain SENDs relayed there, all else handed to the room, and the same messages, drops
and counts either way.

Each scenario runs twice on real loopback sockets, with the lane and with the room's own UDP
transport and WebSocket reads (the relay as it runs without the C part), and what every raw peer
received, message by message, must be the same; the WebSocket scenarios with WebSocket members.
The lane is in use wherever it was built; `.ci/run` requires it
(RELAY_REQUIRE_NATIVE), elsewhere these tests skip saying why."""

from __future__ import annotations

import asyncio
import math
import os
import random
import struct
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from relay.embedded import EmbeddedRoom, room
from relay.protocol import messages as m
from relay.protocol import tokens
from relay.protocol.constants import UDP_MAX_PLAINTEXT, WS_MAX_PLAINTEXT, ErrorCode
from relay.protocol.gs2 import wire
from relay.server import app, links, pacing
from relay.server.handshake import Handshakes
from relay.server.metrics import Counters

from ..gs2 import wireclient as g
from .helpers import drops, eventually
from .rawpeer import UdpPeer, WsPeer

NOT_BUILT = "relay/server/_lane.c is not in use here (it needs a C compiler; RELAY_PURE_PYTHON is off)"


def test_the_lane_is_in_use_where_it_is_required() -> None:
    """CI builds the C part: there a lane not in use is a failure, not a skip."""
    if os.environ.get("RELAY_REQUIRE_NATIVE") and not os.environ.get("RELAY_PURE_PYTHON"):
        assert links.LANE is not None, NOT_BUILT
    if links.LANE is None:
        pytest.skip(NOT_BUILT)


needs_lane = pytest.mark.skipif(links.LANE is None, reason=NOT_BUILT)
pytestmark = needs_lane


def send(data: bytes, targets: list[int] | None = None) -> bytes:
    return m.Send(data, None if targets is None else tuple(targets)).encode()


def shown(msg: m.RelayMessage) -> Any:
    """A message as compared between the two runs (a WELCOME's resume token is random)."""
    return None if isinstance(msg, m.Welcome) else msg


Script = Callable[[EmbeddedRoom, list[Any]], Awaitable[None]]


async def play(
    monkeypatch: pytest.MonkeyPatch,
    lane: bool,
    script: Script,
    players: int = 3,
    peer: type[UdpPeer] | type[WsPeer] = UdpPeer,
    **config: Any,
) -> tuple[list[list[Any]], dict[str, int], list[int], list[int], tuple[int, ...], int]:
    """Runs `script` in a room of `players` raw UDP members, with the lane or without; returns what
    each peer received after the joins (per step, see `collect`), the drops, messages in and out,
    UDP datagrams and bytes in and decryption failures, and the datagrams the lane relayed
    itself."""
    monkeypatch.setattr(app, "LANE", links.LANE if lane else None)
    async with room(host="127.0.0.1", **config) as r:
        assert (r.relay._udp_lane is not None) == lane
        peers: list[Any] = [await peer.open(r.key, r.port) for _ in range(players)]
        try:
            for i, member in enumerate(peers):
                await member.start(f"u{i}")
            for member in peers:
                await member.quiet(0.1)  # the joins of those after it
            for member in peers:
                member.log = []
            await script(r, peers)
            await collect(peers)
            counters = r.relay.counters
            fast = r.relay._udp_lane.lane.fast if lane else 0
            return (
                [member.log for member in peers],
                drops(r),
                list(counters.messages_in),
                list(counters.messages_out),
                (counters.packets_in[0], counters.bytes_in[0], counters.decrypt_failures),
                fast,
            )
        finally:
            for member in peers:
                await shut(member)


async def joined(r: EmbeddedRoom, kind: type[UdpPeer] | type[WsPeer], n: int) -> list[Any]:
    """`n` raw members of `kind`, joined, and each past the joins of those after it."""
    peers: list[Any] = [await kind.open(r.key, r.port) for _ in range(n)]
    for i, peer in enumerate(peers):
        await peer.start(f"m{i}")
    for peer in peers:
        await peer.quiet(0.1)
    return peers


async def shut(peer: UdpPeer | WsPeer) -> None:
    if isinstance(peer, WsPeer):
        await peer.aclose()
    else:
        peer.close()


async def collect(peers: list[Any], wait: float = 0.25) -> None:
    """What each peer received since the last step, as one entry of its log: steps are apart in
    time (each ends once every peer heard nothing for `wait`), so the two runs compare step by
    step whatever the order within a step."""
    received = await asyncio.gather(*(peer.quiet(wait) for peer in peers))
    for peer, got in zip(peers, received, strict=True):
        peer.log.append(sorted(map(repr, map(shown, got))))


async def replay_and_forge(peers: list[Any], replayer: Any, forger: Any) -> None:
    """Three steps: a packet sent, the same packet again (a replay), and a forgery (its tag
    changed)."""
    packet = replayer.send(send(b"once"))
    await collect(peers)
    replayer.send_raw(packet)
    await collect(peers)
    forged = bytearray(forger.seal(send(b"forged")))
    forged[-1] ^= 1
    forger.send_raw(bytes(forged))
    await collect(peers)


SANITIZED = bool(os.environ.get("RELAY_SANITIZED"))
"""Under the sanitizers (test_sanitized.py) a scenario runs with the lane only: the C part is
what they check, and the comparison with the room's own run is the ordinary run's."""


async def same_either_way(monkeypatch: pytest.MonkeyPatch, script: Script, **config: Any) -> tuple[Any, Any]:
    with_lane = await play(monkeypatch, True, script, **config)
    if SANITIZED:
        return with_lane, with_lane
    without = await play(monkeypatch, False, script, **config)
    assert with_lane[:5] == without[:5]
    return with_lane, without


async def test_sends_of_every_shape_reach_the_same_members_with_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        a, b, c = peers
        ids = [p.connection_id for p in peers]
        counters = r.relay.counters
        flushes, spent = sum(counters.fanout_buckets), counters.fanout_sum
        a.send(send(b"to everyone"))
        await collect(peers)
        assert sum(counters.fanout_buckets) == flushes + 1 and counters.fanout_sum > spent
        # targets repeated, the sender itself, and one not in the room
        b.send(send(b"to c twice and a", [ids[2], ids[2], ids[0], ids[1], 999]))
        await collect(peers)
        c.send(send(b"first"), send(b"second, to a", [ids[0]]), send(bytes(range(256)) * 3, []))
        await collect(peers)
        for i in range(20):  # a burst: several packets a pass
            a.send(send(i.to_bytes(2, "big") * 50))
        await collect(peers)

    (logs, _, messages_in, _, _, fast), _ = await same_either_way(monkeypatch, script)
    assert fast >= 23  # the lane relayed them itself
    assert messages_in[0] >= 3 + 23
    a_log, b_log, c_log = logs
    assert repr(m.Message(1, b"to everyone")) in b_log[0] and c_log[0] and not a_log[0]
    assert c_log[1] == [repr(m.Message(2, b"to c twice and a"))]  # once, though named twice
    assert a_log[1] == [repr(m.Message(2, b"to c twice and a"))] and b_log[1] == []
    assert len(a_log[2]) == 3 and len(b_log[2]) == 2
    assert len(b_log[3]) == 20


async def test_what_only_the_room_handles_is_handed_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        a, b, c = peers
        # a PING with an element more than it needs: the room reads it (the C read takes only the
        # plain shape)
        a.send(msgpack.packb([4, 7, 1234, 0]), send(b"with a ping"))
        await collect(peers)
        b.send(send(bytes(1140)))  # over max_payload_udp (1100): ERROR, dropped
        await collect(peers)
        c.send(msgpack.packb([2, "text, not bin", None]))  # malformed: the whole packet dropped
        await collect(peers)
        a.send(msgpack.packb([2, b"extra element", None, "ignored"]))  # extra elements ignored
        await collect(peers)
        b.send(m.SetProfile(b"new profile").encode())
        await collect(peers)
        await replay_and_forge(peers, c, c)  # the replay from the same address
        a.send(send(b"still relayed after all that"))
        await collect(peers)

    (logs, dropped, *_), _ = await same_either_way(monkeypatch, script)
    a_log, b_log, c_log = logs
    assert repr(m.Pong(7, 1234)) in a_log[0] and repr(m.Message(1, b"with a ping")) in b_log[0]
    assert b_log[1] == [repr(m.Error(int(ErrorCode.PAYLOAD_TOO_LARGE), "payload too large"))]
    assert c_log[2] == a_log[2] == b_log[2] == []
    assert repr(m.Message(1, b"extra element")) in b_log[3]
    assert repr(m.MemberProfile(2, b"new profile")) in a_log[4]
    assert a_log[5] == [repr(m.Message(3, b"once"))] and a_log[6] == a_log[7] == []
    assert dropped.get("replay") == 1 and dropped.get("decrypt") == 1 and dropped.get("malformed") == 1
    assert repr(m.Message(1, b"still relayed after all that")) in c_log[8]


async def test_rate_limits_spend_and_drop_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst past a member's message burst: the same messages through, the same dropped, the
    same ERROR, whether the packets were relayed in C or by the room; PINGs count as messages
    of no bytes."""

    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        a, b, c = peers
        for i in range(8):
            a.send(send(b"%d" % i), send(b"%d bis" % i))
        await collect(peers)
        for _ in range(3):  # over its byte budget
            b.send(send(bytes(700)))
        await collect(peers)
        for i in range(12):  # over its message burst, under its (spent) byte budget
            c.send(m.Ping(i, 0).encode())
        await collect(peers)

    (logs, dropped, *_), _ = await same_either_way(
        monkeypatch, script, messages_per_second=1, message_burst=10, bytes_per_second=1, byte_burst=1500
    )
    a_log, b_log, c_log = logs
    firsts = sorted(repr(m.Message(1, b"%d%s" % (i, bis))) for i in range(5) for bis in (b"", b" bis"))
    assert b_log[0] == c_log[0] == firsts  # its burst of 10, no more
    limited = [repr(m.Error(int(ErrorCode.RATE_LIMITED), "rate limit exceeded"))]
    assert a_log[0] == b_log[1] == limited
    assert c_log[1] == a_log[1] == [repr(m.Message(2, bytes(700)))] * 2  # 1,500 bytes: two of three
    assert sorted(c_log[2]) == sorted([*(repr(m.Pong(i, 0)) for i in range(10)), *limited])
    assert dropped == {"rate_limited": 4, "rate_limited_unread": 3}


@pytest.mark.parametrize("peer", [UdpPeer, WsPeer])
async def test_pings_are_answered_in_c_as_the_room_answers_them(
    monkeypatch: pytest.MonkeyPatch, peer: type[UdpPeer] | type[WsPeer]
) -> None:
    """A client's keepalive PING is answered in C, alone or among SENDs, with the PONG the room
    sends (its integers packed as msgpack-python packs them, however the client packed them);
    one the C read does not take (not a positive integer) is the room's to drop."""
    overheads: list[int] = []  # bytes out beyond a lone PONG's own, per run

    async def script(r: EmbeddedRoom, peers: list[Any]) -> None:
        a, b, c = peers
        ids = [p.connection_id for p in peers]
        bytes_out = r.relay.counters.bytes_out
        before = sum(bytes_out)
        a.send(m.Ping(7, 1234).encode())
        await collect(peers)
        overheads.append(sum(bytes_out) - before - len(m.Pong(7, 1234).encode()))
        b.send(send(b"first"), m.Ping(2**64 - 1, 2**40).encode(), send(b"to a", [ids[0]]))
        c.send(send(b"to b, then a ping", [ids[1]]), m.Ping(0, 255).encode())
        await collect(peers)
        before = sum(bytes_out)
        a.send(b"\x93\x04\xcf" + (5).to_bytes(8, "big") + b"\xcd\x00\x07")  # wider than it needs
        await collect(peers)
        overheads.append(sum(bytes_out) - before - len(m.Pong(5, 7).encode()))
        fast = r.relay._udp_lane.lane.fast if r.relay._udp_lane else 0
        b.send(msgpack.packb([4, -1, 0]))  # malformed: dropped by the room
        await collect(peers)
        assert (r.relay._udp_lane.lane.fast if r.relay._udp_lane else 0) == fast

    ran, _ = await same_either_way(monkeypatch, script, peer=peer)
    logs, dropped, messages_in, messages_out, _, fast = ran
    assert fast == 4  # the lane answered them itself
    a_log, b_log, c_log = logs
    assert a_log[0] == [repr(m.Pong(7, 1234))] and b_log[0] == c_log[0] == []
    assert a_log[1] == sorted([repr(m.Message(2, b"first")), repr(m.Message(2, b"to a"))])
    assert b_log[1] == sorted([repr(m.Pong(2**64 - 1, 2**40)), repr(m.Message(3, b"to b, then a ping"))])
    assert c_log[1] == [repr(m.Message(2, b"first")), repr(m.Pong(0, 255))]
    assert a_log[2] == [repr(m.Pong(5, 7))]
    assert len(set(overheads)) == 1  # its PONG as the room packs it: no byte longer
    assert dropped == {"malformed": 1}
    kind = 0 if peer is UdpPeer else 1
    assert messages_in[kind] >= 9 and messages_out[kind] >= 8


async def test_a_member_that_moved_is_relayed_again_once_its_new_address_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        a, _b, _c = peers
        a.send(send(b"before"))
        await collect(peers)
        await a.rebind()  # a NAT rebinding: the room challenges the new address
        a.send(send(b"from the new address"))
        challenge = await a.expect(m.PathPing, 2)
        a.send(m.PathPong(challenge.challenge).encode())
        await collect(peers)
        before = r.relay._udp_lane.lane.fast if r.relay._udp_lane else 0
        a.send(send(b"validated"))
        await collect(peers)
        if r.relay._udp_lane is not None:
            assert r.relay._udp_lane.lane.fast == before + 1  # relayed in C again

    (logs, *_), _ = await same_either_way(monkeypatch, script)
    assert repr(m.Message(1, b"validated")) in logs[1][2]


async def test_a_member_that_left_is_not_relayed_from_its_old_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        a, b, _c = peers
        a.send(send(b"here"))
        await collect(peers)
        a.send(m.Bye().encode())
        await collect(peers)
        a.send(send(b"after bye"))  # its keys and its address, its session gone
        await collect(peers)
        kicked = r.relay.room.members[2]
        r.relay.room.kick(kicked, "test")
        await collect(peers)
        b.send(send(b"after the kick"))
        await collect(peers)

    (logs, dropped, *_), _ = await same_either_way(monkeypatch, script)
    assert logs[1][2] == logs[2][2] == [] and logs[2][4] == []
    assert dropped.get("unknown_session", 0) >= 2


@pytest.mark.parametrize("peer", [UdpPeer, WsPeer])
async def test_members_whose_session_ids_share_a_slot_are_each_relayed_in_c(
    monkeypatch: pytest.MonkeyPatch, peer: type[UdpPeer] | type[WsPeer]
) -> None:
    """The lane keeps the ints it looks session ids up by in a few slots, by id (`sid_key`):
    members whose ids share one slot take it from each other at each packet, and each packet is
    still relayed in C, to the members the room sends it to."""
    sids = iter(range(1000, 1000 + 32 * 50, 32))  # one slot: (sid ^ sid >> 16) % 32 == 8 for each
    monkeypatch.setattr(Handshakes, "new_sid", lambda self, taken: next(s for s in sids if s not in taken))

    async def script(r: EmbeddedRoom, peers: list[Any]) -> None:
        assert all(s.sid % 32 == 8 for s in r.relay.room.sessions.values())
        for turn in range(2):
            for i, sender in enumerate(peers):
                sender.send(send(f"turn {turn} from {i}".encode()))
                await collect(peers)

    (logs, *_, fast), _ = await same_either_way(monkeypatch, script, peer=peer)
    assert fast == 6
    for step, i in enumerate([0, 1, 2, 0, 1, 2]):
        for j, log in enumerate(logs):
            said = repr(m.Message(i + 1, f"turn {step // 3} from {i}".encode()))
            assert log[step] == ([] if j == i else [said])


async def test_a_shedding_room_drops_udp_output_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(r: EmbeddedRoom, peers: list[UdpPeer]) -> None:
        r.relay.room.shed_optional = True
        peers[0].send(send(b"shed"))
        await collect(peers)
        r.relay.room.shed_optional = False
        peers[0].send(send(b"not shed"))
        await collect(peers)

    (logs, dropped, *_), _ = await same_either_way(monkeypatch, script)
    assert logs[1][0] == [] and logs[1][1] == [repr(m.Message(1, b"not shed"))]
    assert dropped.get("shed") == 2


async def test_a_websocket_member_gets_udp_members_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WebSocket member among UDP ones gets their sends (its connection read in C too); once it
    left, the UDP members' packets are still relayed in C."""
    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        udp = [await UdpPeer.open(r.key, r.port) for _ in range(2)]
        ws = await WsPeer.open(r.key, r.port)
        try:
            for i, peer in enumerate([*udp, ws]):
                await peer.start(f"p{i}")
            for peer in [*udp, ws]:
                await peer.quiet(0.1)
            udp[0].send(send(b"to the websocket too"))
            assert await ws.expect(m.Message, 2) == m.Message(1, b"to the websocket too")
            assert await udp[1].expect(m.Message, 2) == m.Message(1, b"to the websocket too")
            ws.send(m.Bye().encode())
            await eventually(lambda: len(r.relay.room.members) == 2, what="the websocket member gone")
            fast = lane.lane.fast
            udp[0].send(send(b"now only udp"))
            assert await udp[1].expect(m.Message, 2) == m.Message(1, b"now only udp")
            await eventually(lambda: lane.lane.fast == fast + 1, what="relayed in C")
        finally:
            await ws.aclose()
            for peer in udp:
                peer.close()


async def test_websocket_members_are_relayed_in_c_as_the_room_relays_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WebSocket members' frames read in C: sends of every shape, a burst, what only the room
    handles (a PING, a profile, malformed plaintext, a payload the C read leaves to the room, a
    replay, a forgery): the same messages and drops as the room's own WebSocket reads."""

    async def script(r: EmbeddedRoom, peers: list[Any]) -> None:
        a, b, c = peers
        ids = [p.connection_id for p in peers]
        a.send(send(b"to everyone"))
        await collect(peers)
        b.send(send(b"to c twice and a", [ids[2], ids[2], ids[0], ids[1], 999]))
        await collect(peers)
        for i in range(20):  # a burst: several frames a read
            c.send(send(i.to_bytes(2, "big") * 50))
        await collect(peers)
        a.send(m.Ping(7, 1234).encode(), send(b"with a ping"))
        await collect(peers)
        b.send(m.SetProfile(b"new profile").encode())
        await collect(peers)
        c.send(msgpack.packb([2, "text, not bin", None]))
        await collect(peers)
        a.send(send(bytes(3000)))  # a packet longer than the C read's buffer: the room's
        await collect(peers)
        await replay_and_forge(peers, b, c)
        a.send(send(b"still relayed after all that"))
        await collect(peers)

    (logs, dropped, messages_in, *_, fast), _ = await same_either_way(monkeypatch, script, peer=WsPeer)
    assert fast >= 22  # frames relayed in C
    assert messages_in[1] >= 26  # counted as WebSocket messages
    a_log, b_log, c_log = logs
    assert repr(m.Message(1, b"to everyone")) in b_log[0] and not a_log[0]
    assert c_log[1] == [repr(m.Message(2, b"to c twice and a"))]
    assert len(a_log[2]) == 20 and repr(m.Pong(7, 1234)) in a_log[3]
    assert repr(m.MemberProfile(2, b"new profile")) in a_log[4] and len(b_log[6]) == 1
    assert dropped.get("replay") == 1 and dropped.get("decrypt") == 1 and dropped.get("malformed") == 1
    assert repr(m.Message(1, b"still relayed after all that")) in c_log[10]


async def test_a_websocket_member_read_in_c_hands_back_what_it_does_not_read() -> None:
    """A frame split over two writes waits for its end in C; a WebSocket ping is answered by the
    connection and the reading stays in C; a message in fragments hands the connection's reading
    back to Python, which relays it, and the member keeps playing."""
    from relay.protocol.wsframes import BINARY, client_frame

    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        a, b = [await WsPeer.open(r.key, r.port) for _ in range(2)]
        try:
            for i, peer in enumerate((a, b)):
                await peer.start(f"w{i}")
            for peer in (a, b):
                await peer.quiet(0.1)
            assert lane.lane.entries == 2  # both read in C since their joins
            assert a.writer is not None
            frame = client_frame(BINARY, a.seal(send(b"in two writes")), b"\x01\x02\x03\x04")
            fast = lane.lane.fast
            a.writer.write(frame[:9])
            await a.writer.drain()
            await asyncio.sleep(0.05)
            a.writer.write(frame[9:])
            assert await b.expect(m.Message, 2) == m.Message(1, b"in two writes")
            assert lane.lane.fast == fast + 1
            a.proto.send_ping(b"are you there")
            a._write()
            while not any(f.opcode is Opcode.PONG for f in a.frames):  # answered, by Python
                await a._read(2.0)
            assert lane.lane.entries == 2  # a's reading still in C
            a.send(send(b"after the ping"))
            assert await b.expect(m.Message, 2) == m.Message(1, b"after the ping")
            assert lane.lane.fast == fast + 2
            packet = a.seal(send(b"in fragments"))
            a.proto.send_binary(packet[:20], fin=False)
            a.proto.send_continuation(packet[20:], fin=True)
            a._write()
            assert await b.expect(m.Message, 2) == m.Message(1, b"in fragments")
            assert lane.lane.entries == 1  # a's reading handed back
            a.send(send(b"still playing"))
            assert await b.expect(m.Message, 2) == m.Message(1, b"still playing")
            b.send(send(b"to a"))
            assert await a.expect(m.Message, 2) == m.Message(2, b"to a")
            assert drops(r).get("internal_error", 0) == 0
        finally:
            await a.aclose()
            await b.aclose()


async def test_the_lane_asks_the_transport_what_it_queued_only_after_the_connection_wrote() -> None:
    """The lane writes a member's frames to its socket itself while the connection's transport
    holds nothing queued. It asks the transport only after the connection wrote through it (its
    pong to a WebSocket ping, the room's own events): each such write marks the member's entry,
    and the lane's next write to it finds the transport empty and clears the mark."""
    async with room(host="127.0.0.1") as r:
        a, b = await joined(r, WsPeer, 2)
        try:
            conn = next(c for c in r.relay._ws if c.session is not None and c.session.sid == b.session_id)
            entry = conn._lane_entry
            assert entry is not None
            a.send(send(b"first"))
            assert await b.expect(m.Message, 2) == m.Message(1, b"first")
            assert entry.queued == 0
            b.proto.send_ping(b"are you there")
            b._write()
            while not any(f.opcode is Opcode.PONG for f in b.frames):  # answered by the connection
                await b._read(2.0)
            assert entry.queued == 1
            a.send(send(b"after the pong"))
            assert await b.expect(m.Message, 2) == m.Message(1, b"after the pong")
            assert entry.queued == 0
            a.send(m.SetProfile(b"new").encode())  # the room's event, written by the connection
            assert await b.expect(m.MemberProfile, 2) == m.MemberProfile(1, b"new")
            assert entry.queued == 1
            a.send(send(b"after the profile"))
            assert await b.expect(m.Message, 2) == m.Message(1, b"after the profile")
            assert entry.queued == 0
        finally:
            await a.aclose()
            await b.aclose()


async def test_a_close_frame_behind_a_bye_read_in_c_ends_the_connection_at_once() -> None:
    """A client that leaves sends BYE and its close frame, often in one segment: the room closes
    the connection while the lane reads that segment, and the close frame behind the BYE is then
    the connection's to read. It answers the close handshake and ends the stream at once, where
    the frame lost with the lane's buffer left it to the 1 s abort."""
    async with room(host="127.0.0.1") as r:
        a = await WsPeer.open(r.key, r.port)
        try:
            await a.start("w0")
            await a.quiet(0.1)
            lane = r.relay._udp_lane
            assert lane is not None and lane.lane.entries == 1  # read in C since its join
            assert a.reader is not None and a.writer is not None
            a.proto.send_binary(a.seal(m.Bye().encode()))
            a.proto.send_close(1000, "leaving")
            a.writer.write(b"".join(a.proto.data_to_send()))  # one write: one segment
            started = time.monotonic()
            while await asyncio.wait_for(a.reader.read(65536), 2.0):
                pass
            assert time.monotonic() - started < 0.5  # the stream's end, not the backstop's abort
            assert drops(r).get("internal_error", 0) == 0
        finally:
            await a.aclose()


async def test_what_websocket_members_send_in_one_pass_leaves_once_at_its_end() -> None:
    """Each member's socket is a read of its own; their output leaves once a pass, at its end:
    a member gets what the others sent in that pass in one packet, not one per socket read (and
    the relay's end-of-pass hooks, its pacer's rest among them, run once a pass, not once a
    socket)."""
    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        peers = await joined(r, WsPeer, 4)
        try:
            assert lane.lane.entries == 4
            fast = lane.lane.fast
            for i, peer in enumerate(peers[:3]):  # all written before the relay's loop runs again
                peer.send(send(b"from w%d" % i))
            packet = await peers[3].recv_packet(2.0)
            assert sorted(msg.data for msg in peers[3].decode(packet)) == [b"from w0", b"from w1", b"from w2"]
            assert lane.lane.fast == fast + 3
        finally:
            for peer in peers:
                await peer.aclose()


async def test_a_lone_websocket_read_sends_at_its_end_and_a_pacing_relay_waits_for_the_pass() -> None:
    """Where no other member's socket has anything to read, no later read of the pass could share
    a read's sends: its output leaves at the read's end, no flush scheduled for the pass's end (a
    call_soon and its callback, 12% of a WebSocket relay's CPU in the deployed shape). Where
    others have, and where the relay paces (it rests at the end of the pass), the pass's flush
    is scheduled as before."""
    async with room(host="127.0.0.1") as r:
        udp_lane = r.relay._udp_lane
        assert udp_lane is not None
        lane, loop = udp_lane.lane, asyncio.get_running_loop()
        peers = await joined(r, WsPeer, 4)
        scheduled: list[float] = []
        rested: list[float] = []

        def schedule() -> None:
            scheduled.append(time.monotonic())
            loop.call_soon(lane.ws_flush)

        def limits(*hooks: tuple[object, str, Callable[[float], object]]) -> None:
            config = r.relay.config
            lane.ws_limits(config.max_payload_ws, WS_MAX_PLAINTEXT, config.ws_send_buffer, hooks, schedule)

        try:
            limits()
            for i, peer in enumerate(peers[:3]):  # all written before the relay's loop runs again
                peer.send(send(b"from w%d" % i))
            packet = await peers[3].recv_packet(2.0)
            assert sorted(msg.data for msg in peers[3].decode(packet)) == [b"from w0", b"from w1", b"from w2"]
            assert len(scheduled) == 1  # one flush for the three reads
            # (each sender next is one whose last write was answered: an unanswered one's client
            # holds a small write for the delayed ACK, Nagle's algorithm)
            peers[0].send(send(b"alone"))
            packet = await peers[3].recv_packet(2.0)
            assert [msg.data for msg in peers[3].decode(packet)] == [b"alone"] and len(scheduled) == 1
            pacer = pacing.Pacer()
            pacer.pace = 0.001
            pacer.settle()  # it paces: a rest after every read
            assert pacer.lane_due == -math.inf
            limits((pacer, "lane_due", rested.append))
            peers[1].send(send(b"paced"))
            packet = await peers[3].recv_packet(2.0)
            assert [msg.data for msg in peers[3].decode(packet)] == [b"paced"]
            assert len(scheduled) == 2 and len(rested) == 1  # at the pass's end, the rest with it
        finally:
            for peer in peers:
                await peer.aclose()


def gs2_shown(got: g.Received) -> str:
    """A Container as compared between the two runs: its type and what it says (its sequence
    number and lifetime are checked on their own)."""
    return f"{got.kind:#x} {got.body!r}"


async def heard(client: g.Gs2Client, wait: float = 0.25) -> list[g.Received]:
    """What a GS2 client received until nothing came for `wait`, or its connection closed."""
    out = []
    try:
        while True:
            out.append(await client.next(wait))
    except (TimeoutError, ConnectionClosed):
        return out


@asynccontextmanager
async def gs2_room(players: int) -> AsyncIterator[tuple[EmbeddedRoom, Any, list[g.Gs2Client]]]:
    """A room, its lane, and `players` GS2 clients joined (their joins heard), closed after."""
    signer = Ed25519PrivateKey.generate()
    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        clients = [
            await g.Gs2Client.join(r.port, r.key, tokens.mint(signer, f"g{i}", 600)) for i in range(players)
        ]
        try:
            await asyncio.gather(*map(heard, clients))
            yield r, lane, clients
        finally:
            for client in clients:
                await client.close()


Logs = list[list[list[str]]]


async def play_gs2(monkeypatch: pytest.MonkeyPatch, lane: bool) -> tuple[Logs, dict[str, int], Any]:
    """Three GS2 clients and a native WebSocket member in one room, with the lane or without: what
    each received, step by step, the drops and the counters (messages in and out, GS2 packets and
    bytes in), and the messages the lane relayed itself."""
    monkeypatch.setattr(app, "LANE", links.LANE if lane else None)
    signer = Ed25519PrivateKey.generate()
    async with room(host="127.0.0.1") as r:
        clients = [await g.Gs2Client.join(r.port, r.key, tokens.mint(signer, f"g{i}", 600)) for i in range(3)]
        native = await WsPeer.open(r.key, r.port)
        await native.start("n")
        logs: Logs = [[] for _ in range(4)]
        key = r.key.encode()

        async def step() -> None:
            got = await asyncio.gather(*map(heard, clients), native.quiet(0.25))
            for i, received in enumerate(got[:3]):
                logs[i].append(sorted(map(gs2_shown, received)))
            logs[3].append(sorted(map(repr, map(shown, got[3]))))

        try:
            await step()  # the joins
            a, b, c = clients
            ids = [client.my.connection_id for client in clients if client.my is not None]
            await a.send(b"to everyone")
            await step()
            await b.send(b"to c twice and a", (ids[2], ids[2], ids[0], ids[1], 999))
            await step()
            for i in range(20):  # a burst: several frames a read
                await c.send(i.to_bytes(2, "big") * 50)
            await step()
            native.send(send(b"from the native member"), send(b"to g0 only", [ids[0]]))
            await step()
            await a.send(b"")  # no data: a Container without RelayBinaryMessage.data
            unpacked = g.bytes_field(1, g.bytes_field(2, b"targets unpacked") + g.uint_field(3, ids[2]))
            await b.send_raw(g.container(g.BINARY_MESSAGE, unpacked, key))
            await step()
            await a.update_profile(b"new profile")  # the room's: the lane hands it over
            extra = g.bytes_field(1, g.bytes_field(2, b"with a field the lane leaves") + g.uint_field(9, 1))
            await b.send_raw(g.container(g.BINARY_MESSAGE, extra, key))
            await step()
            await a.ws.ping(b"are you there")  # answered, the reading stays where it is
            await b.send(bytes(r.relay.room.config.max_payload_ws + 1))  # over the limit: the room's Error
            await step()
            forged = bytearray(g.container(g.BINARY_MESSAGE, g.relay_value(b"forged"), key))
            forged[-1] ^= 1
            await c.send_raw(bytes(forged))  # a bad signature: Error, and closed
            await step()
            await a.send(b"still relayed after all that")
            await step()
            for client in clients:  # each numbers what it got from 1, whoever built it
                assert client.sequences == list(range(1, len(client.sequences) + 1))
            c = r.relay.counters
            fast = r.relay._udp_lane.lane.fast if lane else 0
            counted = [list(c.messages_in), list(c.messages_out), list(c.packets_in), list(c.bytes_in)]
            return logs, drops(r), (*counted, fast)
        finally:
            for client in clients:
                await client.close()
            await native.aclose()


async def test_gs2_clients_are_relayed_in_c_as_the_room_relays_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """GS2 clients' connections read in C: their messages of the plain shape relayed there (to GS2
    clients as Containers built there, to native members as MESSAGEs), everything else (a
    profile, a field the lane does not expect, a message over the limit, a bad signature) handed
    to the connection's own parser; the same Containers, drops and counts as without the lane."""
    with_lane, dropped, (*counted, fast) = await play_gs2(monkeypatch, True)
    if not SANITIZED:
        without, dropped_without, (*counted_without, _) = await play_gs2(monkeypatch, False)
        assert with_lane == without
        assert dropped == dropped_without and counted == counted_without
    assert fast >= 24  # the GS2 clients' messages the lane relayed itself
    a_log, b_log, c_log, n_log = with_lane
    relayed = f"{g.BINARY_MESSAGE:#x} {g.Relayed(1, b'to everyone', ())!r}"
    assert relayed in b_log[1] and relayed in c_log[1] and a_log[1] == []
    assert repr(m.Message(1, b"to everyone")) in n_log[1]
    assert c_log[2] == [f"{g.BINARY_MESSAGE:#x} {g.Relayed(2, b'to c twice and a', ())!r}"]
    assert len(a_log[3]) == 20 and len(n_log[3]) == 20
    assert f"{g.BINARY_MESSAGE:#x} {g.Relayed(4, b'to g0 only', ())!r}" in a_log[4] and len(b_log[4]) == 1
    assert f"{g.BINARY_MESSAGE:#x} {g.Relayed(2, b'targets unpacked', ())!r}" in c_log[5]
    assert len(b_log[6]) == 1 and len(c_log[6]) == 2  # a's new profile; b's message with a field more
    assert dropped.get("payload_too_large") == 1 and dropped.get("gs2_bad_signature") == 1
    assert f"{g.BINARY_MESSAGE:#x} {g.Relayed(1, b'still relayed after all that', ())!r}" in b_log[9]


async def test_a_pass_of_several_gs2_senders_signs_each_message_for_each_recipient() -> None:
    """Two GS2 clients' bursts read in one pass go to the third as one Container a message, each
    signed (the lane signs a message once, when it is queued, for every GS2 recipient: the
    client's parser checks every signature), in each sender's order, and counted as read."""
    async with gs2_room(3) as (r, lane, clients):
        a, b, _ = clients
        counters = r.relay.counters
        before = counters.packets_in[2], counters.messages_in[2], lane.lane.fast
        for i in range(10):  # written before the relay's loop runs: frames of two reads, one pass
            for client, data in ((a, b"a%d" % i), (b, b"b%d" % i * 40)):
                message = g.container(g.BINARY_MESSAGE, g.relay_value(data), client.key)
                client.ws.protocol.send_binary(message)
                client.ws.send_data()
        got_a, got_b, got_c = await asyncio.gather(*map(heard, clients))
        assert a.my is not None and b.my is not None
        from_a = [x.body.data for x in got_c if x.body.sender == a.my.connection_id]
        from_b = [x.body.data for x in got_c if x.body.sender == b.my.connection_id]
        assert from_a == [b"a%d" % i for i in range(10)]
        assert from_b == [b"b%d" % i * 40 for i in range(10)]
        assert [x.body.data for x in got_b] == from_a and [x.body.data for x in got_a] == from_b
        after = counters.packets_in[2], counters.messages_in[2], lane.lane.fast
        assert [n - m for n, m in zip(after, before, strict=True)] == [20, 20, 20]


async def test_a_gs2_clients_sequence_numbers_wrap_and_interleave_with_the_rooms() -> None:
    """The lane numbers the Containers it builds in the client's wire.Recipient itself (its
    `seq_cell`), so the room's own Containers for that client and the lane's take turns in one
    sequence, which wraps from 2^32 - 1 to 1 as wire.Recipient's does."""
    async with gs2_room(2) as (r, lane, clients):
        a, b = clients
        assert b.my is not None
        cid = b.my.connection_id
        conn = next(c for c in r.relay._ws if c.session is not None and c.session.member.cid == cid)
        assert conn._lane_entry is not None  # read and written by the lane
        recipient = conn.peer.recipient
        recipient.seq = 0xFFFFFFFE
        fast = lane.lane.fast
        for data in (b"one", b"two"):
            await a.send(data)
        await heard(b)
        await a.update_profile(b"the room's")  # an UpdateProfileNotification, built by the room
        await heard(b)
        await a.send(b"three")
        got = await heard(b)
        assert [x.body.data for x in got] == [b"three"]
        assert b.sequences[-4:] == [0xFFFFFFFF, 1, 2, 3]
        assert recipient.seq == 3
        assert lane.lane.fast - fast == 3  # the sends were the lane's
        cell = recipient.seq_cell
        recipient.seq_cell = array("Q", (0,))  # not a cell the lane can number in
        with pytest.raises(TypeError, match="seq_cell"):
            lane.lane.ws_offer(conn.session, conn.session.member, 0, conn, conn.transport, recipient)
        recipient.seq_cell = cell


async def test_the_lane_rejects_what_it_cannot_use() -> None:
    assert links.LANE is not None
    with pytest.raises(TypeError):
        links.LANE(0, object(), object(), print, print, 1100, 1168, [(object(), "due")])
    with pytest.raises(ValueError):
        links.LANE(-1, object(), object(), print, print, 1100, 1168)
    with pytest.raises(ValueError, match="ascending"):  # before any hook is held
        links.LANE(0, object(), Counters(), print, print, 1100, 1168, fanout_bounds=[0.2, 0.1])
    listed = Counters()
    listed.packets_in = [0, 0, 0]  # type: ignore[assignment]
    with pytest.raises(TypeError, match="packets_in"):  # the lane adds to arrays of 64-bit integers in place
        links.LANE(0, object(), listed, print, print, 1100, 1168)
    few = Counters()
    with pytest.raises(TypeError, match="fanout_buckets"):  # a bucket for each bound, and one over them
        links.LANE(0, object(), few, print, print, 1100, 1168, fanout_bounds=[0.1] * len(few.fanout_buckets))
    held = Counters()
    lane = links.LANE(0, object(), held, print, print, 1100, 1168)
    with pytest.raises(BufferError):  # held while the lane lives: no count can move
        held.bytes_out.append(0)
    del lane
    held.bytes_out.append(0)
    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        peer = await UdpPeer.open(r.key, r.port)
        try:
            await peer.start("u")
            session = next(iter(r.relay.room.sessions.values()))
            # the Python pieces (RELAY_PURE_PYTHON's): not the lane's to spend
            from relay.server.ratelimit import PyTokenBucket

            member = session.member
            real = member.msg_bucket
            member.msg_bucket = PyTokenBucket(1, 1, 0)
            assert lane.lane.offer(session, member, session.path, b"\x02\x00") is False
            member.msg_bucket = real
            assert lane.lane.offer(session, member, session.path, b"") is False  # no address
            assert lane.lane.offer(session, member, session.path, b"\x02\x00" + bytes(14)) is True
        finally:
            peer.close()


def test_an_event_loop_without_the_lane_still_runs_everything() -> None:
    """RELAY_PURE_PYTHON: no lane (the room's transport), nothing else changes."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from relay.server import links, app; print(links.LANE, app.NATIVE_PARTS)"],
        env={**os.environ, "RELAY_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None []"


async def test_the_relay_serves_after_the_lane_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    async with room(host="127.0.0.1") as r:
        lane = r.relay._udp_lane
        assert lane is not None
        await asyncio.sleep(0)
    assert r.relay._udp_lane is None
    lane.lane.read()  # closed: reads nothing, raises nothing
    assert lane.lane.entries == 0


def a_lane(room_punt: Callable[..., None], hooks: tuple[Any, ...] = ()) -> tuple[Any, Any, Any, Any]:
    """A lane over a socket of the test's own and a room of its own, read by the test: (lane,
    its socket, a socket to send to it from, the counters). The room's hand-over is `room_punt`."""
    import socket

    from relay.protocol.keys import generate_room_key
    from relay.server.config import RelayConfig
    from relay.server.room import Room

    config = RelayConfig(room_key=generate_room_key())
    counters = Counters()
    relay_room = Room(config, counters, time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.connect(sock.getsockname())
    assert links.LANE is not None
    lane = links.LANE(sock.fileno(), relay_room, counters, room_punt, room_punt, 1100, 1168, hooks)
    return lane, sock, peer, counters


def test_end_of_pass_hooks_run_once_their_due_time_has_come() -> None:
    """The lane reads each hook's due time at the end of every pass, by slot offset where its
    type keeps it in one (kept per type and name, up to a few), by name elsewhere: whichever
    way, a hook runs at the first pass at or after its due time, with that pass's time, and
    a due time changed between passes is the one read."""

    class Slotted:
        __slots__ = ("due",)

        def __init__(self) -> None:
            self.due = math.inf

    class Plain:
        def __init__(self) -> None:
            self.due = math.inf

    class Computed:
        def __init__(self) -> None:
            self.at = math.inf

        @property
        def due(self) -> float:
            return self.at

    owners: list[Any] = [Slotted(), Plain(), Computed()]
    owners += [type(f"Slotted{i}", (Slotted,), {"__slots__": ()})() for i in range(10)]  # past the kept
    ran: list[tuple[int, float]] = []
    hooks = tuple((o, "due", partial(lambda i, t: ran.append((i, t)), i)) for i, o in enumerate(owners))
    lane, sock, peer, _ = a_lane(lambda *_: None, hooks)
    try:

        def a_pass() -> float:
            peer.send(b"not a packet")
            time.sleep(0.01)
            before = time.monotonic()
            lane.read()
            return before

        a_pass()
        assert ran == []  # none due
        for o in owners[::2]:
            if isinstance(o, Computed):
                o.at = 0.0
            else:
                o.due = 0.0
        before = a_pass()
        assert [i for i, _ in ran] == list(range(0, len(owners), 2))
        assert all(before <= t <= time.monotonic() for _, t in ran)
        ran.clear()
        for o in owners:
            if isinstance(o, Computed):
                o.at = math.inf
            else:
                o.due = math.inf if o is not owners[-1] else 0.0
        a_pass()
        assert [i for i, _ in ran] == [len(owners) - 1]
    finally:
        lane.close()
        sock.close()
        peer.close()


def test_a_close_from_the_rooms_hand_over_ends_the_read_there() -> None:
    handed: list[bytes] = []

    def punt(data: bytes, addr: Any, now: float) -> None:
        handed.append(data)
        lane.close()

    lane, sock, peer, _ = a_lane(punt)
    try:
        for i in range(3):
            peer.send(b"not a packet %d" % i)
        time.sleep(0.05)
        lane.read()  # the first hand-over closes it: the rest of the read is not handed on
        assert handed == [b"not a packet 0"] and lane.entries == 0
        lane.read()  # closed: reads nothing
        assert len(handed) == 1
    finally:
        sock.close()
        peer.close()


def test_a_hand_overs_error_is_counted_and_an_interrupt_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def punt(data: bytes, addr: Any, now: float) -> None:
        if data == b"stop":
            raise KeyboardInterrupt
        raise ValueError(data)

    lane, sock, peer, counters = a_lane(punt)
    try:
        peer.send(b"bad")
        peer.send(b"bad too")
        time.sleep(0.05)
        lane.read()  # each written to sys.unraisablehook, counted; the read goes on
        assert counters.drops["internal_error"] == 2
        assert [type(u.exc_value) for u in unraisable] == [ValueError, ValueError]
        peer.send(b"stop")
        peer.send(b"after")
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            lane.read()
    finally:
        sock.close()
        peer.close()


def _fuzzed_gs2(rng: random.Random, key: bytes) -> tuple[bytes, bool]:
    """A GS2 client's message, mostly almost right, and whether it is one the lane must relay:
    the SDK's own encoding (protobuf's), or the same with fields written another way (targets
    unpacked, empty fields present, a sender id); else bytes changed (signed again or not), cut
    short, fields added, other types, or random bytes."""
    signer = wire.Signer(key)
    data = rng.randbytes(rng.choice([0, 1, 100, 127, 128, 300, 16384]))
    targets = [
        rng.choice([1, 2, 127, 128, 2**32 - 1, rng.randrange(9)])
        for _ in range(rng.choice([0, 1, 3, 64, 65]))
    ]
    canonical = wire.send_value(data, targets)
    shape = rng.randrange(10)
    if shape == 0:
        return wire.client_container(signer, wire.BINARY_MESSAGE, canonical), len(targets) <= 64
    if shape == 1:
        inner = g.uint_field(1, rng.randrange(2**32)) + g.bytes_field(2, data)
        inner += b"".join(g.uint_field(3, t) for t in targets)
        return wire.client_container(signer, wire.BINARY_MESSAGE, g.bytes_field(1, inner)), len(targets) <= 64
    if shape == 2:
        kind = rng.choice([0, 1, 2, 0x10000000, 0x30000001, rng.randrange(2**31)])
        return g.container(kind, canonical, key), False
    if shape == 3:
        return rng.randbytes(rng.randrange(400)), False
    value = bytearray(canonical)
    if shape in (4, 5) and value:
        for _ in range(rng.randrange(1, 4)):
            value[rng.randrange(len(value))] = rng.randrange(256)
    if shape == 6:
        value += g.uint_field(rng.randrange(1, 20), rng.randrange(300))
    message = bytearray(wire.client_container(signer, wire.BINARY_MESSAGE, bytes(value)))
    if shape == 5:  # the container's own bytes changed: its fields, or the signature
        message[rng.randrange(len(message))] = rng.randrange(256)
    if shape == 7:
        message = message[: rng.randrange(len(message))]
    if shape == 8:
        message += g.uint_field(rng.choice([4, 5, 6, 15]), rng.randrange(2**33))
    return bytes(message), False


def test_what_the_lane_relays_of_a_gs2_message_is_what_wire_decode_reads() -> None:
    """The lane parses GS2 clients' Containers in C, before their signature is checked: for
    thousands of messages, well formed and not, whatever it takes is a SEND that wire.decode (the
    relay's own parser, Google's protobuf) reads the same, data and targets, and it takes every
    message of the SDK's shape."""
    lane, sock, peer, _ = a_lane(print)
    key = b"a room key longer than a SHA-256 block, which HMAC hashes first: " * 2
    signer = wire.Signer(key)
    lane.gs2_limits(key, time.monotonic(), 1 << 20)
    rng = random.Random(20261205)
    taken = 0
    try:
        for _ in range(int(os.environ.get("RELAY_FUZZ_PACKETS", "3000"))):
            message, plain = _fuzzed_gs2(rng, key)
            got = lane.gs2_decode(message)
            if plain:
                assert got is not None, message
            if got is None:
                continue
            taken += 1
            read = wire.decode(message, signer, 1 << 20)
            assert read == m.Send(got[0], got[1] or None), message
        assert taken > 600  # the other shapes' changes leave some messages still relayable
    finally:
        sock.close()
        peer.close()


def _fuzzed_plaintext(rng: random.Random) -> bytes:
    """A member's plaintext that is mostly almost right: SENDs of every size around the limits,
    targets of every kind and count, other message codes, extra elements, then cut short or
    with bytes changed; or random bytes."""

    def uint() -> object:
        return rng.choice(
            [0, 1, 2, 3, 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, rng.randrange(9)]
        )

    def message() -> bytes:
        payload = rng.randbytes(rng.choice([0, 1, 100, 255, 256, 1099, 1100, 1101, 4000]))
        targets = rng.choice(
            [None, [], [uint() for _ in range(rng.randrange(80))], "x", 5, [b"a"], [[1]], {1: 2}]
        )
        shape = rng.randrange(8)
        if shape == 0:
            return msgpack.packb([2, payload])
        if shape == 1:
            return msgpack.packb([2, payload, targets, "extra"])
        if shape == 2:
            return msgpack.packb([rng.randrange(12), payload, targets])
        return msgpack.packb([2, payload, targets])

    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(UDP_MAX_PLAINTEXT))
    text = b"".join(message() for _ in range(rng.randrange(1, 70)))
    if kind == 1:
        return text[: rng.randrange(len(text))]
    if kind == 2:
        changed = bytearray(text)
        for _ in range(rng.randrange(1, 8)):
            changed[rng.randrange(len(changed))] = rng.randrange(256)
        return bytes(changed)
    return text


async def test_fuzzed_packets_leave_the_room_relaying_with_no_internal_error() -> None:
    """Thousands of sealed plaintexts that are almost right (the lane parses members' plaintexts
    itself, in C) and raw garbage, some with a member's own header: each is relayed, handed to
    the room or dropped and counted, none is an internal error, and the room relays after it.
    Also run under AddressSanitizer by tests/server/test_sanitized.py."""
    rng = random.Random(20)
    limits = {
        "messages_per_second": 10**6,
        "message_burst": 10**6,
        "bytes_per_second": 10**9,
        "byte_burst": 10**9,
    }
    async with room(host="127.0.0.1", **limits) as r:
        lane = r.relay._udp_lane
        assert lane is not None
        peers = await joined(r, UdpPeer, 4)
        try:
            for i in range(int(os.environ.get("RELAY_FUZZ_PACKETS", "3000"))):
                peer = rng.choice(peers)
                kind = rng.randrange(10)
                if kind < 8:
                    peer.send_raw(peer.seal(_fuzzed_plaintext(rng)[:UDP_MAX_PLAINTEXT]))
                elif kind == 8:  # this session's header, then anything
                    head = (1, 3, 0, peer.session_id, rng.randrange(1, 2**64))
                    peer.send_raw(struct.pack("!BBHIQ", *head) + rng.randbytes(rng.randrange(1300)))
                else:
                    peer.send_raw(rng.randbytes(rng.randrange(1500)))
                if i % 40 == 0:  # within the socket buffers
                    await asyncio.gather(*(p.quiet(0.005) for p in peers))
            await asyncio.gather(*(p.quiet(0.2) for p in peers))
            assert lane.lane.fast > 0 and lane.lane.punted > 0
            assert drops(r).get("internal_error", 0) == 0, drops(r)
            after = [await UdpPeer.open(r.key, r.port) for _ in range(2)]
            peers += after
            for i, peer in enumerate(after):
                await peer.start(f"after{i}")
            await after[1].quiet(0.1)
            after[0].send(send(b"still relaying"))
            assert repr(m.Message(after[0].connection_id, b"still relaying")) in map(
                repr, await after[1].quiet(0.3)
            )
        finally:
            for peer in peers:
                peer.close()
