"""relay/protocol/gs2: the schema against the research note's field tables, the note's byte
vectors (tests/vectors/gs2-client-wire.json), the hand-built Containers against protobuf's own
serialization, and the decoder's refusals."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.any_pb2 import Any
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import messages as m
from relay.protocol.constants import ErrorCode, LeaveReason
from relay.protocol.gs2 import message_pb2 as pb
from relay.protocol.gs2 import relay_pb2, wire

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "gs2-client-wire.json").read_text())
KEY = VECTORS["key"].encode()
SIGNER = wire.Signer(KEY)


def sign(key: bytes, value: bytes) -> bytes:
    """The reference: the standard library's HMAC-SHA256."""
    return hmac.new(key, value, hashlib.sha256).digest()


def decode(data: bytes, key: bytes, max_size: int) -> wire.ClientMessage:
    return wire.decode(data, wire.Signer(key), max_size)


h = bytes.fromhex

# The note's section 3, field by field: message -> [(name, number, type, repeated)]; the type is
# the scalar's protobuf name or the message/enum type's full name.
SCHEMA = {
    "Container": [
        ("messageType", 1, "Container.MessageType", False),
        ("payload", 2, "google.protobuf.Any", False),
        ("signature", 3, "bytes", False),
        ("sequenceNumber", 4, "uint32", False),
        ("lifeTimeMilliSeconds", 5, "uint32", False),
    ],
    "RUDPSendContainer": [
        ("connectionId", 1, "uint32", False),
        ("secret", 2, "uint32", False),
        ("packetNumber", 3, "uint32", False),
        ("container", 4, "Container", False),
    ],
    "RUDPReceiveContainer": [
        ("lastReceivePacketNumber", 1, "uint32", False),
        ("receiveMessageBitFlags", 2, "uint32", False),
        ("container", 3, "Container", False),
    ],
    "Player": [
        ("connectionId", 1, "uint32", False),
        ("userId", 2, "string", False),
        ("profile", 3, "bytes", False),
    ],
    "HelloRequest": [("accessToken", 1, "string", False), ("myProfile", 2, "bytes", False)],
    "HelloResult": [
        ("myProfile", 1, "Player", False),
        ("players", 2, "Player", True),
        ("secret", 3, "uint32", False),
    ],
    "ByeRequest": [],
    "UpdateProfileRequest": [("myProfile", 1, "bytes", False)],
    "JoinNotification": [("joinPlayer", 1, "Player", False)],
    "LeaveNotification": [("leavePlayer", 1, "Player", False)],
    "UpdateProfileNotification": [("updatePlayer", 1, "Player", False)],
    "BinaryMessage": [("data", 1, "bytes", False)],
    "Error": [
        ("component", 1, "string", False),
        ("statusCode", 2, "uint32", False),
        ("message", 3, "string", False),
    ],
    "RelayBinaryMessage": [
        ("connectionId", 1, "uint32", False),
        ("data", 2, "bytes", False),
        ("targetConnectionId", 3, "uint32", True),
    ],
}
MESSAGE_TYPES = {
    "HELLO_REQUEST": 0,
    "HELLO_RESULT": 1,
    "BYE_REQUEST": 2,
    "UPDATE_PROFILE_REQUEST": 268435456,
    "JOIN_NOTIFICATION": 536870912,
    "LEAVE_NOTIFICATION": 536870913,
    "UPDATE_PROFILE_NOTIFICATION": 536870914,
    "BINARY_MESSAGE": 805306368,
    "ERROR": 2147483647,
}
SERVER_NAMES = {
    pb.Container.HELLO_RESULT: "HelloResult",
    pb.Container.JOIN_NOTIFICATION: "JoinNotification",
    pb.Container.LEAVE_NOTIFICATION: "LeaveNotification",
    pb.Container.UPDATE_PROFILE_NOTIFICATION: "UpdateProfileNotification",
    pb.Container.BINARY_MESSAGE: "BinaryMessage",
    pb.Container.ERROR: "Error",
}
_SCALARS = {
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_STRING: "string",
}


