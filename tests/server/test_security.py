"""The threats of docs/security.md, on the wire: wrong keys, replays, tampering, impersonation,
address rebinding and the anti-amplification budget (docs/protocol.md sections 4.4, 5.2, 7.3)."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest

import relay.client as rc
from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import ACCEPT_SIZE, HELLO_MIN_SIZE
from relay.protocol.keys import generate_room_key
from relay.protocol.packets import Sealer

from .helpers import client, close_peer, drops, eventually, exchange, moved, no_events_of, open_peer
from .rawpeer import NoAnswer, UdpPeer, WsPeer, flip

pytestmark = pytest.mark.timeout(20)
SLOWER = {"keepalive_timeout": 5.0, "resume_grace": 5.0}  # raw peers do not ping


# ---- the room key ---------------------------------------------------------------------------


async def test_wrong_room_key_udp_gets_no_answer() -> None:
    async with room(**SLOWER) as r:
        before = drops(r)
        stranger = await UdpPeer.open(generate_room_key(), r.port)
        stranger.send_raw(stranger.make_hello(1200))
        assert await stranger.silence(0.3) == []
        assert moved(before, drops(r)) == {"handshake": 1}
        assert r.relay.counters.handshake_failures == 1
        assert r.relay.room.sessions == {}
        stranger.close()


async def test_wrong_room_key_ws_is_closed_with_1008() -> None:
    async with room(**SLOWER) as r:
        stranger = await WsPeer.open(generate_room_key(), r.port)
        stranger.send_raw(stranger.make_hello(0))
        with pytest.raises(EOFError):
            await stranger.recv_packet(2.0)  # no ACCEPT, only the close frame
        assert stranger.close_code == 1008
        assert r.relay.room.sessions == {}
        await stranger.aclose()


@pytest.mark.parametrize("first", ["text", "version", "data", "short"])
async def test_ws_bad_first_message_is_closed_with_1008(first: str) -> None:
    async with room(**SLOWER) as r:
        peer = await WsPeer.open(r.key, r.port)
        hello = peer.make_hello(0)
        if first == "text":
            peer.send_text("hello")
        elif first == "version":
            peer.send_raw(b"\x02" + hello[1:])
        elif first == "data":
            peer.send_raw(b"\x01\x03" + hello[2:])
        else:
            peer.send_raw(hello[: HELLO_MIN_SIZE - 1])
        assert await peer.wait_closed() == 1008
        assert r.relay.room.sessions == {}
        await peer.aclose()


# ---- replay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_replayed_data_is_delivered_once(transport: str) -> None:
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "ws")
        peer = await open_peer(r, transport)
        await peer.start("replayer")
        before = drops(r)
        packet = peer.send(m.Send(b"once").encode())
        peer.send_raw(packet)
        peer.send_raw(packet)
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"once")
        await asyncio.sleep(0.2)
        assert no_events_of(watcher, rc.Received) == []
        assert moved(before, drops(r)) == {"replay": 2}
        peer.send(m.Send(b"next").encode())  # the session itself is unharmed
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"next")
        await close_peer(peer)
        await watcher.close()


async def test_old_counter_outside_the_window_is_dropped() -> None:
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "ws")
        peer = await UdpPeer.open(r.key, r.port)
        await peer.start("p")
        assert peer.sealer is not None
        early = peer.seal(m.Send(b"early").encode())  # counter 2, held back
        peer.sealer.counter += 2000  # jump ahead of the 1024-counter window
        peer.send(m.Send(b"late").encode())
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"late")
        before = drops(r)
        peer.send_raw(early)
        await asyncio.sleep(0.2)
        assert no_events_of(watcher, rc.Received) == []
        assert moved(before, drops(r)) == {"replay": 1}
        peer.close()
        await watcher.close()


async def test_replayed_hello_and_join_do_nothing() -> None:
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "ws")
        victim = await UdpPeer.open(r.key, r.port)
        await victim.handshake(pad_to=1200)
        assert victim.hello is not None
        recorded_hello = victim.hello.packet
        recorded_join = victim.send(m.Join("victim", b"").encode())
        await victim.expect(m.Welcome)
        await watcher.next_event_of(rc.Joined, 2)
        sessions = set(r.relay.room.sessions)
        before = drops(r)
        # the victim's own socket replays both: the HELLO was completed, the JOIN counter is used
        victim.send_raw(recorded_hello)
        victim.send_raw(recorded_join)
        assert await victim.silence(0.3) == []
        # an attacker replays the recorded session from elsewhere, over UDP and over WebSocket
        attacker = await UdpPeer.open(r.key, r.port)
        attacker.send_raw(recorded_hello)
        attacker.send_raw(recorded_join)
        assert await attacker.silence(0.3) == []
        ws_attacker = await WsPeer.open(r.key, r.port)
        ws_attacker.send_raw(recorded_hello)
        assert await ws_attacker.wait_closed() == 1008
        assert set(r.relay.room.sessions) == sessions
        assert len(r.relay.room.members) == 2
        assert no_events_of(watcher, rc.Joined, rc.Left) == []
        assert moved(before, drops(r)) == {"hello_replay": 3, "replay": 2}
        victim.close()
        attacker.close()
        await ws_attacker.aclose()
        await watcher.close()


async def test_pending_hello_from_another_address_gets_no_accept() -> None:
    """A retransmitted HELLO gets the same ACCEPT at its own address; the same HELLO from another
    address (a reflection attempt) gets nothing."""
    async with room(**SLOWER) as r:
        peer = await UdpPeer.open(r.key, r.port)
        hello = peer.make_hello(1200)
        peer.send_raw(hello)
        first = await peer.recv_packet(2)
        peer.send_raw(hello)
        assert await peer.recv_packet(2) == first
        other = await UdpPeer.open(r.key, r.port)
        before = drops(r)
        other.send_raw(hello)
        assert await other.silence(0.3) == []
        assert moved(before, drops(r)) == {"hello_replay": 1}
        assert len(r.relay.room.sessions) == 1
        peer.close()
        other.close()


# ---- tampering ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_flipped_bytes_are_dropped_and_counted(transport: str) -> None:
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "ws")
        peer = await open_peer(r, transport)
        await peer.start("p")
        packet = peer.seal(m.Send(b"x" * 40).encode())
        n = len(packet)
        positions = {
            1: {"type", "bad_data"},  # type
            3: {"flags", "bad_data"},  # flags
            5: {"unknown_session", "bad_data"},  # session id
            15: {"decrypt", "bad_data"},  # counter (nonce and associated data)
            16: {"decrypt"},  # ciphertext
            n // 2: {"decrypt"},
            n - 17: {"decrypt"},  # last ciphertext byte
            n - 16: {"decrypt"},  # tag
            n - 1: {"decrypt"},
        }
        for index, reasons in positions.items():
            before = drops(r)
            failures = r.relay.counters.decrypt_failures
            peer.send_raw(flip(packet, index))
            await eventually(lambda b=before: moved(b, drops(r)), 2, f"drop of byte {index} flipped")
            diff = moved(before, drops(r))
            assert sum(diff.values()) == 1 and set(diff) <= reasons, (index, diff)
            if "decrypt" in diff:
                assert r.relay.counters.decrypt_failures == failures + 1
        if transport == "udp":  # another version: dropped (over WebSocket it closes: below)
            before = drops(r)
            peer.send_raw(flip(packet, 0))
            await eventually(lambda b=before: moved(b, drops(r)) == {"version": 1}, 2, "version drop")
        assert no_events_of(watcher, rc.Received) == []
        peer.send_raw(packet)  # the untouched packet still authenticates: nothing moved the window
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"x" * 40)
        await close_peer(peer)
        await watcher.close()


async def test_an_unknown_version_closes_an_established_websocket_and_keeps_the_seat() -> None:
    """docs/protocol.md 7.2 and 10: over WebSocket a version the relay does not speak closes the
    connection with 1008; the member's seat is held for a resume, as for any lost connection."""
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "ws")
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        await watcher.next_event_of(rc.Joined, 2)
        before = drops(r)
        peer.send_raw(flip(peer.seal(m.Send(b"x").encode()), 0, 0x03))  # version 2
        assert await peer.wait_closed() == 1008
        assert moved(before, drops(r)) == {"version": 1}
        assert peer.connection_id in r.relay.room.members  # held for resume_grace
        assert no_events_of(watcher, rc.Received, rc.Left) == []
        await watcher.close()


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_malformed_authenticated_packet_is_dropped(transport: str) -> None:
    async with room(**SLOWER) as r:
        watcher = await client(r, "watcher", "udp")
        peer = await open_peer(r, transport)
        await peer.start("p")
        garbage = [
            b"\xc1\xc1\xc1 not msgpack",
            b"\x93\x02",  # truncated array
            msgpack.packb([2, "text, not bin", None]),
            msgpack.packb({"a": 1}),
            msgpack.packb([2, b"ok", None]) + msgpack.packb([2, b"bad", "targets"]),  # one bad: all go
            msgpack.packb([1.5, b"x"]),
            msgpack.packb([]),
            b"",
        ]
        for plaintext in garbage:
            before = drops(r)
            peer.send_raw(peer.sealer.seal(plaintext))  # type: ignore[union-attr]
            await eventually(lambda b=before: moved(b, drops(r)), 2, f"drop of {plaintext!r}")
            assert moved(before, drops(r)) == {"malformed": 1}, plaintext
        assert no_events_of(watcher, rc.Received) == []
        assert r.relay.counters.drops["internal_error"] == 0
        peer.send(m.Send(b"fine").encode())
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"fine")
        # unknown message types and extra elements are ignored, not malformed (section 5)
        peer.send(msgpack.packb([99, "future"]), msgpack.packb([2, b"extra", None, "more", 1]))
        assert await watcher.next_event_of(rc.Received, 2) == rc.Received(peer.connection_id, b"extra")
        await close_peer(peer)
        await watcher.close()


