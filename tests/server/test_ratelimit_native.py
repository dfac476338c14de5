"""Token buckets: the C implementation (relay/server/_ratelimit.c) and the Python one
(relay/server/ratelimit.py's PyTokenBucket) give the same answers and keep the same numbers, bit
for bit, under any sequence of takes, looks and direct writes. The C one is in use wherever it was
built; `.ci/run` requires it (RELAY_REQUIRE_NATIVE), elsewhere its tests skip saying why."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.server import ratelimit
from relay.server.ratelimit import PyTokenBucket

from ..native import built, check_in_use, printed_with_pure_python

_ratelimit = built("relay.server._ratelimit")

NOT_BUILT = "relay/server/_ratelimit.c is not built here (it needs a C compiler)"
needs_c = pytest.mark.skipif(_ratelimit is None, reason=NOT_BUILT)
CTokenBucket = _ratelimit.TokenBucket if _ratelimit is not None else None
ATTRIBUTES = ("rate", "burst", "tokens", "stamp")


def test_the_c_part_is_built_where_it_is_required_and_in_use_unless_refused() -> None:
    check_in_use(
        _ratelimit, NOT_BUILT, ratelimit.NATIVE, ratelimit.TokenBucket, (CTokenBucket, PyTokenBucket)
    )


@needs_c
def test_relay_pure_python_selects_the_python_implementation() -> None:
    code = "from relay.server import ratelimit as r; print(r.NATIVE, r.TokenBucket.__module__)"
    for value, expected in (
        ("1", "False relay.server.ratelimit"),
        ("0", "True relay.server._ratelimit"),
        ("", "True relay.server._ratelimit"),
    ):
        assert printed_with_pure_python(code, value) == expected.split()


def bits(value: float) -> str:
    """A number as its exact double (an int the Python bucket kept is the same double)."""
    return float(value).hex()


def state(bucket: object) -> tuple[str, ...]:
    return tuple(bits(getattr(bucket, name)) for name in ATTRIBUTES)


# Numbers as the relay has them: rates and bursts of messages and bytes a second (ints from the
# configuration or floats), amounts of one message or a packet's bytes, monotonic clocks.
rates = st.one_of(
    st.just(0),
    st.just(0.0),
    st.integers(1, 10**6),
    st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
)
amounts = st.one_of(st.integers(0, 70_000), st.floats(0, 1e5, allow_nan=False, allow_infinity=False))
steps = st.one_of(  # mostly forward, sometimes not at all, sometimes backwards (a clock is not ours)
    st.floats(0, 2, allow_nan=False, allow_infinity=False),
    st.just(0.0),
    st.floats(-1, 0, allow_nan=False, allow_infinity=False),
    st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("take"), amounts, steps),
        st.tuples(st.just("available"), steps),
        st.tuples(st.just("give back")),  # the room's `bucket.tokens += 1`
        st.tuples(st.just("set"), st.sampled_from(ATTRIBUTES), amounts),
    ),
    max_size=60,
)


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    rate=rates,
    burst=st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False, allow_infinity=False)),
    start=st.floats(0, 1e7, allow_nan=False, allow_infinity=False),
    ops=operations,
)
def test_the_c_and_python_buckets_agree_bit_for_bit(
    rate: float, burst: float, start: float, ops: list[tuple]
) -> None:
    py, c = PyTokenBucket(rate, burst, start), CTokenBucket(rate, burst, start)
    assert state(c) == state(py)
    now = start
    for op in ops:
        if op[0] == "take":
            now += op[2]
            assert c.take(op[1], now) is py.take(op[1], now), op
        elif op[0] == "available":
            now += op[1]
            assert bits(c.available(now)) == bits(py.available(now)), op
        elif op[0] == "give back":
            py.tokens += 1
            c.tokens += 1
        else:
            setattr(py, op[1], op[2])
            setattr(c, op[1], op[2])
        assert state(c) == state(py), op


@needs_c
@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0])
def test_odd_amounts_agree_too(amount: float) -> None:
    py, c = PyTokenBucket(10.0, 5.0, 100.0), CTokenBucket(10.0, 5.0, 100.0)
    for now in (100.0, 100.25, 100.25, 101.0):
        assert c.take(amount, now) is py.take(amount, now)
        assert bits(c.available(now)) == bits(py.available(now))
        assert state(c) == state(py)


@pytest.mark.parametrize(
    "bucket_type",
    [pytest.param(PyTokenBucket, id="python"), pytest.param(CTokenBucket, id="c", marks=needs_c)],
)
def test_rate_zero_is_unlimited_and_changes_nothing(bucket_type: type) -> None:
    bucket = bucket_type(0, 0, 5.0)
    before = state(bucket)
    for now in (5.0, 6.0, 1.0, 1e9):
        assert bucket.take(1e12, now) is True
        assert bucket.available(now) == math.inf
    assert state(bucket) == before


@pytest.mark.parametrize(
    "bucket_type",
    [pytest.param(PyTokenBucket, id="python"), pytest.param(CTokenBucket, id="c", marks=needs_c)],
)
def test_the_burst_is_at_least_the_rate_and_starts_full(bucket_type: type) -> None:
    assert (bucket_type(10, 3, 1.0).burst, bucket_type(10, 3, 1.0).tokens) == (10, 10)
    assert (bucket_type(10, 30, 1.0).burst, bucket_type(10, 30, 1.0).tokens) == (30, 30)
    assert (bucket_type(2.5, 0, 1.0).burst, bucket_type(2.5, 0, 1.0).stamp) == (2.5, 1.0)


@needs_c
def test_the_c_attributes_are_floats_readable_and_writable() -> None:
    bucket = CTokenBucket(3, 7, 11)  # ints are taken as numbers
    assert [(type(getattr(bucket, n)), getattr(bucket, n)) for n in ATTRIBUTES] == [
        (float, 3.0),
        (float, 7.0),
        (float, 7.0),
        (float, 11.0),
    ]
    bucket.tokens += 1
    bucket.rate = 4
    bucket.stamp = 12.5
    assert (bucket.rate, bucket.tokens, bucket.stamp) == (4.0, 8.0, 12.5) and type(bucket.rate) is float
    before = state(bucket)
    with pytest.raises(TypeError):
        bucket.tokens = "1"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        del bucket.tokens
    with pytest.raises(AttributeError):
        bucket.other = 1  # type: ignore[attr-defined]  # no __dict__, as the Python class's __slots__
    assert not hasattr(bucket, "__dict__")
    assert state(bucket) == before
    assert CTokenBucket(rate=1.0, burst=2.0, now=3.0).burst == 2.0  # the Python class's keywords
    with pytest.raises(TypeError):
        CTokenBucket(1.0, 2.0)
    with pytest.raises(TypeError):
        CTokenBucket("1", 2.0, 3.0)
    with pytest.raises(TypeError):  # final: relay/server/_lane.c checks the exact type
        type("Sub", (CTokenBucket,), {})


WRONG_TAKES = [
    ("1", 1.0),
    (1, "1.0"),
    (None, 1.0),
    (1, None),
    (b"\x01", 1.0),
    (1, [2.0]),
    (1,),
    (1, 2.0, 3.0),
    (),
]
WRONG_LOOKS = [("1",), (None,), (b"\x01",), ([2.0],), (), (1.0, 2.0)]


@needs_c
@pytest.mark.parametrize("rate", [0, 5.0])  # unlimited too: the C type checks its arguments always
def test_wrong_arguments_raise_type_error_and_change_nothing(rate: float) -> None:
    bucket = CTokenBucket(rate, 10.0, 1.0)
    bucket.tokens = 4.0
    before = state(bucket)
    for args in WRONG_TAKES:
        with pytest.raises(TypeError):
            bucket.take(*args)
        assert state(bucket) == before, args
    for args in WRONG_LOOKS:
        with pytest.raises(TypeError):
            bucket.available(*args)
        assert state(bucket) == before, args
    with pytest.raises(TypeError):
        bucket.take(amount=1, now=2.0)  # positional, as every caller has them
    assert state(bucket) == before