def _type_name(f: FieldDescriptor) -> str:
    if f.message_type is not None:
        return f.message_type.full_name
    if f.enum_type is not None:
        return f.enum_type.full_name
    return _SCALARS[f.type]


def test_the_schema_is_the_notes() -> None:
    files = {"message.proto": pb.DESCRIPTOR, "relay.proto": relay_pb2.DESCRIPTOR}
    found = {}
    for name, file in files.items():
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        assert proto.syntax == "proto3" and file.package == "", name
        assert file.GetOptions().java_package == "io.gs2.realtime.message"
        assert file.GetOptions().csharp_namespace == "Gs2.Gs2Realtime.Message"
        for message in file.message_types_by_name.values():
            found[message.full_name] = [
                (f.name, f.number, _type_name(f), f.is_repeated) for f in message.fields
            ]
    assert found == SCHEMA
    enum = pb.Container.DESCRIPTOR.enum_types_by_name["MessageType"]
    assert {v.name: v.number for v in enum.values} == MESSAGE_TYPES
    assert [d.name for d in pb.DESCRIPTOR.dependencies] == ["google/protobuf/any.proto"]


def test_message_type_ids_and_their_bytes() -> None:
    for name, number, field_bytes in VECTORS["message_types"]:
        assert getattr(pb.Container, name) == number == MESSAGE_TYPES[name]
        assert pb.Container(messageType=number).SerializeToString() == h(field_bytes)


def test_vector_hello_request() -> None:
    v = VECTORS["hello_request"]
    value = pb.HelloRequest(accessToken=v["access_token"], myProfile=h(v["my_profile"])).SerializeToString()
    assert value == h(v["value"]) and sign(KEY, value) == h(v["hmac"])
    client = pb.Container(
        payload=Any(type_url="type.googleapis.com", value=value), signature=sign(KEY, value)
    ).SerializeToString()
    assert client == h(v["container"]) and len(client) == 68
    assert decode(client, KEY, 1000) == wire.Hello("tok", b"\x01\x02")


def test_vector_relay_send() -> None:
    v = VECTORS["relay_send"]
    inner = relay_pb2.RelayBinaryMessage(
        data=h(v["data"]), targetConnectionId=v["targets"]
    ).SerializeToString()
    assert inner == h(v["relay_binary_message"])
    value = pb.BinaryMessage(data=inner).SerializeToString()
    assert value == h(v["value"])
    client = pb.Container(
        messageType=pb.Container.BINARY_MESSAGE,
        payload=Any(type_url="type.googleapis.com", value=value),
        signature=sign(KEY, value),
    ).SerializeToString()
    assert len(client) == v["container_length"] and client.startswith(h(v["container_head"]) + value)
    assert decode(client, KEY, 1000) == m.Send(b"hi", (2, 3))


def test_vector_relayed_copy() -> None:
    """The note's server copy: the same value and signature from the relay's encoder; the
    relay's type URL names the message (the note's example has the bare prefix)."""
    v = VECTORS["relayed_copy"]
    value = wire.relay_value(v["sender"], h(v["data"]))
    assert value == h(v["value"]) and value[2:] == h(v["relay_binary_message"])
    assert sign(KEY, value) == h(v["hmac"])
    bare = pb.Container(
        messageType=pb.Container.BINARY_MESSAGE,
        payload=Any(type_url="type.googleapis.com", value=value),
        signature=h(v["hmac"]),
        sequenceNumber=v["sequence"],
        lifeTimeMilliSeconds=v["lifetime_ms"],
    ).SerializeToString()
    assert len(bare) == v["container_length"]
    assert bare.startswith(h(v["container_head"])) and bare.endswith(h(v["container_tail"]))
    encoder = wire.Encoder(VECTORS["key"], started=100.0)
    recipient = wire.Recipient(encoder, "me", b"")
    recipient.seq = v["sequence"] - 1
    (ours,) = recipient.containers(
        [m.encode_message(v["sender"], h(v["data"]))], 100.0 + v["lifetime_ms"] / 1000
    )
    parsed = pb.Container.FromString(ours)
    assert parsed.payload.type_url == "type.googleapis.com/BinaryMessage"
    assert (parsed.payload.value, parsed.signature) == (value, h(v["hmac"]))
    assert ours.endswith(h(v["container_tail"]))


