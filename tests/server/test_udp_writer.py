"""The room's datagram writer (relay/server/links.py UdpWriter): a flush's datagrams leave in one
sendmmsg (relay/server/_datagrams.c) and arrive, each to its address, in order; one the kernel
refuses is counted and skipped; a full socket buffer hands the rest to the transport; outside a
flush, or without the extension, every datagram goes through the transport as before. Real
sockets on loopback."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from relay.server import links
from relay.server.links import UdpWriter, sockaddr
from relay.server.metrics import Counters
from relay.settings import pure_python

try:
    from relay.server._datagrams import send_batch as c_send_batch
except ImportError:  # not built here: no C compiler
    c_send_batch = None  # type: ignore[assignment]

NOT_BUILT = "relay/server/_datagrams.c is not built here (it needs a C compiler)"
needs_c = pytest.mark.skipif(c_send_batch is None, reason=NOT_BUILT)


def test_the_c_part_is_built_where_it_is_required_and_in_use_unless_refused() -> None:
    if os.environ.get("RELAY_REQUIRE_NATIVE"):
        assert c_send_batch is not None, NOT_BUILT
    assert links.SEND_BATCH is (None if pure_python() else c_send_batch)


def udp(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def received(sock: socket.socket) -> list[bytes]:
    sock.settimeout(1.0)
    got = []
    try:
        while True:
            got.append(sock.recv(2048))
            sock.settimeout(0.05)
    except TimeoutError:
        return got


class Transport:
    """The transport's sendto, recorded: what did not go in the batch."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, packet: bytes, addr: Any) -> None:
        self.sent.append((packet, addr))
        self.sock.sendto(packet, addr)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    own, peers = udp(), [udp() for _ in range(3)]
    yield own, peers
    for s in (own, *peers):
        s.close()


def a_pass(writer: UdpWriter, datagrams: list[tuple[bytes, Any]]) -> None:
    """A room's flush, as the relay brackets it: held, the datagrams written, released."""
    writer.hold()
    for packet, addr in datagrams:
        writer.sendto(packet, addr)
    writer.release()


def writer_for(own: socket.socket, **kw: Any) -> tuple[UdpWriter, Transport, Counters]:
    counters = Counters()
    writer = UdpWriter(own, counters, **{"send_batch": c_send_batch, **kw})
    transport = Transport(own)
    writer.attach(transport.sendto)
    return writer, transport, counters