# ---- impersonation --------------------------------------------------------------------------


async def test_sender_is_stamped_by_the_relay() -> None:
    async with room(**SLOWER) as r:
        bob = await client(r, "bob", "udp")
        carol = await client(r, "carol", "ws")
        mallory = await UdpPeer.open(r.key, r.port)
        await mallory.start("mallory")
        me = mallory.connection_id
        # a client-side "sender" field does not exist: extra elements are ignored, and a relay
        # MESSAGE sent by a client is an unknown client message type
        mallory.send(
            msgpack.packb([2, b"one", None, carol.connection_id]),
            msgpack.packb([20, carol.connection_id, b"forged"]),
            msgpack.packb([2, b"two", [bob.connection_id], carol.connection_id]),
        )
        assert await bob.next_event_of(rc.Received, 2) == rc.Received(me, b"one")
        assert await bob.next_event_of(rc.Received, 2) == rc.Received(me, b"two")
        assert await carol.next_event_of(rc.Received, 2) == rc.Received(me, b"one")
        await asyncio.sleep(0.2)
        assert no_events_of(bob, rc.Received) == no_events_of(carol, rc.Received) == []
        mallory.close()
        await bob.close()
        await carol.close()


async def test_a_member_cannot_inject_into_another_session() -> None:
    async with room(**SLOWER) as r:
        bob = await client(r, "bob", "udp")
        carol = await client(r, "carol", "ws")
        mallory = await UdpPeer.open(r.key, r.port)
        await mallory.start("mallory")
        assert mallory.keys is not None
        bob_sid = bob.connection.session_id
        assert bob_sid in r.relay.room.sessions
        before = drops(r)
        # mallory holds the room key and her own session keys, not bob's
        for key in (mallory.keys.k_c2s, mallory.keys.k_s2c, bytes(32)):
            forged = Sealer(key, bob_sid, counter=10_000)
            mallory.send_raw(forged.seal(m.Send(b"i am bob").encode()))
            mallory.send_raw(forged.seal(m.Bye().encode()))
        await eventually(lambda: moved(before, drops(r)).get("decrypt") == 6, 2, "six decrypt drops")
        assert moved(before, drops(r)) == {"decrypt": 6}
        await asyncio.sleep(0.1)
        assert no_events_of(carol, rc.Received, rc.Left) == []
        assert bob.connection_id in r.relay.room.members
        await exchange(bob, carol)  # bob's session (and its replay window) is untouched
        mallory.close()
        await bob.close()
        await carol.close()