def test_vector_bye_request() -> None:
    v = VECTORS["bye_request"]
    signature = sign(KEY, b"")
    assert signature.startswith(h(v["hmac_head"])) and signature.endswith(h(v["hmac_tail"]))
    client = pb.Container(
        messageType=pb.Container.BYE_REQUEST,
        payload=Any(type_url="type.googleapis.com"),
        signature=signature,
    ).SerializeToString()
    assert len(client) == v["container_length"] and client == h(v["container_head"]) + signature
    assert decode(client, KEY, 1000) == m.Bye()


def _library(kind: int, value: bytes, seq: int, lifetime: int) -> bytes:
    """The Container protobuf's own serializer makes for what the relay sends."""
    return pb.Container(
        messageType=kind,
        payload=Any(type_url="type.googleapis.com/" + SERVER_NAMES[kind], value=value),
        signature=sign(KEY, value),
        sequenceNumber=seq,
        lifeTimeMilliSeconds=lifetime,
    ).SerializeToString()


def _player(cid: int, user: str, profile: bytes) -> pb.Player:
    return pb.Player(connectionId=cid, userId=user, profile=profile)


@settings(max_examples=200, deadline=None)
@given(
    sender=st.integers(1, 2**32 - 1),
    data=st.binary(max_size=300),
    seq=st.integers(0, 2**32 - 2),
    ms=st.integers(0, 2**32 - 1),
)
def test_relayed_messages_are_protobufs_own_bytes(sender: int, data: bytes, seq: int, ms: int) -> None:
    recipient = wire.Recipient(wire.Encoder(VECTORS["key"], started=0.0), "me", b"")
    recipient.seq = seq
    (ours,) = recipient.containers([m.encode_message(sender, data)], ms / 1000 + 1e-7)
    value = pb.BinaryMessage(
        data=relay_pb2.RelayBinaryMessage(connectionId=sender, data=data).SerializeToString()
    ).SerializeToString()
    assert ours == _library(pb.Container.BINARY_MESSAGE, value, seq + 1, ms)


def test_a_recipients_session_as_protobuf_makes_it() -> None:
    """HelloResult from the WELCOME, notifications naming players from the recipient's table
    (LEAVE carries only the id natively), errors, and nothing for CLOSING or PONG; sequence
    numbers from 1, one per Container, the lifetime since the room started."""
    encoder = wire.Encoder(VECTORS["key"], started=10.0)
    r = wire.Recipient(encoder, "me", b"mine")
    welcome = m.Welcome(
        4, b"t" * 16, m.Limits(), (m.Member(1, "ann", b"a1"), m.Member(2, "bo", b"")), False, False, 0, 1
    )
    items = [
        *(part for part in [welcome.encode()]),
        m.MemberJoined(5, "cy", b"c").encode(),
        m.MemberProfile(1, b"a2").encode(),
        m.Pong(1, 2).encode(),
        m.MemberLeft(1, LeaveReason.LEFT).encode(),
        m.Error(ErrorCode.RATE_LIMITED, "rate limit exceeded").encode(),
        m.Closing(2, "idle").encode(),
    ]
    got = r.containers(items, 12.5)
    hello = pb.HelloResult(
        myProfile=_player(4, "me", b"mine"), players=[_player(1, "ann", b"a1"), _player(2, "bo", b"")]
    )
    expected = [
        (pb.Container.HELLO_RESULT, hello),
        (pb.Container.JOIN_NOTIFICATION, pb.JoinNotification(joinPlayer=_player(5, "cy", b"c"))),
        (
            pb.Container.UPDATE_PROFILE_NOTIFICATION,
            pb.UpdateProfileNotification(updatePlayer=_player(1, "ann", b"a2")),
        ),
        (pb.Container.LEAVE_NOTIFICATION, pb.LeaveNotification(leavePlayer=_player(1, "ann", b"a2"))),
        (pb.Container.ERROR, pb.Error(component="rate", statusCode=429, message="rate limit exceeded")),
    ]
    assert got == [
        _library(kind, msg.SerializeToString(), seq, 2500) for seq, (kind, msg) in enumerate(expected, 1)
    ]
    assert r.players == {2: ("bo", b""), 5: ("cy", b"c")}
    # a later snapshot (a native SYNC's) has no GS2 message
    assert r.containers([welcome.encode()], 13.0) == []


