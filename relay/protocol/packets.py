"""Packets: the 16-byte header, the handshake (HELLO/ACCEPT) and DATA sealing (sections 4 and 6).

The sealers and openers are the hot path of the relay. `Sealer` and `Opener` are the C ones of
relay/protocol/_aead.c where that extension was built (one OpenSSL context per direction, the
key scheduled once, a packet in one call and one object); elsewhere, or with RELAY_PURE_PYTHON=1
in the environment (relay/settings.py), the Python ones here (`PySealer`, `PyOpener`: one AESGCM object per
direction, the nonce taken straight from the header bytes). Both make the same packets
(tests/vectors) and keep the same replay window; `NATIVE` says which is in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.protocol.constants import (
    ACCEPT_SIZE,
    DATA_MIN_SIZE,
    HEADER,
    HEADER_SIZE,
    HELLO_MIN_SIZE,
    PROTOCOL_VERSION,
    PUBLIC_KEY_SIZE,
    REPLAY_WINDOW,
    TAG_SIZE,
    PacketType,
    ProtocolError,
)
from relay.protocol.keys import derive_hello_key, derive_session_keys, public_bytes, x25519
from relay.protocol.replay import ReplayWindow
from relay.settings import native

_NONCE_PAD = b"\x00\x00\x00\x00"
_ZERO_NONCE = bytes(12)
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_DATA = int(PacketType.DATA)  # an IntEnum member is looked up through its metaclass: 0.07 us a seal


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    type: int
    flags: int
    session_id: int
    counter: int


def pack_header(ptype: int, session_id: int, counter: int) -> bytes:
    return _pack_header(PROTOCOL_VERSION, ptype, 0, session_id, counter)


def parse_header(packet: bytes) -> Header:
    """Validates what every packet shares; raises ProtocolError for anything to drop."""
    if len(packet) < DATA_MIN_SIZE:
        raise ProtocolError("short", f"{len(packet)} bytes")
    version, ptype, flags, session_id, counter = _unpack_header(packet)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", str(version))
    if flags:
        raise ProtocolError("flags", str(flags))
    if ptype == PacketType.HELLO:
        if len(packet) < HELLO_MIN_SIZE or session_id or counter:
            raise ProtocolError("bad_hello")
    elif ptype == PacketType.ACCEPT:
        if len(packet) != ACCEPT_SIZE or not session_id or counter:
            raise ProtocolError("bad_accept")
    elif ptype == PacketType.DATA:
        if not session_id or not counter:
            raise ProtocolError("bad_data")
    else:
        raise ProtocolError("type", str(ptype))
    return Header(version, ptype, flags, session_id, counter)


class PySealer:
    """Encrypts one direction's DATA packets with counter nonces (never random, never reused)."""

    __slots__ = ("_encrypt", "counter", "session_id")

    def __init__(self, key: bytes, session_id: int, counter: int = 0) -> None:
        self._encrypt = AESGCM(key).encrypt
        self.session_id = session_id
        self.counter = counter

    def seal(self, plaintext: bytes) -> bytes:
        self.counter = counter = self.counter + 1
        header = _pack_header(PROTOCOL_VERSION, _DATA, 0, self.session_id, counter)
        return header + self._encrypt(_NONCE_PAD + header[8:], plaintext, header)


class PyOpener:
    """Authenticates and decrypts one direction's DATA packets, enforcing anti-replay."""

    __slots__ = ("_decrypt", "window")

    def __init__(self, key: bytes, strict: bool = False) -> None:
        self._decrypt = AESGCM(key).decrypt
        self.window = ReplayWindow(strict)

    @property
    def top(self) -> int:
        """The newest counter accepted."""
        return self.window.top

    def open(self, packet: bytes, counter: int) -> bytes:
        """`counter` comes from parse_header; the packet is a DATA packet of this session."""
        window = self.window
        if not window.check(counter):
            raise ProtocolError("replay", str(counter))
        try:
            plaintext = self._decrypt(_NONCE_PAD + packet[8:16], packet[HEADER_SIZE:], packet[:HEADER_SIZE])
        except InvalidTag:
            raise ProtocolError("decrypt") from None
        window.update(counter)
        return plaintext