# ---- address validation ---------------------------------------------------------------------


async def test_an_unpadded_udp_hello_gets_nothing_and_a_padded_one_one_accept() -> None:
    """docs/protocol.md 4.1: over UDP a HELLO is 1200 to 1500 bytes. An unpadded one (a forged
    source could aim the ACCEPT at a victim) gets no answer; a padded one gets one 64-byte ACCEPT
    per copy, so the relay never sends an address more than it received from it."""
    async with room(**SLOWER) as r:
        peer = await UdpPeer.open(r.key, r.port)
        for size, reason in ((0, "hello_unpadded"), (1199, "hello_unpadded"), (1501, "bad_hello")):
            hello = peer.make_hello(size)
            assert len(hello) == max(size, HELLO_MIN_SIZE)
            before = drops(r)
            peer.send_raw(hello)
            await eventually(lambda b=before: moved(b, drops(r)), 2, f"drop of a {len(hello)}-byte HELLO")
            assert moved(before, drops(r)) == {reason: 1}
        assert await peer.silence(0.2) == []
        hello = peer.make_hello(1200)
        peer.send_raw(hello)
        accept = await peer.recv_packet(2)
        assert len(accept) == ACCEPT_SIZE == 64
        assert await peer.silence(0.3) == []
        peer.send_raw(hello)  # a retransmission gets exactly one more (the same) ACCEPT
        assert await peer.recv_packet(2) == accept
        assert await peer.silence(0.2) == []
        assert peer.received_bytes == 128
        peer.finish(accept)  # and the ACCEPT is a valid one
        welcome = await peer.join("padded-hello")
        assert welcome.connection_id == 1
        peer.close()