def test_a_snapshot_in_parts_is_one_hello_result() -> None:
    r = wire.Recipient(wire.Encoder(VECTORS["key"], 0.0), "me", b"")
    parts = m.WelcomeBuilder(
        9, b"t" * 16, m.Limits(), False, [m.Member(i, f"u{i}", b"p" * 300) for i in range(1, 6)]
    )
    encoded = parts.parts(800)
    assert len(encoded) > 1
    got = r.containers(list(reversed(encoded)), 1.0)
    assert len(got) == 1
    hello = pb.HelloResult.FromString(pb.Container.FromString(got[0]).payload.value)
    assert (
        sorted(p.connectionId for p in hello.players) == [1, 2, 3, 4, 5] and hello.myProfile.connectionId == 9
    )


def test_a_flush_signs_each_message_once() -> None:
    """Every recipient of one flush gets the same body; only its sequence number differs."""
    encoder = wire.Encoder(VECTORS["key"], 0.0)
    item = m.encode_message(3, b"x" * 50)
    a, b = wire.Recipient(encoder, "a", b""), wire.Recipient(encoder, "b", b"")
    b.seq = 200
    (ca,), (cb,) = a.containers([item], 1.0), b.containers([item], 1.0)
    bodies, tails, lifetime = encoder.begin(1.0)
    assert lifetime == b"\x28\xe8\x07"  # 1000 ms since the room started
    assert bodies == {item: ca[: -len(b"\x20\x01" + lifetime)]}
    assert tails == {1: b"\x20\x01" + lifetime, 201: b"\x20\xc9\x01" + lifetime}
    assert pb.Container.FromString(cb).sequenceNumber == 201
    (again,) = a.containers([item], 1.0)  # the same flush: the same body, the next number
    assert again == bodies[item] + b"\x20\x02" + lifetime
    assert encoder.begin(2.0) == ({}, {}, b"\x28\xd0\x0f")  # the next flush starts afresh


def _client(kind: int, value: bytes, key: bytes = KEY, url: str = "type.googleapis.com") -> bytes:
    return pb.Container(
        messageType=kind, payload=Any(type_url=url, value=value), signature=sign(key, value)
    ).SerializeToString()


