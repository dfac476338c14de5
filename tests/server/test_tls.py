"""TLS on the WebSocket port (relay/server/tls.py): wss:// beside ws:// and UDP on one port
number, with the certificate verified by real clients, and what a bad or hostile TLS client
gets (dropped, counted, the room unharmed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import relay.client as rc
import relay.server.tls as relay_tls
from loadtest.certs import TlsFiles, make_tls_files
from relay.agent.serve import main as serve_main
from relay.embedded import EmbeddedRoom, room
from relay.protocol import tokens
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from tests.gs2 import wireclient as g

from .helpers import FAST, connections, drops, eventually, exchange, metric, serve_process


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


def trusting(files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.ca))


DAY = 86400.0


def expiry(r: EmbeddedRoom) -> float:
    """relay_tls_certificate_expiry_timestamp_seconds, from the relay's /metrics page."""
    return metric(r.relay.metrics.render().decode(), "relay_tls_certificate_expiry_timestamp_seconds")


async def secure(r: EmbeddedRoom, user: str, tls: ssl.SSLContext | bool, **kw: Any) -> rc.Client:
    """A member over wss://, at the name the test certificates are for."""
    return await rc.connect("localhost", r.port, r.key, user, transport="ws", tls=tls, **kw)


async def tls_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection that will speak TLS (the test writes its bytes)."""
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_relay(reader: asyncio.StreamReader) -> bool:
    """The relay ends the connection (EOF or reset) without answering anything."""
    try:
        return await asyncio.wait_for(reader.read(), 3) == b""
    except ConnectionResetError:
        return True


async def test_wss_ws_and_udp_members_share_one_port(tls_files: TlsFiles) -> None:
    async with room(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), **FAST) as r:
        member = await secure(r, "secure", trusting(tls_files))
        plain = await rc.connect("127.0.0.1", r.port, r.key, "plain", transport="ws")
        udp = await rc.connect("127.0.0.1", r.port, r.key, "udp", transport="udp")
        # the relay holds one TLS connection (the secure member's), the plain one is plain
        assert connections(r) == (1, 1)
        await exchange(member, plain)
        await exchange(member, udp)
        big = bytes(range(256)) * 60  # 15 KiB: several TLS records each way
        plain.send(big)
        got = await member.next_event_of(rc.Received, 3, lambda e: e.data == big)
        assert got.sender == plain.connection_id
        member.send(big)
        got = await plain.next_event_of(rc.Received, 3, lambda e: e.data == big)
        assert got.sender == member.connection_id
        # a GS2 game client (its own ws:// URL) in the same room, on the same port
        gs2 = await g.Gs2Client.join(r.port, r.key, tokens.mint(Ed25519PrivateKey.generate(), "gs2", 60))
        member.send(b"to a GS2 client too")
        got_gs2 = await gs2.next()
        while got_gs2.kind != g.BINARY_MESSAGE:  # the player table and join notices come first
            got_gs2 = await gs2.next()
        assert got_gs2.body == g.Relayed(member.connection_id, b"to a GS2 client too", ())
        assert connections(r) == (1, 2)
        assert not {k: v for k, v in drops(r).items() if k.startswith("tls")}
        await gs2.bye()
        await udp.close()
        await plain.close()
    # the room's end reaches the TLS member as CLOSING, through its close frame and close_notify
    closing = await member.next_event_of(rc.ClosingEvent, 3)
    assert closing.reason == CloseReason.SHUTDOWN


async def test_a_secure_member_resumes_after_its_connection_is_cut(tls_files: TlsFiles) -> None:
    async with room(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), **FAST) as r:
        a = await secure(r, "a", trusting(tls_files))
        b = await rc.connect("127.0.0.1", r.port, r.key, "b", transport="udp")
        cid = a.connection_id
        a.drop()
        await a.next_event_of(rc.Resumed, 3)
        assert a.connection_id == cid
        await exchange(a, b)
        await a.close()
        await b.close()


async def test_a_client_that_does_not_trust_the_certificate_gets_no_session(tls_files: TlsFiles) -> None:
    async with room(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), **FAST) as r:
        with pytest.raises(rc.ConnectError, match="certificate verify failed"):  # an unknown CA
            await secure(r, "x", True, reconnect=False)
        # the client refused with an alert: the failed handshake is counted, nothing else
        await eventually(lambda: drops(r).get("tls_handshake") == 1, 3, "the failed handshake counted")
        assert not r.relay.room.sessions
    elsewhere = make_tls_files(tls_files.ca.parent, ("elsewhere.example",), tag="-elsewhere")
    async with room(tls_cert=str(elsewhere.cert), tls_key=str(elsewhere.key), **FAST) as r:
        with pytest.raises(rc.ConnectError, match="certificate verify failed"):  # a trusted CA, another name
            await rc.connect(
                "localhost", r.port, r.key, "x", transport="ws", tls=trusting(elsewhere), reconnect=False
            )
        await eventually(lambda: drops(r).get("tls_handshake") == 1, 3, "the failed handshake counted")


async def test_garbage_after_a_handshake_byte_is_dropped_and_the_room_serves_on(tls_files: TlsFiles) -> None:
    async with room(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), **FAST) as r:
        reader, writer = await tls_open(r.port)
        writer.write(b"\x16\x03\x01\x00\x05hello, this is no ClientHello")
        assert await closed_by_relay(reader)
        writer.close()
        assert drops(r).get("tls_handshake") == 1
        # a handshake that completes, then an application-data record whose tag is wrong,
        # written under the TLS stream straight to its socket
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", r.port, ssl=trusting(tls_files), server_hostname="localhost"
        )
        sock = writer.get_extra_info("socket")
        forged = socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        forged.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
        forged.close()
        assert await closed_by_relay(reader)
        writer.close()
        await eventually(lambda: drops(r).get("tls_error") == 1, 3, "the forged record counted")
        a = await secure(r, "a", trusting(tls_files))
        b = await rc.connect("127.0.0.1", r.port, r.key, "b", transport="ws")
        await exchange(a, b)
        await a.close()
        await b.close()


async def test_tls_handshakes_over_the_rate_are_dropped_before_any_work(tls_files: TlsFiles) -> None:
    async with room(
        tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), tls_handshakes_per_second=1, **FAST
    ) as r:
        hello = b"\x16\x03\x01\x00\x05"  # a handshake record's header: enough to take a token
        peers = [await tls_open(r.port) for _ in range(3)]
        for _, writer in peers:
            writer.write(hello)
        # a burst of two, then the third over the rate: aborted at once
        assert await closed_by_relay(peers[2][0])
        assert drops(r).get("tls_rate_limited") == 1
        for _, writer in peers:
            writer.close()
        # plain WebSocket and UDP members are not held to it
        a = await rc.connect("127.0.0.1", r.port, r.key, "a", transport="ws")
        b = await rc.connect("127.0.0.1", r.port, r.key, "b", transport="udp")
        await exchange(a, b)
        await a.close()
        await b.close()


async def test_a_renewed_certificate_is_served_to_new_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_tls_files(tmp_path, tag="-1", days=2)
    monkeypatch.setattr(relay_tls, "RELOAD_CHECK", 0.0)  # look at the files at every connection
    async with room(tls_cert=str(first.cert), tls_key=str(first.key), **FAST) as r:
        # /metrics says when the certificate served expires (an alert's, before it does)
        assert 1.9 * DAY < expiry(r) - time.time() <= 2 * DAY
        a = await secure(r, "a", trusting(first))
        # a renewal half written: the relay keeps serving the certificate it has
        first.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ntruncated")
        b = await secure(r, "b", trusting(first))
        assert 1.9 * DAY < expiry(r) - time.time() <= 2 * DAY
        renewed = make_tls_files(tmp_path, tag="-2", days=90)
        first.cert.write_bytes(renewed.cert.read_bytes())
        first.key.write_bytes(renewed.key.read_bytes())
        c = await secure(r, "c", trusting(renewed))
        assert 89.9 * DAY < expiry(r) - time.time() <= 90 * DAY
        with pytest.raises(rc.ConnectError, match="certificate verify failed"):
            await rc.connect(
                "localhost", r.port, r.key, "d", transport="ws", tls=trusting(first), reconnect=False
            )
        await exchange(a, c)  # members of the old certificate's connections stay
        for x in (a, b, c):
            await x.close()


def test_a_certificate_without_its_key_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        RelayConfig(tls_cert="cert.pem")


def test_relay_serve_names_a_certificate_it_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.pem"
    status = serve_main(
        ["--room-key", generate_room_key(), "--tls-cert", str(missing), "--tls-key", str(missing)]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("relay serve: cannot load the TLS certificate") and str(missing) in err


async def test_relay_serve_serves_wss_on_its_port(tls_files: TlsFiles) -> None:
    """The relay as deployed (relay serve, on uvloop) with a certificate from its flags."""
    key = generate_room_key()
    proc, listening = await serve_process(
        key, "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key)
    )
    try:
        assert re.match(r"relay listening udp\+ws\+wss [\d.]+:\d+$", listening["message"]), listening
        port = listening["port"]
        a = await rc.connect("localhost", port, key, "a", transport="ws", tls=trusting(tls_files))
        b = await rc.connect("127.0.0.1", port, key, "b", transport="ws")
        await exchange(a, b)
        await a.close()
        await b.close()
    finally:
        proc.terminate()
        await proc.wait()


def _client_hello() -> bytes:
    """A real ClientHello, as a browser's first bytes on a wss:// connection."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@st.composite