async def test_a_websocket_hello_over_1500_bytes_is_closed_with_1008() -> None:
    async with room(**SLOWER) as r:
        peer = await WsPeer.open(r.key, r.port)
        before = drops(r)
        peer.send_raw(peer.make_hello(1501))
        assert await peer.wait_closed() == 1008
        assert moved(before, drops(r)) == {"bad_hello": 1}
        small = await WsPeer.open(r.key, r.port)  # the unpadded 64 bytes are fine over TCP
        await small.start("small")
        await close_peer(small)


async def test_join_from_another_address_gets_no_more_than_it_sent() -> None:
    """The keys alone do not validate an address: a session whose JOIN arrives from a new address
    may send there only what it received from it until a PONG answers the challenge."""
    async with room(**SLOWER) as r:
        other = await client(r, "other", "ws", profile=b"p" * 500)
        peer = await UdpPeer.open(r.key, r.port)
        await peer.handshake(pad_to=1200)
        await peer.rebind()
        before = drops(r)
        peer.send(m.Join("moved", b"").encode())  # about 50 bytes; the WELCOME is 600+
        await asyncio.sleep(0.3)
        assert peer.received_bytes <= peer.sent_bytes
        assert moved(before, drops(r)).get("amplification", 0) >= 1
        assert r.relay.room.sessions[peer.session_id].link.validated is False
        await other.close()
        peer.close()


async def test_rebinding_moves_the_session_after_a_path_challenge() -> None:
    async with room(**SLOWER) as r:
        bob = await client(r, "bob", "ws")
        peer = await UdpPeer.open(r.key, r.port)
        await peer.start("roamer")
        me = peer.connection_id
        old_addr = peer.address
        link = r.relay.room.sessions[peer.session_id].link
        assert link.validated and link.addr == old_addr
        await peer.rebind()  # NAT rebinding: same keys, next counter, new source port
        assert peer.address != old_addr
        before = drops(r)
        peer.send(m.Send(b"r" * 100).encode())
        assert await bob.next_event_of(rc.Received, 2) == rc.Received(me, b"r" * 100)
        challenge = await peer.expect(m.PathPing)
        assert link.addr == peer.address and not link.validated
        # before the PONG: bob's traffic beyond the new address's byte budget is dropped, counted
        for i in range(5):  # one packet each, every one larger than what is left of the budget
            bob.send(b"%d" % i + b"b" * 300)
            await asyncio.sleep(0.02)
        await eventually(lambda: moved(before, drops(r)).get("amplification", 0) == 5, 2, "amplification")
        assert peer.received_bytes <= peer.sent_bytes
        peer.send(m.PathPong(challenge.challenge ^ 1).encode())  # a wrong answer changes nothing
        await asyncio.sleep(0.1)
        assert not link.validated
        peer.send(m.PathPong(challenge.challenge).encode())
        await eventually(lambda: link.validated, 2, "validation")
        peer.inbox.clear()
        bob.send(b"to the new address " + b"n" * 500)
        got = await peer.expect(m.Message, 2)
        assert got == m.Message(bob.connection_id, b"to the new address " + b"n" * 500)
        assert peer.old_received == 0  # nothing went back to the old address
        peer.send(m.Send(b"still me").encode())
        assert await bob.next_event_of(rc.Received, 2) == rc.Received(me, b"still me")
        peer.close()
        await bob.close()