def test_decoding_what_clients_send() -> None:
    profile = pb.UpdateProfileRequest(myProfile=b"pp").SerializeToString()
    assert decode(_client(pb.Container.UPDATE_PROFILE_REQUEST, profile), KEY, 100) == m.SetProfile(b"pp")
    broadcast = pb.BinaryMessage(data=relay_pb2.RelayBinaryMessage(data=b"d").SerializeToString())
    sent = decode(_client(pb.Container.BINARY_MESSAGE, broadcast.SerializeToString()), KEY, 100)
    assert sent == m.Send(b"d", None)
    # the type URL is never looked at; the sender id a client writes is replaced by the relay's
    forged = relay_pb2.RelayBinaryMessage(connectionId=99, data=b"d", targetConnectionId=[7])
    value = pb.BinaryMessage(data=forged.SerializeToString()).SerializeToString()
    assert decode(_client(pb.Container.BINARY_MESSAGE, value, url="x/Nonsense"), KEY, 100) == m.Send(
        b"d", (7,)
    )
    # fields in any order, unpacked repeated targets, unknown fields: normal protobuf parsing
    unpacked = b"\x12\x01d\x18\x02\x18\x03\x78\x05"  # data, target 2, target 3, field 15 = 5
    value = pb.BinaryMessage(data=unpacked).SerializeToString()
    container = b"\x1a\x20" + sign(KEY, value) + b"\x12" + bytes([len(value) + 2, 0x12, len(value)]) + value
    container += b"\x08\x80\x80\x80\x80\x03"
    assert decode(container, KEY, 100) == m.Send(b"d", (2, 3))


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (_client(pb.Container.BINARY_MESSAGE, b"\x0a\x00", key=b"another room"), "gs2_bad_signature", 401),
        (
            _client(pb.Container.BINARY_MESSAGE, b"\x0a\x00")[:-34] + b"\x1a\x1f" + b"s" * 31,
            "gs2_bad_signature",
            401,
        ),
        (b"\x08\x02", "gs2_bad_signature", 401),  # no payload, no signature
        (b"\x12\xff\xff\xff\xff\x0f", "gs2_malformed", 400),  # a length far past the end
        (_client(pb.Container.BINARY_MESSAGE, b"\x0a\x05\x12"), "gs2_malformed", 400),  # truncated inner
        (_client(pb.Container.HELLO_REQUEST, b"\x0a\x02\xff\xfe"), "gs2_malformed", 400),  # token not UTF-8
        (_client(pb.Container.JOIN_NOTIFICATION, b""), "gs2_unexpected", 400),  # a server's type
        (_client(12345, b""), "gs2_unexpected", 400),  # no such type
        (_client(pb.Container.BINARY_MESSAGE, b"\x0a\x01" + b"x" * 200), "gs2_oversize", 413),
    ],
)
def test_refused(data: bytes, reason: str, status: int) -> None:
    with pytest.raises(wire.Gs2Error) as e:
        decode(data, KEY, 150)
    assert (e.value.reason, e.value.status) == (reason, status)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(wire.Gs2Error):
        decode(data, KEY, 150)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([*sorted(MESSAGE_TYPES.values()), 7]), value=st.binary(max_size=100))
def test_signed_garbage_decodes_or_is_refused(kind: int, value: bytes) -> None:
    """Past the signature (a member with the room key), any inner bytes: a message or a refusal."""
    try:
        got = decode(_client(kind, value), KEY, 1000)
    except wire.Gs2Error as exc:
        assert exc.reason in ("gs2_malformed", "gs2_unexpected")
    else:
        assert isinstance(got, wire.Hello | m.Send | m.SetProfile | m.Bye)


def test_what_clients_of_this_project_send_decodes() -> None:
    """The client half (load generators): a Container the relay decodes, and parse_server."""
    key = KEY
    assert decode(
        wire.client_container(SIGNER, wire.HELLO_REQUEST, wire.hello_value("t", b"p")), key, 99
    ) == (wire.Hello("t", b"p"))
    sent = wire.client_container(SIGNER, wire.BINARY_MESSAGE, wire.send_value(b"d", [4]))
    assert decode(sent, key, 99) == m.Send(b"d", (4,))
    assert decode(
        wire.client_container(SIGNER, wire.UPDATE_PROFILE_REQUEST, wire.profile_value(b"q")), key, 99
    ) == (m.SetProfile(b"q"))
    r = wire.Recipient(wire.Encoder(VECTORS["key"], 0.0), "me", b"")
    (relayed, joined) = r.containers([m.encode_message(2, b"x"), m.MemberJoined(3, "u", b"").encode()], 1.0)
    kind, body = wire.parse_server(relayed)
    assert (kind, body.connectionId, body.data) == (wire.BINARY_MESSAGE, 2, b"x")
    kind, body = wire.parse_server(joined)
    assert (kind, body.joinPlayer.userId) == (wire.JOIN_NOTIFICATION, "u")


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=300), value=st.binary(max_size=300))
def test_the_signer_is_hmac_sha256(key: bytes, value: bytes) -> None:
    """Keys longer than SHA-256's block (GS2 allows 256 characters) are hashed first, as HMAC says."""
    assert wire.Signer(key)(value) == sign(key, value)


def test_signatures_are_keyed_with_the_ascii_room_key() -> None:
    assert wire.room_hmac_key("AbC-_xyz") == b"AbC-_xyz"
    assert wire.Encoder("AbC-_xyz", 0.0).body(wire.ERROR, b"v").endswith(sign(b"AbC-_xyz", b"v"))