@needs_c
def test_a_flush_leaves_in_one_batch_each_datagram_to_its_address_in_order(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    own, peers = sockets
    writer, transport, counters = writer_for(own)
    writer.hold()
    for i in range(70):  # more than one sendmmsg's chunk of 64
        peer = peers[i % 3]
        writer.sendto(b"packet %d" % i, peer.getsockname())
    assert all(not received_now(p) for p in peers)  # held until the flush ends
    writer.release()
    for n, peer in enumerate(peers):
        assert received(peer) == [b"packet %d" % i for i in range(n, 70, 3)]
    assert transport.sent == [] and not counters.drops
    writer.sendto(b"after", peers[0].getsockname())  # not held: straight through the transport
    assert transport.sent == [(b"after", peers[0].getsockname())]
    assert received(peers[0]) == [b"after"]


def received_now(sock: socket.socket) -> bool:
    try:
        sock.recv(2048, socket.MSG_PEEK)
        return True
    except BlockingIOError:
        return False


@needs_c
def test_one_datagram_in_a_flush_goes_through_the_transport(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    own, peers = sockets
    writer, transport, _ = writer_for(own)
    a_pass(writer, [(b"alone", peers[1].getsockname())])
    assert transport.sent == [(b"alone", peers[1].getsockname())]
    assert received(peers[1]) == [b"alone"]


@needs_c
def test_a_refused_datagram_is_counted_and_the_rest_still_go(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    own, peers = sockets
    writer, transport, counters = writer_for(own)
    to0, to2 = peers[0].getsockname(), peers[2].getsockname()
    broadcast = ("255.255.255.255", 9)  # EACCES: no SO_BROADCAST on the socket
    a_pass(writer, [(b"one", to0), (b"broadcast", broadcast), (b"two", to0), (b"three", to2)])
    assert received(peers[0]) == [b"one", b"two"] and received(peers[2]) == [b"three"]
    assert counters.drops["socket_error"] == 1 and transport.sent == []


def test_a_full_socket_buffer_hands_the_rest_to_the_transport(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    """EAGAIN after two: the transport takes the other three (it queues them, and pauses the
    room's UDP output past its high-water mark)."""
    own, peers = sockets
    calls: list[int] = []

    def full_after_two(fd: int, packets: list[bytes], names: list[bytes], start: int) -> tuple[int, int]:
        calls.append(start)
        for packet, name in zip(packets[start : start + 2], names[start : start + 2], strict=True):
            own.sendto(packet, peer_of(name, peers))
        return 2, errno.EAGAIN

    writer, transport, counters = writer_for(own, send_batch=full_after_two)
    a_pass(writer, [(b"%d" % i, peers[0].getsockname()) for i in range(5)])
    assert calls == [0]
    assert [p for p, _ in transport.sent] == [b"2", b"3", b"4"]
    assert received(peers[0]) == [b"0", b"1", b"2", b"3", b"4"] and not counters.drops


def peer_of(name: bytes, peers: list[socket.socket]) -> tuple[str, int]:
    [peer] = [p.getsockname() for p in peers if sockaddr(socket.AF_INET, p.getsockname()) == name]
    return peer


def test_without_the_extension_every_datagram_goes_through_the_transport(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    own, peers = sockets
    writer, transport, _ = writer_for(own, send_batch=None)
    writer.hold()
    assert not writer.held
    for peer in peers:
        writer.sendto(b"x", peer.getsockname())
    assert len(transport.sent) == 3  # as they came, not at the release
    writer.release()
    assert len(transport.sent) == 3 and all(received(p) == [b"x"] for p in peers)


@needs_c
def test_ipv6_addresses() -> None:
    try:
        own, peers = udp("::1"), [udp("::1") for _ in range(2)]
    except OSError as exc:  # a host without IPv6 loopback
        pytest.skip(f"no ::1 here: {exc}")
    try:
        writer, transport, counters = writer_for(own)
        a_pass(writer, [(b"v6 %d" % i, peers[i % 2].getsockname()) for i in range(4)])
        assert received(peers[0]) == [b"v6 0", b"v6 2"] and received(peers[1]) == [b"v6 1", b"v6 3"]
        assert transport.sent == [] and not counters.drops
    finally:
        for s in (own, *peers):
            s.close()


@needs_c
def test_send_batch_refuses_what_it_cannot_send(sockets: tuple[socket.socket, list[socket.socket]]) -> None:
    own, peers = sockets
    send_batch = c_send_batch
    name = sockaddr(socket.AF_INET, peers[0].getsockname())
    assert send_batch(own.fileno(), [], [], 0) == (0, 0)
    assert send_batch(own.fileno(), [b"a", b"b"], [name, name], 1) == (1, 0)
    assert received(peers[0]) == [b"b"]
    with pytest.raises(ValueError, match="one name per packet"):
        send_batch(own.fileno(), [b"a"], [], 0)
    with pytest.raises(TypeError):
        send_batch(own.fileno(), [b"a"], ["not bytes"], 0)
    with pytest.raises(IndexError):
        send_batch(own.fileno(), [b"a"], [name], 2)
    with pytest.raises(ValueError, match="longer than any socket address"):
        send_batch(own.fileno(), [b"a"], [bytes(200)], 0)
    assert send_batch(own.fileno(), [b"a"], [b"\x02\x00"], 0)[1] == errno.EINVAL  # a name too short


@needs_c
def test_once_the_transport_closed_its_socket_a_new_one_with_its_number_gets_nothing() -> None:
    """uvloop (the relay's loop) closes the socket it was given when its transport closes, and
    the next socket may get the same descriptor number: the writer never sends a held pass to
    that number."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        own, peer = udp(), udp()
        counters = Counters()
        writer = UdpWriter(own, counters, c_send_batch)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=own)
        writer.attach(transport.sendto)
        a_pass(writer, [(b"before", peer.getsockname()), (b"before too", peer.getsockname())])
        assert received(peer) == [b"before", b"before too"]
        number = own.fileno()
        writer.hold()  # a flush begins, and the transport closes under it
        transport.close()
        await asyncio.sleep(0.01)
        reused = udp()  # given the closed socket's number, most likely
        try:
            assert own.fileno() == -1
            writer.sendto(b"after", reused.getsockname())
            writer.sendto(b"after too", reused.getsockname())
            writer.release()  # through the closed transport's sendto, which drops them
            assert received(reused) == [] and received(peer) == []
            writer.hold()
            assert not writer.held  # no batch on a closed socket
            print(f"closed descriptor {number}, the next socket's {reused.fileno()}")
        finally:
            reused.close()
            peer.close()

    uvloop.run(scenario())


@needs_c
def test_an_address_it_cannot_pack_sends_the_pass_through_the_transport(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    own, peers = sockets
    writer, transport, counters = writer_for(own)
    odd = ("localhost", peers[1].getsockname()[1])  # a name, not an address: the transport's to judge
    a_pass(writer, [(b"a", peers[0].getsockname()), (b"b", odd)])
    assert [p for p, _ in transport.sent] == [b"a", b"b"]
    assert received(peers[0]) == [b"a"] and not counters.drops
