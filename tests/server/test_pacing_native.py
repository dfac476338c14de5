"""The pacer's controller: the C implementation (relay/server/_pacing.c) and the Python one
(relay/server/pacing.py's PyPacer) give the same paces and keep the same numbers, bit for bit,
under any sequence of readings and of the writes LoopPacer makes; and the port's read in C
(relay/server/_lane.c) samples a C pacer's unpaced windows itself, calling the relay only when a
reading starts the pace. The C one is in use wherever it was built; `.ci/run` requires it
(RELAY_REQUIRE_NATIVE), elsewhere its tests skip saying why."""

from __future__ import annotations

import math
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.server import links, pacing
from relay.server.pacing import WINDOW, PyPacer

from ..native import built, check_in_use, printed_with_pure_python

_pacing = built("relay.server._pacing")

NOT_BUILT = "relay/server/_pacing.c is not built here (it needs a C compiler)"
needs_c = pytest.mark.skipif(_pacing is None, reason=NOT_BUILT)
CPacer = _pacing.Pacer if _pacing is not None else None
FIELDS = ("budget", "max_pace", "pace", "share", "next_sample", "lane_due")


def test_the_c_part_is_built_where_it_is_required_and_in_use_unless_refused() -> None:
    check_in_use(_pacing, NOT_BUILT, pacing.NATIVE, pacing.Pacer, (CPacer, PyPacer))


@needs_c
def test_relay_pure_python_selects_the_python_implementation() -> None:
    code = "from relay.server import pacing as p; print(p.NATIVE, p.Pacer.__module__)"
    assert printed_with_pure_python(code, "1") == ["False", "relay.server.pacing"]
    assert printed_with_pure_python(code, "") == ["True", "relay.server._pacing"]


def bits(value: float) -> str:
    return float(value).hex()


def state(pacer: object) -> tuple[object, ...]:
    last = pacer._last  # type: ignore[attr-defined]
    return (
        *(bits(getattr(pacer, name)) for name in FIELDS),
        None if last is None else tuple(map(bits, last)),
    )


# Readings as a relay takes them: a window or more apart (sometimes not, or backwards: a clock is
# not ours), CPU from none to several cores' worth; budgets and paces as LoopPacer sets them.
gaps = st.one_of(
    st.just(WINDOW),
    st.floats(0, 2, allow_nan=False, allow_infinity=False),
    st.just(0.0),
    st.floats(-1, 0, allow_nan=False, allow_infinity=False),
)
shares = st.one_of(st.floats(0, 4, allow_nan=False, allow_infinity=False), st.just(0.0), st.just(1.0))
numbers = st.one_of(st.floats(0, 1, allow_nan=False, allow_infinity=False), st.just(0.0), st.just(math.inf))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("sample"), gaps, shares),
        st.tuples(st.just("set"), st.sampled_from(("budget", "max_pace", "pace")), numbers),
        st.tuples(st.just("settle")),
    ),
    max_size=80,
)


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    budget=st.one_of(st.just(0.125), st.floats(0, 16, allow_nan=False, allow_infinity=False)),
    max_pace=st.one_of(st.just(0.008), st.floats(0, 0.1, allow_nan=False, allow_infinity=False)),
    start=st.floats(0, 1e7, allow_nan=False, allow_infinity=False),
    ops=operations,
)
def test_the_c_and_python_pacers_agree_bit_for_bit(
    budget: float, max_pace: float, start: float, ops: list
) -> None:
    py, c = PyPacer(budget=budget, max_pace=max_pace), CPacer(budget=budget, max_pace=max_pace)
    assert state(c) == state(py)
    now, cpu = start, 0.0
    for op in ops:
        if op[0] == "sample":
            cpu += max(op[1], 0.0) * op[2] * max(budget, 1e-3)
            now += op[1]
            assert bits(c.sample(now, cpu)) == bits(py.sample(now, cpu)), op
        elif op[0] == "set":
            setattr(py, op[1], op[2])
            setattr(c, op[1], op[2])
        else:
            py.settle()
            c.settle()
        assert state(c) == state(py), op


@needs_c
def test_the_c_pacer_takes_pacing_py_s_defaults_and_keywords() -> None:
    assert state(CPacer()) == state(PyPacer())
    kwargs = {
        "budget": 0.5,
        "max_pace": 0.004,
        "pace": 0.002,
        "share": 0.3,
        "next_sample": 7.0,
        "lane_due": 7.0,
    }
    assert state(CPacer(**kwargs)) == state(PyPacer(**kwargs))
    with pytest.raises(TypeError):
        CPacer(budget="much")  # type: ignore[arg-type]


def a_lane_pacing(pacer: object) -> tuple[object, socket.socket, socket.socket, list[float]]:
    """A lane over a socket of the test's own whose one hook is `pacer`'s, as app.py makes it:
    (lane, its socket, a socket to send to it from, the times the hook was called with)."""
    from relay.protocol.keys import generate_room_key
    from relay.server.config import RelayConfig
    from relay.server.metrics import Counters
    from relay.server.room import Room

    counters = Counters()
    relay_room = Room(RelayConfig(room_key=generate_room_key()), counters, time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.connect(sock.getsockname())
    called: list[float] = []
    assert links.LANE is not None
    hooks = ((pacer, "lane_due", called.append),)
    lane = links.LANE(
        sock.fileno(), relay_room, counters, lambda *_: None, lambda *_: None, 1100, 1168, hooks
    )
    return lane, sock, peer, called


def busy(seconds: float) -> None:
    """CPU spent, not slept: the process's CPU clock moves."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.skipif(
    links.LANE is None or _pacing is None,
    reason="the lane or relay/server/_pacing.c is not built, or RELAY_PURE_PYTHON refuses the lane",
)
@pytest.mark.parametrize("budget", [1e9, 1e-6])
def test_the_lane_samples_an_unpaced_window_itself(budget: float) -> None:
    """At the end of an unpaced relay's window the lane takes the CPU reading into the C pacer
    (a window later the next is due) and calls the relay's hook only when that starts the pace;
    a paced relay's hook is called after every read (its rest)."""
    pacer = pacing.Pacer(budget=budget, max_pace=0.008)
    pacer.settle()
    lane, sock, peer, called = a_lane_pacing(pacer)
    try:

        def a_pass() -> None:
            peer.send(b"not a packet")
            time.sleep(0.005)
            lane.read()  # type: ignore[attr-defined]

        a_pass()  # due at once: the first reading, which only starts the window
        assert pacer._last is not None and called == []
        first = pacer._last
        assert pacer.lane_due == pacer.next_sample == pytest.approx(first[0] + WINDOW, abs=1e-9)
        a_pass()  # within the window: nothing read
        assert pacer._last == first
        busy(0.02)
        time.sleep(max(0.0, pacer.next_sample - time.monotonic()) + 0.005)
        a_pass()
        assert pacer._last[0] > first[0] and pacer._last[1] >= first[1] + 0.02
        if budget > 1:  # far under its budget: read, and the relay not called
            assert pacer.pace == 0.0 and called == [] and pacer.lane_due == pacer.next_sample
        else:  # over it at once: paced at the longest, and the relay told of this read and each after
            assert pacer.pace == 0.008 and len(called) == 1 and pacer.lane_due == -math.inf
            a_pass()
            assert len(called) == 2
    finally:
        lane.close()  # type: ignore[attr-defined]
        sock.close()
        peer.close()
