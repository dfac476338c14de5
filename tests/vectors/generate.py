"""Writes the protocol test vectors (tests/vectors/*.json) from fixed inputs.

Run `python -m tests.vectors.generate` from the repository root after a deliberate protocol
change; tests/protocol/test_vectors.py checks the code still reproduces every byte. All byte
strings are lowercase hex. In message arrays a msgpack `bin` is written {"bin": "<hex>"}, so
the JSON says which strings are `str` and which are `bin`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.protocol import keys
from relay.protocol import messages as m
from relay.protocol.constants import UDP_HELLO_PAD_TO, PacketType
from relay.protocol.packets import ClientHello, Sealer, make_accept, pack_header, verify_hello

HERE = Path(__file__).parent

ROOM_KEY = bytes(range(32))
CLIENT_PRIVATE = bytes(range(0x40, 0x60))
RELAY_PRIVATE = bytes(range(0x80, 0xA0))
SESSION_ID = 0x0A0B0C0D
RESUME_TOKEN = bytes.fromhex("a5" * 16)
COUNTER = 0x0102030405060708
REVISION = 2
"""docs/protocol.md's revision these vectors belong to (2: WELCOME parts are numbered)."""


def wire(value: Any) -> Any:
    """A msgpack value as JSON: bytes become {"bin": hex}, tuples become lists."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, list | tuple):
        return [wire(v) for v in value]
    return value


def client_messages() -> list[tuple[str, Any]]:
    return [
        ("JOIN", m.Join("alice", b"\x01\x02", "tok.sig", RESUME_TOKEN)),
        ("JOIN (no token, no resume)", m.Join("bob")),
        ("SEND to everyone", m.Send(b"hello", None)),
        ("SEND to targets", m.Send(b"\x00\xff", (2, 300))),
        ("PROFILE", m.SetProfile(b"level=3")),
        ("PING", m.Ping(7, 1_700_000_000_123_456)),
        ("BYE", m.Bye()),
        ("PONG (path challenge answer)", m.PathPong(0xFEDCBA9876543210)),
        ("SYNC", m.Sync()),
    ]


def relay_messages() -> list[tuple[str, Any]]:
    limits = m.Limits()
    return [
        (
            "WELCOME",
            m.Welcome(
                3, RESUME_TOKEN, limits, (m.Member(1, "alice", b"\x01"), m.Member(2, "bob", b"")), False
            ),
        ),
        ("WELCOME (part 1 of 2, resumed)", m.Welcome(3, RESUME_TOKEN, limits, (), True, True, 0, 2)),
        ("JOIN", m.MemberJoined(4, "carol", b"p")),
        ("LEAVE", m.MemberLeft(4, 2)),
        ("PROFILE", m.MemberProfile(1, b"level=4")),
        ("MESSAGE", m.Message(1, b"hello")),
        ("PONG", m.Pong(7, 1_700_000_000_123_456)),
        ("ERROR", m.Error(2, "rate limited")),
        ("CLOSING", m.Closing(1, "room deleted")),
        ("PING (path challenge)", m.PathPing(0xFEDCBA9876543210)),
    ]


def message_vectors() -> dict[str, Any]:
    import msgpack

    def entries(items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for name, message in items:
            encoded = message.encode()
            out.append(
                {
                    "name": name,
                    "class": type(message).__name__,
                    "array": wire(msgpack.unpackb(encoded, raw=False)),
                    "msgpack": encoded.hex(),
                }
            )
        return out

    coalesced = m.Send(b"a").encode() + m.Ping(1, 2).encode()
    return {
        "description": "Each message's msgpack encoding (docs/protocol.md section 5). `array` is the "
        "decoded msgpack array; bin values are {'bin': hex}. `coalesced` is one DATA plaintext "
        "holding two messages back to back.",
        "client_to_relay": entries(client_messages()),
        "relay_to_client": entries(relay_messages()),
        "coalesced": {"messages": ["SEND [2, bin 'a', nil]", "PING [4, 1, 2]"], "plaintext": coalesced.hex()},
    }


def key_vectors() -> dict[str, Any]:
    client = X25519PrivateKey.from_private_bytes(CLIENT_PRIVATE)
    relay = X25519PrivateKey.from_private_bytes(RELAY_PRIVATE)
    psk = keys.derive_psk(ROOM_KEY)
    e_c = keys.public_bytes(client)
    e_s = keys.public_bytes(relay)
    dh = keys.x25519(client, e_s)
    k_c2s, k_s2c = keys.derive_session_keys(psk, dh, e_c, e_s)
    return {
        "description": "Key schedule (docs/protocol.md sections 2 and 3) from fixed inputs.",
        "room_key": ROOM_KEY.hex(),
        "room_key_text": keys.encode_room_key(ROOM_KEY),
        "psk": psk.hex(),
        "client_private": CLIENT_PRIVATE.hex(),
        "client_public": e_c.hex(),
        "hello_key": keys.derive_hello_key(psk, e_c).hex(),
        "relay_private": RELAY_PRIVATE.hex(),
        "relay_public": e_s.hex(),
        "dh": dh.hex(),
        "k_c2s": k_c2s.hex(),
        "k_s2c": k_s2c.hex(),
    }


def header_vectors() -> dict[str, Any]:
    return {
        "description": "The 16-byte header, struct '!BBHIQ' (docs/protocol.md section 4).",
        "fields": {
            "version": 1,
            "type": 3,
            "flags": 0,
            "session_id": SESSION_ID,
            "counter": 0x0102030405060708,
        },
        "hex": pack_header(PacketType.DATA, SESSION_ID, 0x0102030405060708).hex(),
        "nonce_hex": (b"\x00" * 4 + (0x0102030405060708).to_bytes(8, "big")).hex(),
    }


def handshake_vectors() -> dict[str, Any]:
    psk = keys.derive_psk(ROOM_KEY)
    client_key = X25519PrivateKey.from_private_bytes(CLIENT_PRIVATE)
    relay_key = X25519PrivateKey.from_private_bytes(RELAY_PRIVATE)
    hello = ClientHello.create(psk, pad_to=UDP_HELLO_PAD_TO, private=client_key)
    hello_ws = ClientHello.create(psk, pad_to=0, private=client_key)
    accept, session = make_accept(psk, verify_hello(psk, hello.packet), SESSION_ID, private=relay_key)
    join = m.Join("alice", b"\x01\x02", None, None).encode()
    welcome = m.Welcome(2, RESUME_TOKEN, m.Limits(), (m.Member(1, "bob", b""),), False, False).encode()
    join_packet = Sealer(session.k_c2s, SESSION_ID).seal(join)
    welcome_packet = Sealer(session.k_s2c, SESSION_ID).seal(welcome)
    return {
        "description": "One whole UDP session start (docs/protocol.md section 6) with the inputs of "
        "keys.json: HELLO padded to 1200 bytes, ACCEPT, the client's first DATA (JOIN, counter 1) "
        "and the relay's first DATA (WELCOME, counter 1). hello_ws is the unpadded WebSocket HELLO.",
        "room_key": ROOM_KEY.hex(),
        "client_private": CLIENT_PRIVATE.hex(),
        "relay_private": RELAY_PRIVATE.hex(),
        "session_id": SESSION_ID,
        "hello_pad_to": UDP_HELLO_PAD_TO,
        "hello": hello.packet.hex(),
        "hello_ws": hello_ws.packet.hex(),
        "accept": accept.hex(),
        "join_plaintext": join.hex(),
        "join_packet": join_packet.hex(),
        "welcome_plaintext": welcome.hex(),
        "welcome_packet": welcome_packet.hex(),
    }


def build() -> dict[str, dict[str, Any]]:
    return {
        name: {"revision": REVISION, **content}
        for name, content in {
            "keys.json": key_vectors(),
            "header.json": header_vectors(),
            "messages.json": message_vectors(),
            "handshake.json": handshake_vectors(),
        }.items()
    }


def main() -> None:
    for name, content in build().items():
        (HERE / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
