"""DATA sealing and opening: the C implementation (relay/protocol/_aead.c) and the Python one
(relay/protocol/packets.py) make the same packets, open each other's, refuse the same forgeries
and replays, and keep the same window. The C one is in use wherever it was built; `.ci/run`
requires it (RELAY_REQUIRE_NATIVE), elsewhere its tests skip saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import packets
from relay.protocol.constants import HEADER_SIZE, REPLAY_WINDOW, ProtocolError
from relay.protocol.packets import PyOpener, PySealer, parse_header

from ..native import built, check_in_use, printed_with_pure_python

_aead = built("relay.protocol._aead")

NOT_BUILT = "relay/protocol/_aead.c is not built here (it needs gcc and OpenSSL's headers: libssl-dev)"
needs_c = pytest.mark.skipif(_aead is None, reason=NOT_BUILT)
IMPLEMENTATIONS = [pytest.param((PySealer, PyOpener), id="python")] + (
    [pytest.param((_aead.Sealer, _aead.Opener), id="c")] if _aead is not None else []
)
VECTORS = Path(__file__).parents[1] / "vectors"
KEY = bytes(range(32))


def test_the_c_part_is_in_use_where_it_is_required() -> None:
    """CI builds it (gcc, libssl-dev): there a missing extension is a failure, not a skip."""
    c = (_aead.Sealer, _aead.Opener) if _aead is not None else None
    check_in_use(
        _aead, NOT_BUILT, packets.NATIVE, (packets.Sealer, packets.Opener), (c, (PySealer, PyOpener))
    )


@needs_c
def test_relay_pure_python_selects_the_python_implementation() -> None:
    code = "from relay.protocol import packets; print(packets.NATIVE, packets.Sealer.__name__)"
    for value, expected in (("1", "False PySealer"), ("0", "True Sealer"), ("", "True Sealer")):
        assert printed_with_pure_python(code, value) == expected.split()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_vectors_data_packets(impl: tuple[type, type]) -> None:
    """tests/vectors: the handshake's first DATA each way, with the keys of keys.json."""
    sealer, opener = impl
    keys = json.loads((VECTORS / "keys.json").read_text())
    v = json.loads((VECTORS / "handshake.json").read_text())
    k_c2s, k_s2c = bytes.fromhex(keys["k_c2s"]), bytes.fromhex(keys["k_s2c"])
    join, join_plain = bytes.fromhex(v["join_packet"]), bytes.fromhex(v["join_plaintext"])
    welcome, welcome_plain = bytes.fromhex(v["welcome_packet"]), bytes.fromhex(v["welcome_plaintext"])
    assert sealer(k_c2s, v["session_id"]).seal(join_plain) == join
    assert opener(k_c2s).open(join, 1) == join_plain
    assert sealer(k_s2c, v["session_id"]).seal(welcome_plain) == welcome
    assert opener(k_s2c, strict=True).open(welcome, 1) == welcome_plain


