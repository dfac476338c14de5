"""The TypeScript client (clients/js) in Node: the protocol vectors under Node's test runner, then
the client against a real relay (relay.embedded.room) with Python clients in the same room."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay.client as rc
import relay.embedded
from loadtest.certs import make_tls_files
from relay.protocol import tokens
from relay.protocol.constants import CloseReason, ErrorCode, LeaveReason
from relay.protocol.keys import generate_room_key
from tests.js.helpers import CutProxy, JsError, JsRemote, hexs, tls_handshakes_failed
from tests.server.helpers import connections

pytestmark = pytest.mark.timeout(60)
FAST = {"keepalive_timeout": 1.0, "resume_grace": 1.5}


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


@pytest.fixture
async def js(node: list[str], js_build: Path) -> AsyncIterator[JsRemote]:
    async with JsRemote.run(node, js_build / "test" / "node-client.js") as remote:
        yield remote


def test_vectors_and_session_logic_under_node_test_runner(node: list[str], js_build: Path) -> None:
    """The byte vectors, and the client's session logic against an in-process fake relay."""
    tests = [str(js_build / "test" / name) for name in ("vectors.test.js", "session.test.js")]
    command = [*node, "--test", *tests]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=45, check=False)
    except subprocess.TimeoutExpired as hung:  # each test has 15 s (session.test.ts): what finished
        parts = (hung.stdout, hung.stderr)  # bytes, as the runner read them before the kill
        out = "".join(p.decode(errors="replace") if isinstance(p, bytes) else p or "" for p in parts)
        pytest.fail(f"node --test did not end in 45 s; its output so far:\n{out}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout and "# pass 25" in run.stdout, run.stdout


async def test_node_and_python_clients_share_a_room(js: JsRemote) -> None:
    async with relay.embedded.room(**FAST) as room:
        py = await rc.connect(room.host, room.port, room.key, "py", b"py 1", transport="udp", timeout=3)
        url = ws_url(room.port)
        alice = await js.call(
            "connect", name="alice", url=url, key=room.key, userId="alice", profile=hexs("a 1")
        )
        a, p = alice["connectionId"], py.connection_id
        assert alice["members"] == [[p, "py", hexs("py 1")]]
        assert alice["limits"]["maxPlayers"] == 32 and alice["limits"]["keepaliveTimeoutMs"] == 1000
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(a, "alice", b"a 1")
        bob = await js.call("connect", name="bob", url=url, key=room.key, userId="bob")
        b = bob["connectionId"]
        assert sorted(m[0] for m in bob["members"]) == [p, a]
        await js.expect(event="joined", client="alice", connectionId=b, userId="bob", profile="")
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(b, "bob", b"")

        # broadcasts, both ways
        await js.call("send", name="alice", data=hexs("from alice"))
        got = await py.next_event_of(rc.Received, 3, lambda e: e.data == b"from alice")
        assert got == rc.Received(a, b"from alice")
        await js.expect(event="message", client="bob", sender=a, data=hexs("from alice"))
        py.send(b"from py")
        for name in ("alice", "bob"):
            await js.expect(event="message", client=name, sender=p, data=hexs("from py"))

        # targeted, both ways; then a broadcast from the same sender shows the others are past it
        py.send(b"py to alice", targets=[a])
        await js.call("send", name="bob", data=hexs("bob to py"), targets=[p])
        await js.expect(event="message", client="alice", sender=p, data=hexs("py to alice"))
        got = await py.next_event_of(rc.Received, 3, lambda e: e.data == b"bob to py")
        assert got == rc.Received(b, b"bob to py")
        py.send(b"after")
        await js.call("send", name="bob", data=hexs("after"))
        await js.expect(event="message", client="bob", sender=p, data=hexs("after"))
        await js.expect(event="message", client="alice", sender=b, data=hexs("after"))
        assert not js.seen(client="bob", data=hexs("py to alice"))
        assert not js.seen(client="alice", data=hexs("bob to py"))

        # profiles, both ways
        await js.call("updateProfile", name="alice", profile=hexs("a 2"))
        assert await py.next_event_of(rc.ProfileChanged, 3) == rc.ProfileChanged(a, b"a 2")
        await js.expect(event="profile", client="bob", connectionId=a, userId="alice", profile=hexs("a 2"))
        py.update_profile(b"py 2")
        for name in ("alice", "bob"):
            await js.expect(event="profile", client=name, connectionId=p, userId="py", profile=hexs("py 2"))
        assert [p, "py", hexs("py 2")] in (await js.call("state", name="bob"))["members"]

        # the keepalive: 2.5 keepalive timeouts with nothing to send, and nobody is dropped
        await asyncio.sleep(2.5)
        assert set(py.members) == {a, b}
        state = await js.call("state", name="alice")
        assert sorted(m[0] for m in state["members"]) == [p, b]
        assert state["rtt"] is not None and 0 <= state["rtt"] < 1000
        assert state["stats"]["dropped"] == 0 and state["stats"]["packetsIn"] > 0

        # leaving: BYE is LEAVE reason 1 for everyone
        await js.call("close", name="bob")
        assert await py.next_event_of(rc.Left, 3) == rc.Left(b, LeaveReason.LEFT)
        await js.expect(event="left", client="alice", connectionId=b, userId="bob", reason=LeaveReason.LEFT)
        await py.close()
        await js.expect(event="left", client="alice", connectionId=p, reason=LeaveReason.LEFT)
        assert not js.seen(event="reconnecting") and not js.seen(event="error")


async def test_resume_after_the_connection_is_cut(js: JsRemote) -> None:
    async with relay.embedded.room(**FAST) as room, CutProxy(room.port) as proxy:
        py = await rc.connect(room.host, room.port, room.key, "py", transport="ws", timeout=3)
        a = (await js.call("connect", name="a", url=ws_url(proxy.port), key=room.key, userId="a"))[
            "connectionId"
        ]
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(a, "a", b"")

        proxy.cut()  # within the resume grace: the same seat, and the others notice nothing
        resumed = await js.expect(event="resumed", client="a", timeout=5)
        assert resumed["resumed"] is True and resumed["connectionId"] == a
        assert js.seen(event="reconnecting", client="a", attempt=1)
        await js.call("send", name="a", data=hexs("back"))
        assert await py.next_event_of(rc.Received, 3) == rc.Received(a, b"back")
        py.send(b"welcome back")
        await js.expect(event="message", client="a", sender=py.connection_id, data=hexs("welcome back"))
        assert not [e for e in py.drain_events() if isinstance(e, rc.Left | rc.Joined)]

        proxy.refusing = True  # past the grace: the seat is gone, the client joins afresh
        proxy.cut()
        assert await py.next_event_of(rc.Left, 5) == rc.Left(a, LeaveReason.DISCONNECTED)
        proxy.refusing = False
        again = await js.expect(event="resumed", client="a", resumed=False, timeout=8)
        assert again["previousConnectionId"] == a and again["connectionId"] > a
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(again["connectionId"], "a", b"")
        py.send(b"hello again")
        await js.expect(event="message", client="a", data=hexs("hello again"))
        assert not js.seen(event="closed")
        await py.close()


async def test_wrong_key_bad_tokens_and_a_full_room_are_refused(js: JsRemote) -> None:
    signing = Ed25519PrivateKey.generate()
    async with relay.embedded.room(token_public_key=tokens.public_key_to_text(signing.public_key())) as room:
        url = ws_url(room.port)
        with pytest.raises(JsError) as wrong:
            await js.call("connect", name="x", url=url, key=generate_room_key(), userId="u")
        assert wrong.value.name == "ConnectionError" and "1008" in str(wrong.value)  # no answer but the close
        with pytest.raises(JsError) as malformed:
            await js.call("connect", name="x", url=url, key="not-a-room-key", userId="u")
        assert malformed.value.name == "TypeError"
        with pytest.raises(JsError) as missing:
            await js.call("connect", name="x", url=url, key=room.key, userId="u")
        assert (missing.value.name, missing.value.code) == ("JoinRefusedError", ErrorCode.UNAUTHORIZED)
        with pytest.raises(JsError) as other:
            token = tokens.mint(signing, "someone-else")
            await js.call("connect", name="x", url=url, key=room.key, userId="u", accessToken=token)
        assert (other.value.name, other.value.code) == ("JoinRefusedError", ErrorCode.UNAUTHORIZED)
        ok = await js.call(
            "connect", name="u", url=url, key=room.key, userId="u", accessToken=tokens.mint(signing, "u")
        )
        py = await rc.connect(
            room.host, room.port, room.key, "v", transport="udp", access_token=tokens.mint(signing, "v")
        )
        assert set(py.members) == {ok["connectionId"]}
        await py.close()
    async with relay.embedded.room(max_players=1) as room:
        await js.call("connect", name="first", url=ws_url(room.port), key=room.key, userId="first")
        with pytest.raises(JsError) as full:
            await js.call("connect", name="second", url=ws_url(room.port), key=room.key, userId="second")
        assert (full.value.name, full.value.code) == ("JoinRefusedError", ErrorCode.ROOM_FULL)


async def test_closing_ends_the_client_without_a_resume(js: JsRemote) -> None:
    async with relay.embedded.room() as room:
        await js.call("connect", name="a", url=ws_url(room.port), key=room.key, userId="a")
        await room.relay.close(CloseReason.SHUTDOWN, "bye")
        await js.expect(event="closing", client="a", reason=CloseReason.SHUTDOWN, text="bye")
        closed = await js.expect(event="closed", client="a")
        assert "bye" in closed["reason"]
        assert (await js.call("state", name="a"))["closed"] is True
        assert not js.seen(event="reconnecting")


async def test_a_seat_resumed_elsewhere_is_not_taken_back(js: JsRemote) -> None:
    """Two clients with one resume token (a duplicated tab): the relay moves the seat to the newer
    and closes the older with 1000 "resumed elsewhere"; that one ends, rather than resume and
    take the seat back, which the other would take back, without end."""
    async with relay.embedded.room(**FAST) as room:
        url = ws_url(room.port)
        a = await js.call("connect", name="a", url=url, key=room.key, userId="u")
        b = await js.call(
            "connect", name="b", url=url, key=room.key, userId="u", resumeToken=a["resumeToken"]
        )
        assert b["resumed"] is True and b["connectionId"] == a["connectionId"]
        closed = await js.expect(event="closed", client="a", timeout=5)
        assert closed["reason"] == "resumed elsewhere"
        await asyncio.sleep(1.0)
        assert not js.seen(event="reconnecting") and not js.seen(event="resumed")
        state = await js.call("state", name="b")
        assert state["closed"] is False and state["connectionId"] == a["connectionId"]


def node_env(trusted: list[Path]) -> dict[str, str]:
    """This environment for a Node process that trusts the system's CAs and `trusted` alone
    (NODE_EXTRA_CA_CERTS, which Node's TLS, its WebSocket's included, adds to the default store)."""
    dropped = ("NODE_EXTRA_CA_CERTS", "NODE_TLS_REJECT_UNAUTHORIZED")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if trusted:
        bundle = trusted[0].parent / "trusted-cas.pem"
        bundle.write_bytes(b"".join(ca.read_bytes() for ca in trusted))
        env["NODE_EXTRA_CA_CERTS"] = str(bundle)
    return env


async def refused_at_once(js: JsRemote, host: str, port: int, key: str) -> None:
    """connect() over wss:// fails as the connection does, well within its 10 s timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(JsError) as refused:
        args = {"host": host, "port": port, "tls": True, "key": key, "userId": "x", "timeoutMs": 10_000}
        await js.call("connect", timeout=15, name="x", **args)
    assert refused.value.name == "ConnectionError", refused.value
    assert "connection failed" in str(refused.value), refused.value
    assert loop.time() - started < 3, "connect() waited for its timeout"


async def test_node_client_over_wss_to_a_relay_with_a_certificate(
    node: list[str], js_build: Path, tmp_path: Path
) -> None:
    """relayUrl(host, port, {tls: true}) reaches a relay that terminates TLS, with its certificate
    verified: a Node trusting the test CA joins (beside a plain ws:// member on the same port)
    and resumes; one that does not trust it, or reaches a certificate for another name, gets no
    session, and the relay counts the handshake its certificate failed."""
    script = js_build / "test" / "node-client.js"
    files = make_tls_files(tmp_path)
    elsewhere = make_tls_files(tmp_path, ("elsewhere.example",), tag="-elsewhere")
    tls = {"tls_cert": str(files.cert), "tls_key": str(files.key)}
    async with (
        JsRemote.run(node, script, node_env([files.ca, elsewhere.ca])) as js,
        relay.embedded.room(**tls, **FAST) as room,
        CutProxy(room.port) as proxy,
    ):
        py = await rc.connect("127.0.0.1", room.port, room.key, "py", transport="ws", timeout=3)
        secure = await js.call(
            "connect", name="s", host="localhost", port=room.port, tls=True, key=room.key, userId="s"
        )
        s, p = secure["connectionId"], py.connection_id
        assert secure["members"] == [[p, "py", ""]]
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(s, "s", b"")
        # the relay holds one TLS connection (the Node client's) beside the plain one
        assert connections(room) == (1, 1)
        await js.call("send", name="s", data=hexs("over wss"))
        assert await py.next_event_of(rc.Received, 3) == rc.Received(s, b"over wss")
        big = bytes(range(256)) * 60  # 15 KiB: several TLS records
        py.send(big)
        await js.expect(event="message", client="s", sender=p, data=big.hex())

        # a resume is over wss:// too: TLS through a proxy whose connection is cut
        via = await js.call(
            "connect", name="r", host="localhost", port=proxy.port, tls=True, key=room.key, userId="r"
        )
        r = via["connectionId"]
        assert await py.next_event_of(rc.Joined, 3) == rc.Joined(r, "r", b"")
        proxy.cut()
        resumed = await js.expect(event="resumed", client="r", timeout=5)
        assert resumed["resumed"] is True and resumed["connectionId"] == r
        py.send(b"welcome back", targets=[r])
        await js.expect(event="message", client="r", sender=p, data=hexs("welcome back"))
        assert connections(room)[0] == 2
        await tls_handshakes_failed(room, 0)

        # without the CA: no session. The client refused the certificate (the relay counts the
        # handshake that failed), at once: not the join's timeout
        async with JsRemote.run(node, script, node_env([])) as untrusting:
            await refused_at_once(untrusting, "localhost", room.port, room.key)
        await tls_handshakes_failed(room, 1)
        assert sorted(m.user_id for m in py.members.values()) == ["r", "s"]
        await py.close()

    # a trusted CA, but a certificate for another name than the one connected to
    async with relay.embedded.room(tls_cert=str(elsewhere.cert), tls_key=str(elsewhere.key)) as room:
        async with JsRemote.run(node, script, node_env([files.ca, elsewhere.ca])) as js:
            await refused_at_once(js, "localhost", room.port, room.key)
        await tls_handshakes_failed(room, 1)
        assert not room.relay.room.sessions
