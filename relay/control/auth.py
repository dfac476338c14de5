"""Project credentials, project tokens and user access tokens.

Both kinds of token are relay.protocol.tokens (Ed25519) signed with the one signing key every node
shares (a file in the data dir; the settings table of a PostgreSQL store), told apart by their
issuer, so they survive control-plane restarts without a token table, any node verifies what
another minted, and relays verify user tokens with the public key alone.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay.protocol import tokens
from relay.server.ratelimit import TokenBucket

PROJECT_ISSUER = "gs2relay-project"
VERIFIED_KEPT = 1024
USER_ISSUER = tokens.USER_ISSUER
SIGNING_KEY_FILE = "signing.key"
CREDENTIALS_FILE = "credentials.json"


def _write_private(path: Path, text: str) -> None:
    """Creates a 0600 file atomically (write temp, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


Setting = Callable[[str, Callable[[], str]], str]
"""setting(name, create) -> a value every control-plane node shares: the one kept, or create()'s,
kept by whoever asked first (relay/control/cluster.py: files in the data dir for one node, the
PostgreSQL store's settings table for several)."""


def file_setting(data_dir: Path) -> Setting:
    """Shared values as 0600 files in the data dir, created on first use."""

    def setting(name: str, create: Callable[[], str]) -> str:
        path = data_dir / name
        if not path.exists():
            _write_private(path, create())
        # Two processes racing on first start: whichever rename won is the value; read it back.
        return path.read_text()

    return setting


def load_signing_key(setting: Setting) -> Ed25519PrivateKey:
    """The control plane's signing key: generated on first use, then read back from where it is kept."""
    text = setting(SIGNING_KEY_FILE, lambda: tokens.private_key_to_text(Ed25519PrivateKey.generate()) + "\n")
    return tokens.private_key_from_text(text)


def load_or_create_credentials(setting: Setting) -> tuple[str, str]:
    """Dev credentials kept where shared values are, so they stay the same across runs (and nodes)."""

    def create() -> str:
        client = {"client_id": "dev-" + secrets.token_hex(8), "client_secret": secrets.token_urlsafe(24)}
        return json.dumps(client) + "\n"

    data = json.loads(setting(CREDENTIALS_FILE, create))
    return str(data["client_id"]), str(data["client_secret"])


class _NotKept(LookupError):
    pass


def _refuse() -> str:
    raise _NotKept


def read_signing_key(setting: Setting) -> Ed25519PrivateKey | None:
    """The signing key a control plane keeps where `setting` looks, or None: never makes one (a
    tool such as `relay token` signing with a key of its own would mint tokens nobody accepts)."""
    try:
        return tokens.private_key_from_text(setting(SIGNING_KEY_FILE, _refuse))
    except _NotKept:
        return None


def read_credentials(setting: Setting) -> tuple[str, str] | None:
    """The credentials `relay dev` generated where `setting` looks, or None; never makes them."""
    try:
        data = json.loads(setting(CREDENTIALS_FILE, _refuse))
    except _NotKept:
        return None
    return str(data["client_id"]), str(data["client_secret"])


@dataclass(frozen=True)
class Authority:
    """Checks project credentials and mints/verifies both token kinds."""

    client_id: str
    client_secret: str
    signing_key: Ed25519PrivateKey
    project_token_ttl: int = 3600
    user_token_ttl: int = 3600
    _verified: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Project tokens whose signature has been checked, with their expiry (see verify_project_token)."""

    @functools.cached_property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def public_key_text(self) -> str:
        return tokens.public_key_to_text(self.public_key)

    def check_credentials(self, client_id: object, client_secret: object) -> bool:
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return False
        id_ok = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        secret_ok = hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        return id_ok and secret_ok

    def mint_project_token(self) -> str:
        return tokens.mint(self.signing_key, self.client_id, self.project_token_ttl, issuer=PROJECT_ISSUER)

    def verify_project_token(self, token: str) -> bool:
        """Every API call carries the project token, and a client keeps one for its lifetime: its
        signature is checked once (an Ed25519 verify was a fifth of a getRoom's CPU), its expiry
        every time. Only tokens this authority signed are remembered, at most VERIFIED_KEPT."""
        exp = self._verified.get(token)
        if exp is not None:
            return exp > time.time()
        try:
            claims = tokens.verify(self.public_key, token, user_id=self.client_id)
        except tokens.TokenError:
            return False
        if claims.iss != PROJECT_ISSUER:
            return False
        if len(self._verified) >= VERIFIED_KEPT:
            self._verified.clear()
        self._verified[token] = claims.exp
        return True

    def mint_user_token(self, user_id: str, ttl: int | None = None) -> str:
        return tokens.mint(self.signing_key, user_id, ttl or self.user_token_ttl, issuer=USER_ISSUER)

    def verify_user_token(self, token: str) -> tokens.Claims | None:
        try:
            claims = tokens.verify(self.public_key, token)
        except tokens.TokenError:
            return None
        return claims if claims.iss == USER_ISSUER else None


MAX_THROTTLED_KEYS = 10_000
"""Sources and client ids whose failed logins are remembered at once (the table's memory bound)."""


class LoginThrottle:
    """Failed logins, counted per source address and per client id: each has `per_source` (or
    `per_client`) tries per `window` seconds, a token bucket refilling evenly. Once either is
    spent, login answers 429 (even to the right secret) until a try is back; a login that
    succeeds spends nothing. The client id's budget is larger, so one source guessing cannot
    lock the client out, while guesses spread over many sources still meet a limit. 0: no limit."""

    def __init__(self, per_source: int, per_client: int, window: float) -> None:
        self.limits = {"source": per_source, "client": per_client}
        self.window = window
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _keys(self, source: str, client_id: str) -> list[tuple[str, str]]:
        keys = [("source", source), ("client", client_id[:256])]
        return [key for key in keys if self.limits[key[0]] > 0]

    def retry_after(self, source: str, client_id: str, now: float) -> float:
        """Seconds until this source may try this client id again; 0: now."""
        wait = 0.0
        for key in self._keys(source, client_id):
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.available(now) < 1:
                wait = max(wait, (1 - bucket.available(now)) / bucket.rate)
        return wait

    def failed(self, source: str, client_id: str, now: float) -> None:
        for key in self._keys(source, client_id):
            bucket = self._buckets.get(key)
            if bucket is None:
                limit = self.limits[key[0]]
                bucket = self._buckets[key] = TokenBucket(limit / self.window, limit, now)
            bucket.take(1, now)
        if len(self._buckets) > MAX_THROTTLED_KEYS:
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Drops the buckets that are full again (they say nothing), then, if still too many, the oldest."""
        for key, bucket in list(self._buckets.items()):
            if bucket.available(now) >= bucket.burst:
                del self._buckets[key]
        for key in list(self._buckets)[: max(0, len(self._buckets) - MAX_THROTTLED_KEYS)]:
            del self._buckets[key]
