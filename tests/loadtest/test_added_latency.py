"""The half-load step's two latency figures: "added" pairs the kernel's receive timestamp
(SO_TIMESTAMPNS) with the sender's actual send time; "end to end" runs from the scheduled send
time to when the worker processed the packet. Real loopback sockets and a real relay."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from loadtest.fastload.member import LoadMember
from loadtest.fastload.receiver import GS2_RELAYED, Receiver
from loadtest.fastload.rxstamps import enable_rx_timestamps, recv_stamped
from loadtest.progress import Live
from loadtest.rawclient import RawSession
from loadtest.scenarios import throughput
from relay.protocol.wsframes import BINARY, server_frame

# serial: these measure CPU and latency, so `make test` runs them alone (Makefile)
pytestmark = pytest.mark.serial


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.settimeout(2.0)
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=2.0)
        b, _ = server.accept()
    try:
        b.settimeout(2.0)
        yield a, b
    finally:
        a.close()
        b.close()


def test_udp_receive_stamp_lies_between_send_and_read(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp_pair
    assert enable_rx_timestamps(receiver)
    for i in range(3):
        before = time.time_ns()
        sender.send(b"x%d" % i)
        data, rx = recv_stamped(receiver)
        after = time.time_ns()
        assert data == b"x%d" % i
        assert before <= rx <= after


def test_udp_without_timestamps_reports_none(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp_pair
    sender.send(b"plain")
    assert recv_stamped(receiver) == (b"plain", 0)


def test_tcp_stamp_is_that_of_the_last_segment_read(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """Two writes read by one recvmsg: the stamp is the second one's arrival (late for the first)."""
    sender, receiver = tcp_pair
    assert enable_rx_timestamps(receiver)
    before = time.time_ns()
    sender.sendall(b"a" * 100)
    time.sleep(0.02)
    second = time.time_ns()
    sender.sendall(b"b" * 100)
    time.sleep(0.02)
    data = b""
    stamps = []
    while len(data) < 200:
        chunk, rx = recv_stamped(receiver, 1 << 16)
        assert chunk
        data += chunk
        stamps.append(rx)
    after = time.time_ns()
    assert data == b"a" * 100 + b"b" * 100
    assert all(before <= rx <= after for rx in stamps)
    assert stamps[-1] >= second  # the read that ended with the second write carries its stamp


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["udp", "ws", "gs2"])
def test_full_step_reports_added_and_end_to_end_latency(transport: str) -> None:
    """A light full-mode step: every delivery is paired with its send time, and the relay's
    added latency cannot exceed the end-to-end figure that also holds the generator's lag.
    GS2 (one message a frame) stamps only each read's last frame: its added figure is a sample,
    every frame still counted and timed end to end."""
    config = throughput.ThroughputConfig.quick(transports=(transport,), baseline=False, drain_seconds=0.3)
    load = throughput.Load(config, transport, "test")
    try:
        with Live("test", total=1.0, enabled=False) as live:
            step = load.step(1, 2000.0, 0.5, True, live, [])
    finally:
        load.close()
    assert step["mode"] == "full" and step["rx_timestamps"]
    assert step["lost"] == 0 and step["delivered"] > 0
    # held packets are decrypted after the window, yet counted for the window they arrived in
    # (counted by when they were decrypted, none would be): at this light load nearly all arrive
    # in it (a relay slowed by a busy machine may deliver the last few after the window closes),
    # and the rate is taken from those
    in_window, due = step["delivered_in_window"], step["due_deliveries"]
    assert 0.9 * step["delivered"] <= in_window <= step["delivered"]
    assert step["behind_ratio"] == pytest.approx((due - in_window) / due)
    assert step["delivered_per_s"] == in_window / 0.5
    added, e2e, late = step["added_latency"], step["latency"], step["sender_lateness"]
    assert e2e["count"] == step["delivered"]
    assert late["count"] == step["sent_messages"] // config.batch  # one per packet sent
    assert added["min_ms"] <= e2e["min_ms"]
    if transport == "gs2":
        assert added["count"] > 0 and added["count"] + step["added_unstamped"] == step["delivered"]
        assert 0 < added["p50_ms"] <= e2e["p99_ms"]
    else:
        assert added["count"] == step["delivered"] and step["added_unstamped"] == 0
        assert 0 < added["p50_ms"] <= e2e["p50_ms"]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["udp", "gs2"])
def test_a_steps_warm_up_is_counted_but_not_timed(transport: str) -> None:
    """fleet-shape starts every room at once after seconds of silence (WARMUP_NOTE): the first
    `warmup` seconds' messages count as delivered or lost, and only the rest are timed."""
    config = throughput.ThroughputConfig.quick(transports=(transport,), baseline=False, drain_seconds=0.3)
    load = throughput.Load(config, transport, "test")
    try:
        with Live("test", total=1.0, enabled=False) as live:
            step = load.step(1, 2000.0, 0.8, True, live, [], warmup=0.4)
    finally:
        load.close()
    assert step["lost"] == 0 and step["delivered"] == step["due_deliveries"]
    timed = step["latency"]["count"]
    assert 0.35 * step["delivered"] <= timed <= 0.65 * step["delivered"]  # the second half's
    if transport == "udp":
        assert step["added_latency"]["count"] == timed
    else:  # a sample of those (one frame a read)
        assert 0 < step["added_latency"]["count"] <= timed


def test_a_gs2_read_stamps_its_last_frame_only_where_the_read_ends_with_it(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Frames read together may have come in different segments, and a read carries its last
    segment's stamp: only the frame that ends the read gets it, and none does when the read
    ends inside a frame."""
    sender, sock = tcp_pair
    assert enable_rx_timestamps(sock)
    sock.setblocking(False)
    session = RawSession("gs2", sock, "u", 1, None, None, None)  # type: ignore[arg-type]
    m = LoadMember(session, 0)
    receiver = Receiver(payload_size=20, batch=1)
    receiver.full = True
    frame = server_frame(BINARY, GS2_RELAYED + b"x" * 20)
    before = time.time_ns()
    sender.sendall(frame)
    time.sleep(0.02)
    sender.sendall(frame * 2)
    time.sleep(0.02)
    receiver.recv_gs2_stamped(m)
    after = time.time_ns()
    assert len(m.held) == 3 and m.held_msgs == 3 and m.held_rx[:2] == [0, 0]
    assert before <= m.held_rx[2] <= after
    sender.sendall(frame + frame[:10])  # the read ends inside the second frame
    time.sleep(0.02)
    receiver.recv_gs2_stamped(m)
    assert len(m.held) == 4 and m.held_rx[3] == 0
    sender.sendall(frame[10:])
    time.sleep(0.02)
    receiver.recv_gs2_stamped(m)
    assert len(m.held) == 5 and m.held_rx[4] >= after
    assert not session.ws_in


@pytest.mark.slow
def test_sampled_step_records_no_added_latency() -> None:
    config = throughput.ThroughputConfig.quick(transports=("udp",), baseline=False, drain_seconds=0.3)
    load = throughput.Load(config, "udp", "test")
    try:
        with Live("test", total=1.0, enabled=False) as live:
            step = load.step(1, 2000.0, 0.3, False, live, [])
    finally:
        load.close()
    assert step["mode"] == "sampled" and not step["rx_timestamps"]
    assert step["latency"]["count"] > 0
    assert step["added_latency"] == {"count": 0} and step["sender_lateness"] == {"count": 0}
