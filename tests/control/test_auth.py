"""The project-token check every API call makes: its signature is verified once, its expiry always."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay.control.auth as auth
from relay.protocol import tokens


def authority() -> auth.Authority:
    return auth.Authority("client-id", "client-secret", Ed25519PrivateKey.generate())


def project_token(a: auth.Authority, exp_in: int = 3600, key: Ed25519PrivateKey | None = None) -> str:
    now = time.time()
    return tokens.mint(key or a.signing_key, a.client_id, exp_in, issuer=auth.PROJECT_ISSUER, now=now)


class Clock:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    a = authority()
    token = project_token(a, exp_in=60)
    assert a.verify_project_token(token)
    assert a.verify_project_token(token)  # from memory now
    monkeypatch.setattr(auth, "time", Clock(61))
    assert not a.verify_project_token(token)


def test_only_tokens_this_authority_signed_are_accepted_or_remembered() -> None:
    a = authority()
    good = project_token(a)
    forged = project_token(a, key=Ed25519PrivateKey.generate())
    body, sig = good.split(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
    user = a.mint_user_token(a.client_id)  # signed by us, but a user token, not a project token
    for token in (forged, tampered, user, "", "x.y", good + "x"):
        assert not a.verify_project_token(token), token
        assert not a.verify_project_token(token), token  # refusing is not remembered as anything
    assert a._verified == {}
    assert a.verify_project_token(good)
    assert list(a._verified) == [good]


def test_memory_of_tokens_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_KEPT", 8)
    a = authority()
    minted = [
        tokens.mint(a.signing_key, a.client_id, 3600, issuer=auth.PROJECT_ISSUER, now=time.time() - i)
        for i in range(20)
    ]
    assert len(set(minted)) == 20
    for token in minted:
        assert a.verify_project_token(token)
        assert len(a._verified) <= 8
    assert all(a.verify_project_token(token) for token in minted)  # forgotten ones verify again


def test_the_failed_login_table_is_bounded_and_forgets_refilled_entries_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guesses spread over many client ids (or sources) cannot grow the throttle's memory without
    end: past MAX_THROTTLED_KEYS the buckets that have refilled (they throttle nothing) go first,
    and only then the oldest, spent or not."""
    monkeypatch.setattr(auth, "MAX_THROTTLED_KEYS", 50)
    throttle = auth.LoginThrottle(per_source=2, per_client=3, window=60.0)
    for n in range(40):  # 40 client ids from one source, long ago: all refilled by now
        throttle.failed("10.0.0.1", f"old-{n}", 0.0)
    throttle.failed("10.0.0.9", "spent", 1000.0)
    throttle.failed("10.0.0.9", "spent", 1000.0)
    assert throttle.retry_after("10.0.0.9", "spent", 1000.0) > 0
    sizes = []
    for n in range(5):  # 43 + 10 entries: one trim, of the refilled ones only
        throttle.failed(f"10.1.0.{n}", f"new-{n}", 1000.5)
        sizes.append(len(throttle._buckets))
    assert max(sizes) <= 50 and not any(key[1].startswith("old-") for key in throttle._buckets)
    assert throttle.retry_after("10.0.0.9", "spent", 1000.5) > 0  # still kept, still throttled
    for n in range(5, 40):  # nothing refills now: the oldest entries make room
        throttle.failed(f"10.1.0.{n}", f"new-{n}", 1000.5)
        assert len(throttle._buckets) <= 50
    assert throttle.retry_after("10.0.0.9", "spent", 1000.5) == 0  # the oldest went
    assert throttle.retry_after("10.1.0.39", "new-39", 1000.5) == 0  # one try of two left
    throttle.failed("10.1.0.39", "other", 1000.5)
    assert throttle.retry_after("10.1.0.39", "other", 1000.5) > 0  # the newest are kept
