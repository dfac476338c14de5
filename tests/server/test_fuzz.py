"""Property-based fuzzing of the relay's input paths: random bytes, header-shaped junk and
mutations of valid packets (HELLOs, DATA of live sessions). Afterwards no exception escaped
(drops["internal_error"] stays 0, nothing was logged), the anti-amplification rule held for every
address, and the room still serves its members.

Room.udp_datagram / Room.ws_data are driven directly for speed (hypothesis shrinks failures
there); a smaller number of generated inputs then goes over real UDP and WebSocket sockets.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import relay.client as rc
from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import HEADER, PROTOCOL_VERSION, UDP_HELLO_PAD_TO
from relay.protocol.packets import ClientHello

from .helpers import client, drops, exchange
from .rawpeer import UdpPeer, WsPeer

pytestmark = pytest.mark.timeout(60)
SLOWER = {"keepalive_timeout": 5.0, "resume_grace": 5.0}
GS2_ERROR_TYPE = b"\x08\xff\xff\xff\xff\x07"  # a GS2 Container's field 1: ERROR (0x7fffffff)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def _mutation(draw: st.DrawFn, seed: bytes) -> bytes:
    """One seed packet, changed the way a network or an attacker would."""
    packet = bytearray(seed)
    how = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "header", "same"]))
    if how == "flip" and packet:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(packet) - 1))
            packet[i] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del packet[draw(st.integers(0, len(packet))) :]
    elif how == "extend":
        packet += draw(st.binary(min_size=1, max_size=64))
    elif how == "splice" and packet:
        i = draw(st.integers(0, len(packet)))
        packet[i:i] = draw(st.binary(max_size=32))
    elif how == "header":
        version = draw(st.sampled_from([PROTOCOL_VERSION, 0, 2, 255]))
        ptype = draw(st.integers(0, 5))
        flags = draw(st.sampled_from([0, 0, 1, 0x8000]))
        sid = draw(st.sampled_from([0, 1, 0xFFFFFFFF, struct.unpack_from("!I", seed, 4)[0]]))
        counter = draw(st.sampled_from([0, 1, 2**64 - 1, struct.unpack_from("!Q", seed, 8)[0]]))
        packet[:16] = HEADER.pack(version, ptype, flags, sid, counter)
    return bytes(packet)


def _inputs(seeds: list[bytes], sids: list[int]) -> st.SearchStrategy[bytes]:
    header_junk = st.builds(
        lambda v, t, f, s, c, body: HEADER.pack(v, t, f, s, c) + body,
        st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2]),
        st.integers(0, 4),
        st.sampled_from([0, 0, 0, 1]),
        st.sampled_from([0, 0xDEADBEEF, *sids]),
        st.integers(0, 2**64 - 1),
        st.binary(max_size=1300),
    )
    return st.one_of(
        st.binary(max_size=1600),
        header_junk,
        st.sampled_from(seeds).flatmap(_mutation),
    )


async def test_fuzz_udp_datagram_path_directly() -> None:
    async with room(**SLOWER) as r:
        relay_room = r.relay.room
        assert relay_room is not None
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        peer = await UdpPeer.open(r.key, r.port)
        await peer.start("seed")
        seeds = [
            ClientHello.create(relay_room.handshakes.psk, pad_to=UDP_HELLO_PAD_TO).packet,
            ClientHello.create(relay_room.handshakes.psk).packet,
            *(peer.seal(m.Send(b"s%d" % i).encode()) for i in range(5)),
            peer.seal(m.Join("seed", b"").encode()),
            peer.seal(m.Ping(1, 2).encode(), m.SetProfile(b"p").encode()),
            peer.seal(m.Bye().encode()),
        ]
        sids = [a.connection.session_id, peer.session_id]
        received: Counter[tuple] = Counter()
        sent: Counter[tuple] = Counter()
        validated: set[tuple] = set()

        real_sendto = relay_room.udp_writer

        def sendto(packet: bytes, addr: tuple) -> None:
            if addr[0] == "192.0.2.1":
                sent[addr] += len(packet)
            else:
                real_sendto(packet, addr)

        relay_room.udp_writer = sendto  # the paths of new sessions write through it

        @FUZZ
        @given(data=_inputs(seeds, sids), port=st.integers(1, 4))
        def fuzz(data: bytes, port: int) -> None:
            addr = ("192.0.2.1", port)  # TEST-NET-1: never a real peer
            received[addr] += len(data)
            now = time.monotonic()
            relay_room.udp_datagram(data, addr, now)
            relay_room.flush(now)
            relay_room.handle_timer(now)
            for session in relay_room.sessions.values():
                path = session.path
                if path is not None and path.addr == addr and path.validated:
                    validated.add(addr)

        fuzz()
        assert r.relay.counters.drops["internal_error"] == 0
        for addr, nbytes in sent.items():
            if addr not in validated:  # anti-amplification: never more out than in
                assert nbytes <= received[addr], (addr, nbytes, received[addr])
        assert sum(drops(r).values()) > 100  # the fuzz reached the drop paths
        await exchange(a, b)
        await a.close()
        await b.close()
        peer.close()


async def test_fuzz_websocket_data_path_directly() -> None:
    async with room(**SLOWER) as r:
        relay_room = r.relay.room
        assert relay_room is not None
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("seed")
        session = relay_room.sessions[peer.session_id]
        seeds = [
            *(peer.seal(m.Send(b"w%d" % i).encode()) for i in range(5)),
            peer.seal(m.Ping(1, 2).encode(), m.Sync().encode()),
            peer.seal(m.SetProfile(b"x" * 40).encode()),
        ]

        @FUZZ
        @given(data=_inputs(seeds, [peer.session_id]))
        def fuzz(data: bytes) -> None:
            now = time.monotonic()
            if data[:1] and data[0] != PROTOCOL_VERSION:
                # another version closes the connection (test_security covers it); keep this
                # session open for the rest of the examples
                data = bytes([PROTOCOL_VERSION]) + data[1:]
            if peer.session_id in relay_room.sessions:
                relay_room.ws_data(session, data, now)
            relay_room.flush(now)

        fuzz()
        assert r.relay.counters.drops["internal_error"] == 0
        assert sum(drops(r).values()) > 100  # the fuzz reached the drop paths
        await exchange(a, b)
        await a.close()
        await b.close()
        await peer.aclose()


def _generate(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    """n inputs from a hypothesis strategy (generation only: the sockets are driven afterwards)."""
    out: list[bytes] = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate])
    @given(strategy)
    def collect(data: bytes) -> None:
        out.append(data)

    collect()
    return out


async def test_fuzz_over_real_sockets() -> None:
    async with room(**SLOWER) as r:
        relay_room = r.relay.room
        assert relay_room is not None
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        udp = await UdpPeer.open(r.key, r.port)
        await udp.start("udp-seed")
        ws = await WsPeer.open(r.key, r.port)
        await ws.start("ws-seed")
        udp_seeds = [
            ClientHello.create(relay_room.handshakes.psk, pad_to=UDP_HELLO_PAD_TO).packet,
            *(udp.seal(m.Send(b"u%d" % i).encode()) for i in range(4)),
        ]
        for data in _generate(_inputs(udp_seeds, [udp.session_id, a.connection.session_id]), 60):
            udp.send_raw(data)
        ws_seeds = [ws.seal(m.Send(b"w%d" % i).encode()) for i in range(4)]
        for data in _generate(_inputs(ws_seeds, [ws.session_id]), 40):
            ws.send_raw(data)
        # fresh WebSocket connections whose first message is fuzz: ACCEPT, or a 1008 close (after
        # GS2's Error when the message began like a GS2 Container, docs/gs2-clients.md)
        hello_seeds = [ClientHello.create(relay_room.handshakes.psk).packet]
        codes = []
        for data in _generate(_inputs(hello_seeds, []), 15):
            conn = await WsPeer.open(r.key, r.port)
            conn.send_raw(data)
            try:
                packet = await conn.recv_packet(2.0)
                if packet.startswith(GS2_ERROR_TYPE):
                    packet = await conn.recv_packet(2.0)  # the close follows
                assert packet[:2] == b"\x01\x02"  # only an intact HELLO gets an ACCEPT
            except EOFError:
                codes.append(conn.close_code)
            await conn.aclose()
        assert set(codes) <= {1008}
        await asyncio.sleep(0.2)
        assert r.relay.counters.drops["internal_error"] == 0
        assert a.connection_id in relay_room.members and b.connection_id in relay_room.members
        await exchange(a, b)
        assert not [e for e in a.drain_events() if isinstance(e, rc.ClosingEvent)]
        await a.close()
        await b.close()
        udp.close()
        await ws.aclose()
