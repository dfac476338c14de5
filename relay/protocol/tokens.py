"""User access tokens (docs/protocol.md section 8): Ed25519-signed, expiring, bound to a user id.

The control plane holds the signing key; relays and the gateway hold only the public key, so a
compromised relay cannot mint tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class TokenError(ValueError):
    """The token is malformed, badly signed, expired, or for another user."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("bad base64") from exc


USER_ISSUER = "gs2relay"
"""`iss` of a user access token: the only kind a relay accepts (a project token, signed with the
same key, has another issuer and is refused)."""


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    iat: int
    exp: int
    iss: str


def mint(
    signing_key: Ed25519PrivateKey,
    user_id: str,
    ttl_s: int = 3600,
    issuer: str = USER_ISSUER,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": user_id, "iat": issued, "exp": issued + ttl_s, "iss": issuer}
    body = _b64e(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return body + "." + _b64e(signing_key.sign(body.encode("ascii")))


def verify(
    public_key: Ed25519PublicKey,
    token: str,
    user_id: str | None = None,
    now: float | None = None,
    issuer: str | None = None,
) -> Claims:
    """Returns the claims; raises TokenError. With `user_id`, the token must be for that user;
    with `issuer`, from that issuer."""
    body, sig = _split(token)
    try:
        public_key.verify(_b64d(sig), body.encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError):
        raise TokenError("bad signature") from None
    claims = _claims(body)
    if claims.exp <= (time.time() if now is None else now):
        raise TokenError("expired")
    if user_id is not None and claims.sub != user_id:
        raise TokenError("token is for another user")
    if issuer is not None and claims.iss != issuer:
        raise TokenError("not a user access token")
    return claims


def read_claims(token: str) -> Claims:
    """The claims of a well-formed token, its signature and expiry not checked: for a relay
    without a token key, where the room key is the credential (docs/gs2-clients.md)."""
    return _claims(_split(token)[0])


def _split(token: str) -> tuple[str, str]:
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
        raise TokenError("malformed token")
    body, sig = token.split(".")
    return body, sig


def _claims(body: str) -> Claims:
    try:
        raw = json.loads(_b64d(body))
        sub = raw["sub"]
        if type(sub) is not str:
            raise TypeError("sub")
        sub.encode()  # JSON's \ud800 escapes decode to text no UTF-8 can carry: UnicodeEncodeError
        return Claims(sub, int(raw["iat"]), int(raw["exp"]), str(raw.get("iss", "")))
    # OverflowError: int(1e999); RecursionError: a body of nested arrays (4 KiB holds 3,000)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise TokenError("malformed claims") from exc


def public_key_to_text(key: Ed25519PublicKey) -> str:
    return _b64e(key.public_bytes_raw())


def public_key_from_text(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_b64d(text.strip()))


def private_key_to_text(key: Ed25519PrivateKey) -> str:
    return _b64e(key.private_bytes_raw())


def private_key_from_text(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_b64d(text.strip()))