def _native() -> tuple[type, type] | None:
    """The C Sealer and Opener, if built, not refused by RELAY_PURE_PYTHON, and of this protocol."""
    _aead = native("relay.protocol._aead")
    if _aead is None:
        return None
    numbers = (_aead.VERSION, _aead.DATA, _aead.HEADER_SIZE, _aead.TAG_SIZE, _aead.WINDOW)
    if numbers != (PROTOCOL_VERSION, _DATA, HEADER_SIZE, TAG_SIZE, REPLAY_WINDOW):
        return None  # built from another version of the protocol's numbers: not this one's packets
    return _aead.Sealer, _aead.Opener


_built = _native()
NATIVE = _built is not None
"""Whether DATA is sealed and opened by relay/protocol/_aead.c."""
Sealer: type[PySealer] = _built[0] if _built is not None else PySealer
Opener: type[PyOpener] = _built[1] if _built is not None else PyOpener


@dataclass(slots=True)
class SessionKeys:
    session_id: int
    k_c2s: bytes
    k_s2c: bytes


@dataclass(slots=True)
class ClientHello:
    """A client's pending handshake: the HELLO bytes to (re)send and the private key to finish."""

    packet: bytes
    private: X25519PrivateKey
    public: bytes
    psk: bytes

    @classmethod
    def create(cls, psk: bytes, pad_to: int = 0, private: X25519PrivateKey | None = None) -> ClientHello:
        private = private or X25519PrivateKey.generate()
        public = public_bytes(private)
        header = pack_header(PacketType.HELLO, 0, 0)
        padding = bytes(max(0, pad_to - HELLO_MIN_SIZE))
        sealed = AESGCM(derive_hello_key(psk, public)).encrypt(_ZERO_NONCE, padding, header + public)
        return cls(header + public + sealed, private, public, psk)

    def finish(self, accept: bytes) -> SessionKeys:
        """Verifies an ACCEPT and derives the session keys; ProtocolError if it is not ours."""
        header = parse_header(accept)
        if header.type != PacketType.ACCEPT:
            raise ProtocolError("not_accept")
        server_public = accept[HEADER_SIZE : HEADER_SIZE + PUBLIC_KEY_SIZE]
        dh = x25519(self.private, server_public)
        k_c2s, k_s2c = derive_session_keys(self.psk, dh, self.public, server_public)
        try:
            AESGCM(k_s2c).decrypt(
                _ZERO_NONCE, accept[HEADER_SIZE + PUBLIC_KEY_SIZE :], accept[: HEADER_SIZE + PUBLIC_KEY_SIZE]
            )
        except InvalidTag:
            raise ProtocolError("decrypt", "accept") from None
        return SessionKeys(header.session_id, k_c2s, k_s2c)


def verify_hello(psk: bytes, hello: bytes) -> bytes:
    """Checks a HELLO (already through parse_header) proves the room key; returns e_c."""
    client_public = hello[HEADER_SIZE : HEADER_SIZE + PUBLIC_KEY_SIZE]
    try:
        AESGCM(derive_hello_key(psk, client_public)).decrypt(
            _ZERO_NONCE, hello[HEADER_SIZE + PUBLIC_KEY_SIZE :], hello[: HEADER_SIZE + PUBLIC_KEY_SIZE]
        )
    except InvalidTag:
        raise ProtocolError("decrypt", "hello") from None
    return client_public


def make_accept(
    psk: bytes, client_public: bytes, session_id: int, private: X25519PrivateKey | None = None
) -> tuple[bytes, SessionKeys]:
    """The relay's half of the handshake: the ACCEPT packet and the session keys."""
    private = private or X25519PrivateKey.generate()
    server_public = public_bytes(private)
    k_c2s, k_s2c = derive_session_keys(psk, x25519(private, client_public), client_public, server_public)
    head = pack_header(PacketType.ACCEPT, session_id, 0) + server_public
    return head + AESGCM(k_s2c).encrypt(_ZERO_NONCE, b"", head), SessionKeys(session_id, k_c2s, k_s2c)