@needs_c
@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    sid=st.integers(1, 2**32 - 1),
    start=st.integers(0, 2**64 - 100),
    plains=st.lists(st.binary(max_size=1300), min_size=1, max_size=5),
)
def test_c_and_python_make_the_same_packets_and_open_each_others(
    key: bytes, sid: int, start: int, plains: list[bytes]
) -> None:
    c, py = _aead.Sealer(key, sid, start), PySealer(key, sid, start)
    for plain in plains:
        packet = c.seal(plain)
        assert packet == py.seal(plain)
        counter = parse_header(packet).counter
        assert counter == c.counter == py.counter
        # and what AES-GCM itself makes of it: header as associated data, counter nonce
        assert (
            AESGCM(key).decrypt(bytes(4) + packet[8:16], packet[HEADER_SIZE:], packet[:HEADER_SIZE]) == plain
        )
        assert _aead.Opener(key).open(packet, counter) == plain
        assert PyOpener(key).open(packet, counter) == plain


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    strict=st.booleans(),
    steps=st.lists(
        st.tuples(st.integers(1, 5000), st.booleans()),  # (counter, forged)
        max_size=60,
    ),
)
def test_the_replay_windows_accept_and_refuse_alike(strict: bool, steps: list[tuple[int, bool]]) -> None:
    """Counters in any order, some packets forged: both accept the same ones, and a forgery never
    moves either window (so the real packet with that counter still gets in)."""
    sealer = PySealer(KEY, 9)
    c, py = _aead.Opener(KEY, strict=strict), PyOpener(KEY, strict=strict)
    for counter, forged in steps:
        sealer.counter = counter - 1
        packet = sealer.seal(b"x" * (counter % 7))
        if forged:
            packet = packet[:-1] + bytes([packet[-1] ^ 0x80])
        outcomes = []
        for opener in (c, py):
            try:
                outcomes.append(opener.open(packet, counter))
            except ProtocolError as exc:
                outcomes.append(exc.reason)
        assert outcomes[0] == outcomes[1], (counter, forged)
        assert c.top == py.top


@needs_c
def test_the_c_window_over_long_runs_and_jumps() -> None:
    """The bitmap's words are cleared as the newest counter moves ahead: a counter still inside
    the window is never forgotten, one just past it is always refused."""
    sealer = PySealer(KEY, 3)
    opener = _aead.Opener(KEY)

    def deliver(counter: int) -> bool:
        sealer.counter = counter - 1
        try:
            opener.open(sealer.seal(b""), counter)
            return True
        except ProtocolError as exc:
            assert exc.reason == "replay"
            return False

    seen: list[int] = []
    for top in (63, 64, 65, 1000, 1087, 1088, 2047, 2048, 2049, 3100, 3171, 10_000, 10_064):
        assert deliver(top)
        seen.append(top)
        for old in seen:
            assert not deliver(old), (top, old)  # a replay, or too old: refused either way
        # every counter not yet seen inside the window is still fresh; one just outside is not
        for gap in (1, 63, 64, 65, REPLAY_WINDOW - 1):
            candidate = top - gap
            if candidate > 0 and candidate not in seen:
                assert deliver(candidate), (top, candidate)
                seen.append(candidate)
        if top > REPLAY_WINDOW:
            assert not deliver(top - REPLAY_WINDOW)


@needs_c
def test_c_refusals() -> None:
    sealer = _aead.Sealer(KEY, 5)
    packet = sealer.seal(b"hello")
    opener = _aead.Opener(KEY)
    with pytest.raises(ProtocolError) as short:
        opener.open(packet[:31], 1)
    assert short.value.reason == "short"
    for tampered in (packet[:-1] + bytes([packet[-1] ^ 1]), packet[:3] + b"\x01" + packet[4:]):
        with pytest.raises(ProtocolError) as bad:
            opener.open(tampered, 1)
        assert bad.value.reason == "decrypt"
    assert opener.top == 0  # forgeries moved nothing
    assert opener.open(packet, 1) == b"hello"
    with pytest.raises(ProtocolError) as replay:
        opener.open(packet, 1)
    assert (replay.value.reason, replay.value.detail) == ("replay", "1")
    with pytest.raises(ValueError, match="32 bytes"):
        _aead.Sealer(b"short", 1)
    with pytest.raises(ValueError, match="32 bytes"):
        _aead.Opener(bytes(16))
    with pytest.raises(OverflowError):
        _aead.Sealer(KEY, 2**32)
    last = _aead.Sealer(KEY, 1, 2**64 - 2)
    assert parse_header(last.seal(b"")).counter == 2**64 - 1
    with pytest.raises(OverflowError, match="exhausted"):  # the nonce would repeat: never
        last.seal(b"")
    assert last.counter == 2**64 - 1
    assert _aead.Sealer(KEY, 1).seal(bytearray(b"abc")) == _aead.Sealer(KEY, 1).seal(b"abc")