def _tls_junk(draw: st.DrawFn) -> bytes:
    """What a broken or hostile client sends after the 0x16 that makes its connection TLS: a
    mutated ClientHello, or anything at all."""
    if draw(st.booleans()):
        return b"\x16" + draw(st.binary(max_size=600))
    hello = bytearray(_client_hello())
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(1, len(hello) - 1))
        hello[i] ^= draw(st.integers(1, 255))
    del hello[draw(st.integers(1, len(hello))) :]
    return bytes(hello) + draw(st.binary(max_size=64))


async def test_junk_on_a_tls_connection_never_reaches_the_room(tls_files: TlsFiles) -> None:
    """Generated streams over real sockets: each ends its own connection (closed or timed out),
    nothing escapes as an exception (the conftest fails on a logged error), and the room still
    serves a wss:// member and a plain one."""
    async with room(
        tls_cert=str(tls_files.cert), tls_key=str(tls_files.key), tls_handshakes_per_second=1000, **FAST
    ) as r:
        streams: list[bytes] = []

        @settings(max_examples=30, deadline=None, database=None, phases=[Phase.generate])
        @given(_tls_junk())
        def collect(data: bytes) -> None:
            streams.append(data)

        collect()
        for data in streams:
            reader, writer = await tls_open(r.port)
            writer.write(data)
            with contextlib.suppress(TimeoutError):  # a truncated hello waits for the rest
                await asyncio.wait_for(reader.read(), 0.05)
            writer.close()
        assert drops(r).get("internal_error", 0) == 0
        assert not r.relay.room.sessions
        a = await secure(r, "a", trusting(tls_files))
        b = await rc.connect("127.0.0.1", r.port, r.key, "b", transport="ws")
        await exchange(a, b)
        await a.close()
        await b.close()