async def test_rebinding_with_a_small_packet_still_validates() -> None:
    """A real client's keepalive PING is often the first packet from a new NAT port: the relay's
    answer (PONG + challenge) is larger than the PING; the challenge must still arrive."""
    async with room(**SLOWER) as r:
        bob = await client(r, "bob", "ws")
        peer = await UdpPeer.open(r.key, r.port)
        await peer.start("roamer")
        link = r.relay.room.sessions[peer.session_id].link
        await peer.rebind()
        challenge = None
        for i in range(20):  # the client keeps pinging, as relay.client does
            peer.send(m.Ping(i + 1, 10**12 + i).encode())
            try:
                challenge = await peer.expect(m.PathPing, 0.1)
                break
            except NoAnswer:
                continue
        assert challenge is not None, "the path challenge never reached the new address"
        assert peer.received_bytes <= peer.sent_bytes
        peer.send(m.PathPong(challenge.challenge).encode())
        await eventually(lambda: link.validated, 2, "validation")
        bob.send(b"hello roamer" * 50)
        assert await peer.expect(m.Message, 2) == m.Message(bob.connection_id, b"hello roamer" * 50)
        peer.close()
        await bob.close()


# ---- half-open connections ------------------------------------------------------------------


async def test_half_open_connections_are_bounded_and_never_keep_a_client_out() -> None:
    """Many TCP connections that never upgrade (or never send a HELLO) hold at most
    max_pending_connections of the relay's descriptors: the oldest go for newer ones, each goes
    after connect_timeout, and a real client still joins among them."""
    async with room(**SLOWER, max_pending_connections=20, connect_timeout=1.0) as r:
        held = []
        for i in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            if i % 2:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half an upgrade request
            held.append((reader, writer))
        await eventually(lambda: len(r.relay._ws) <= 20, 2, "the oldest closed for newer ones")
        assert drops(r).get("ws_pending_overflow", 0) >= 40
        late = await client(r, "late", "ws")  # the newest connection, with a HELLO: admitted
        assert late.connection_id == 1 and not late.closed
        await eventually(lambda: len(r.relay._ws) == 1, 3, "the rest closed after connect_timeout")
        assert drops(r).get("ws_connect_timeout", 0) >= 1
        closed = 0
        for reader, writer in held:
            try:
                data = await asyncio.wait_for(reader.read(100), 0.5)
            except (ConnectionError, TimeoutError):
                data = b""
            closed += data == b""
            writer.close()
        assert closed == len(held)
        await late.close()


async def test_refused_websocket_upgrades_are_counted() -> None:
    """Found in review: a refused upgrade (no key, HTTP/1.0, a bad version) was answered and
    dropped without a trace in the relay's counters."""
    async with room() as r:
        requests = [
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",  # no Sec-WebSocket-Key
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        ]
        for request in requests:
            reader, writer = await asyncio.open_connection(r.host, r.port)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5"), answer[:40]
            writer.close()
        await eventually(lambda: drops(r).get("ws_upgrade_refused") == len(requests), 2, "each counted once")


@pytest.mark.parametrize("split", [1, 2, 3])
async def test_an_upgrade_request_whose_end_comes_in_pieces_is_answered(split: int) -> None:
    """The end of the request is searched for only in what a read added (and the 3 bytes before
    it), so a request trickled in does not cost its length squared: an end split across reads,
    at each place it can split, is still found."""
    async with room() as r:
        request = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection(r.host, r.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head, tail = request[: len(request) - 4 + split], request[len(request) - 4 + split :]
        for piece in (head[:-5], head[-5:], *(tail[i : i + 1] for i in range(len(tail)))):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # each piece its own read
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 101"), answer[:40]
        writer.close()
