"""The code reproduces tests/vectors/*.json byte for byte, and decodes them.

The key schedule is also recomputed with a stdlib HKDF and the packets with raw AES-GCM, so a
vector file and the code cannot drift together unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.protocol import keys
from relay.protocol import messages as m
from relay.protocol.constants import HEADER_SIZE, PacketType
from relay.protocol.packets import (
    ClientHello,
    Opener,
    Sealer,
    make_accept,
    pack_header,
    parse_header,
    verify_hello,
)
from tests.vectors import generate

VECTORS = Path(__file__).parents[1] / "vectors"


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def stdlib_hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def unwire(value: Any) -> Any:
    if isinstance(value, dict):
        return h(value["bin"])
    if isinstance(value, list):
        return [unwire(v) for v in value]
    return value


def test_files_are_what_the_generator_writes() -> None:
    for name, content in generate.build().items():
        assert load(name) == content, f"{name} is stale: run python -m tests.vectors.generate"


def test_key_schedule() -> None:
    v = load("keys.json")
    room_key = h(v["room_key"])
    assert keys.decode_room_key(v["room_key_text"]) == room_key
    assert keys.decode_room_key(v["room_key_text"] + "=") == room_key
    psk = stdlib_hkdf(b"", room_key, b"gs2relay/1 psk", 32)
    assert keys.derive_psk(room_key) == psk == h(v["psk"])
    client = X25519PrivateKey.from_private_bytes(h(v["client_private"]))
    relay = X25519PrivateKey.from_private_bytes(h(v["relay_private"]))
    e_c, e_s = keys.public_bytes(client), keys.public_bytes(relay)
    assert (e_c, e_s) == (h(v["client_public"]), h(v["relay_public"]))
    hello_key = stdlib_hkdf(e_c, psk, b"gs2relay/1 hello", 32)
    assert keys.derive_hello_key(psk, e_c) == hello_key == h(v["hello_key"])
    dh = relay.exchange(X25519PublicKey.from_public_bytes(e_c))
    assert keys.x25519(client, e_s) == dh == h(v["dh"])
    okm = stdlib_hkdf(psk, dh, b"gs2relay/1 session" + e_c + e_s, 64)
    assert (
        keys.derive_session_keys(psk, dh, e_c, e_s) == (okm[:32], okm[32:]) == (h(v["k_c2s"]), h(v["k_s2c"]))
    )


def test_header() -> None:
    v = load("header.json")
    f = v["fields"]
    raw = h(v["hex"])
    assert pack_header(f["type"], f["session_id"], f["counter"]) == raw
    assert struct.pack("!BBHIQ", f["version"], f["type"], f["flags"], f["session_id"], f["counter"]) == raw
    header = parse_header(raw + bytes(16))
    assert (header.version, header.type, header.flags, header.session_id, header.counter) == tuple(f.values())
    assert h(v["nonce_hex"]) == b"\x00" * 4 + raw[8:16]


@pytest.mark.parametrize(
    ("direction", "decode", "expected"),
    [
        ("client_to_relay", m.decode_client, generate.client_messages()),
        ("relay_to_client", m.decode_relay, generate.relay_messages()),
    ],
)
def test_messages(direction: str, decode: Any, expected: list[tuple[str, Any]]) -> None:
    entries = load("messages.json")[direction]
    assert [e["name"] for e in entries] == [name for name, _ in expected]
    for entry, (_, message) in zip(entries, expected, strict=True):
        raw = h(entry["msgpack"])
        assert message.encode() == raw, entry["name"]
        assert msgpack.unpackb(raw, raw=False) == unwire(entry["array"])
        [decoded] = decode(raw)
        assert decoded == message and type(decoded).__name__ == entry["class"]


def test_send_fast_path_matches_the_vectors() -> None:
    for entry in load("messages.json")["client_to_relay"]:
        if entry["class"] == "Send":
            send = m.decode_client(h(entry["msgpack"]))[0]
            assert m.encode_send(send.data, send.targets) == h(entry["msgpack"])


def test_coalesced_plaintext() -> None:
    raw = h(load("messages.json")["coalesced"]["plaintext"])
    assert m.decode_client(raw) == [m.Send(b"a"), m.Ping(1, 2)]


def test_whole_handshake() -> None:
    v = load("handshake.json")
    psk = keys.derive_psk(h(v["room_key"]))
    client_key = X25519PrivateKey.from_private_bytes(h(v["client_private"]))
    relay_key = X25519PrivateKey.from_private_bytes(h(v["relay_private"]))
    hello = ClientHello.create(psk, pad_to=v["hello_pad_to"], private=client_key)
    assert hello.packet == h(v["hello"]) and len(hello.packet) == v["hello_pad_to"]
    assert ClientHello.create(psk, private=client_key).packet == h(v["hello_ws"])
    # HELLO by hand: header, e_c, AES-GCM(hello_key, zero nonce, zero padding, aad = header || e_c)
    e_c = keys.public_bytes(client_key)
    head = pack_header(PacketType.HELLO, 0, 0) + e_c
    padding = bytes(v["hello_pad_to"] - 64)
    assert head + AESGCM(keys.derive_hello_key(psk, e_c)).encrypt(bytes(12), padding, head) == h(v["hello"])
    assert verify_hello(psk, h(v["hello"])) == e_c

    accept, relay_keys = make_accept(psk, e_c, v["session_id"], private=relay_key)
    assert accept == h(v["accept"])
    client_keys = hello.finish(h(v["accept"]))
    assert client_keys == relay_keys and client_keys.session_id == v["session_id"]

    join_plain = h(v["join_plaintext"])
    assert m.decode_client(join_plain) == [m.Join("alice", b"\x01\x02")]
    join_packet = h(v["join_packet"])
    assert Sealer(client_keys.k_c2s, v["session_id"]).seal(join_plain) == join_packet
    header = parse_header(join_packet)
    assert (header.type, header.session_id, header.counter) == (PacketType.DATA, v["session_id"], 1)
    nonce = bytes(4) + (1).to_bytes(8, "big")
    aad = join_packet[:HEADER_SIZE]
    assert aad + AESGCM(client_keys.k_c2s).encrypt(nonce, join_plain, aad) == join_packet
    assert Opener(relay_keys.k_c2s).open(join_packet, header.counter) == join_plain

    welcome_packet = h(v["welcome_packet"])
    assert Sealer(relay_keys.k_s2c, v["session_id"]).seal(h(v["welcome_plaintext"])) == welcome_packet
    opened = Opener(client_keys.k_s2c, strict=True).open(welcome_packet, parse_header(welcome_packet).counter)
    [welcome] = m.decode_relay(opened)
    assert welcome == m.Welcome(2, bytes.fromhex("a5" * 16), m.Limits(), (m.Member(1, "bob", b""),))
