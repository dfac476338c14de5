"""Room keys and the key schedule of docs/protocol.md sections 2 and 3."""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol.constants import KEY_SIZE, LABEL_HELLO, LABEL_PSK, LABEL_SESSION, ProtocolError


def generate_room_key() -> str:
    """A fresh 256-bit room key in the room record's encryptionKey form."""
    return encode_room_key(secrets.token_bytes(KEY_SIZE))


def encode_room_key(key: bytes) -> str:
    if len(key) != KEY_SIZE:
        raise ValueError("a room key is 32 bytes")
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_room_key(text: str) -> bytes:
    """Accepts base64url with or without padding; anything but 32 bytes is refused."""
    stripped = text.strip().rstrip("=")
    if not stripped or len(stripped) > 256:
        raise ValueError("room key must be base64url of 32 bytes")
    try:
        key = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("room key must be base64url of 32 bytes") from exc
    if len(key) != KEY_SIZE:
        raise ValueError("room key must be base64url of 32 bytes")
    return key


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_psk(room_key: bytes) -> bytes:
    return hkdf(b"", room_key, LABEL_PSK, 32)


def derive_hello_key(psk: bytes, client_public: bytes) -> bytes:
    return hkdf(client_public, psk, LABEL_HELLO, 32)


def derive_session_keys(
    psk: bytes, dh: bytes, client_public: bytes, server_public: bytes
) -> tuple[bytes, bytes]:
    """Returns (k_c2s, k_s2c)."""
    if dh == bytes(32):
        raise ProtocolError("bad_key", "all-zero X25519 output")
    okm = hkdf(psk, dh, LABEL_SESSION + client_public + server_public, 64)
    return okm[:32], okm[32:]


def x25519(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography refuses low-order points with an all-zero result
        raise ProtocolError("bad_key", str(exc)) from exc


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()
