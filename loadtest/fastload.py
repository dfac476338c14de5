"""The throughput load generator: a worker process that drives groups of 4 members at a set rate.

Cheap per delivered message by construction (it shares one core with every other load process):

- senders seal every packet of a step before the step starts (counters ascending, `batch`
  100-byte SENDs coalesced per packet, as a client coalesces what one loop pass produced), then
  the timed window only calls send();
- receivers read with non-blocking recv() and count delivered MESSAGEs from the packet length
  (every MESSAGE has the same size, so a packet of N bytes holds (N - 32) / L of them); one
  packet in `sample_every` is decrypted to check it and to read send timestamps for latency.
  A packet whose length does not fit is decrypted and parsed in full (membership news etc.).
- in "full" mode (the half-load latency step) every packet is decrypted, every message's
  latency recorded and every sender's sequence numbers tracked (loss, duplicates, reordering).
  Packets are held as read (with their receive clock and kernel stamp) and decrypted after the
  timed window: decrypting them in it made the one load core late with its sends, and a late
  sender sends in bursts that queue at the relay, which the added latency then charged to it.
  That step measures two latencies per message. End to end: the receiver's clock when it got
  round to the packet minus the packet's scheduled send time (what a player of this load
  generator sees, its own lag included). Added: the kernel's receive timestamp of the packet
  (SO_TIMESTAMPNS, read with recvmsg) minus the time.time_ns() taken just before the send()
  that handed the packet to the kernel, both CLOCK_REALTIME on one host: the relay's queueing
  and processing plus loopback, without the sender being late or the receiver being busy.
  Both ends are in this process (a group's members all live in one worker), so the receiver
  looks the send time up by (sender index, packet index). The sampled saturation steps keep
  plain recv() (recvmsg costs about 1 us more per packet) and record no send times.

The worker talks to the harness over a multiprocessing Connection: setup, build, go, close.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from loadtest import hist as hdr
from loadtest import payload as bot_payload
from loadtest.machine import pin
from loadtest.rawclient import RawSession, connect, open_sample, ws_frame
from loadtest.streams import RecipientStats
from relay.protocol.constants import ProtocolError
from relay.protocol.messages import Message, decode_relay

_unpack_payload = bot_payload.HEADER.unpack_from
_MAGIC = bot_payload.MAGIC
PACKET_OVERHEAD = 32  # DATA header + tag

# Linux (asm-generic, so x86 and arm): Python has no name for it. SCM_TIMESTAMPNS, the control
# message type, is the same number. The payload is a struct timespec in CLOCK_REALTIME.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_unpack_timespec = _TIMESPEC.unpack


def enable_rx_timestamps(sock: socket.socket, on: bool = True) -> bool:
    """Asks the kernel to stamp every packet this socket receives (SO_TIMESTAMPNS); False if refused."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, int(on))
    except OSError:
        return False
    return True


def rx_stamp(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The kernel receive time (CLOCK_REALTIME ns) in recvmsg()'s ancillary data; 0 when absent.

    UDP: when that datagram arrived. TCP: when the last segment this recvmsg() read arrived (the
    kernel keeps the newest stamp when it merges segments), so for earlier bytes of the same read
    it is late, never early.
    """
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return 0


def recv_stamped(sock: socket.socket, bufsize: int = 65536) -> tuple[bytes, int]:
    """recv() plus the kernel receive timestamp (see rx_stamp); needs enable_rx_timestamps()."""
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, ANCILLARY_SIZE)
    return data, rx_stamp(ancdata)


def _clamp_us(ns: int) -> int:
    """Nanoseconds to whole microseconds within the histograms' range (as hist.record_us does)."""
    return min(max(ns // 1000, hdr.LOWEST_US), hdr.HIGHEST_US)


def message_size(payload_size: int, sender_id: int = 1) -> int:
    """Bytes of one relay MESSAGE [20, sender, bin] in a plaintext (the length-count divisor)."""
    sender_len = 1 if sender_id < 128 else 2 if sender_id < 256 else 3
    bin_head = 2 if payload_size < 256 else 3
    return 2 + sender_len + bin_head + payload_size


def send_message_bytes(data: bytes, targets: list[int] | None) -> bytes:
    """A client SEND [2, data, targets] in msgpack, built by hand (same bytes as Send.encode)."""
    n = len(data)
    head = b"\x93\x02" + (b"\xc4" + bytes((n,)) if n < 256 else b"\xc5" + n.to_bytes(2, "big"))
    if not targets:
        tail = b"\xc0"
    else:
        tail = bytes((0x90 | len(targets),)) + b"".join(
            bytes((t,)) if t < 128 else b"\xcc" + bytes((t,)) if t < 256 else b"\xcd" + t.to_bytes(2, "big")
            for t in targets
        )
    return head + data + tail


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Members that send to each other, on one relay: (user_id, transport, sender index) each."""

    host: str
    port: int
    room_key: str
    members: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    groups: tuple[GroupSpec, ...]
    targeted: bool  # groups share a relay: send to the 3 others by id instead of broadcasting
    payload_size: int = 100
    batch: int = 8
    cpus: frozenset[int] | None = None
    connect_timeout: float = 10.0


class LoadMember:
    """One member's send schedule and receive counters for the current step."""

    __slots__ = (
        "accepted",
        "added",
        "added_counts",
        "arrivals",
        "delivered",
        "dgrams_in",
        "ends",
        "group",
        "held",
        "held_msgs",
        "held_now",
        "held_rx",
        "in_window",
        "index",
        "latencies",
        "latency_counts",
        "out",
        "packets",
        "partial_sends",
        "phase_ns",
        "sent",
        "sent_dgrams",
        "session",
        "slow",
        "stamped",
        "targets",
        "tx_ns",
        "undecryptable",
    )

    def __init__(self, session: RawSession, index: int) -> None:
        self.session = session
        self.index = index
        self.group: list[LoadMember] = []
        self.targets: list[int] | None = None
        self.packets: list[bytes] = []
        self.phase_ns = 0
        self.out = b""
        # full mode: CLOCK_REALTIME ns just before the send() that handed packet i to the kernel
        self.tx_ns: list[int] = []
        self.ends: list[int] = []  # WS: end of packet i in the step's byte stream
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.sent_dgrams = 0
        self.delivered = 0
        self.dgrams_in = 0
        self.slow = 0
        self.undecryptable = 0
        # latency ns and how many messages had it: a run of messages from one sender packet in one
        # received packet shares it, so full mode records runs, not messages. Parallel lists of
        # ints, not tuples: ints are not tracked by the cyclic GC, whose passes would otherwise
        # grow with these lists and stall the timed window.
        self.latencies: list[int] = []
        self.latency_counts: list[int] = []
        # full mode, the same way: kernel receive stamp - actual send time (ns) and message counts;
        # -1 for messages with no receive stamp or no send time to pair them with
        self.added: list[int] = []
        self.added_counts: list[int] = []
        self.accepted = 0  # WS: bytes of the step's stream the kernel has taken
        self.stamped = 0  # WS: packets whose send time is recorded
        self.partial_sends = 0
        self.arrivals = RecipientStats()
        # full mode: packets read in the timed window, decrypted after it (with their receive
        # clock and kernel stamp), so the one load core spends the window sending on time
        self.held: list[bytes] = []
        self.held_now: list[int] = []
        self.held_rx: list[int] = []
        self.held_msgs = 0  # messages in `held`, from packet lengths
        self.in_window = -1  # messages received by the end of the sending window (-1: not yet)


class Worker:
    """Runs in its own process (pinned); the harness drives it step by step."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.members: list[LoadMember] = []
        self.msg_len = message_size(spec.payload_size)
        self.step = 0
        self.rate = 0.0
        self.seconds = 0.0
        self.full = False
        self.sample_every = 16
        self.by_index: dict[int, LoadMember] = {}
        self.stamping = False  # receive sockets have SO_TIMESTAMPNS on
        self._rt_offset = 0  # time.time_ns() - time.monotonic_ns() at the step start

    # ---- setup ------------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        spec = self.spec
        for group in spec.groups:
            members = [
                LoadMember(connect(group.host, group.port, group.room_key, uid, t, spec.connect_timeout), idx)
                for uid, t, idx in group.members
            ]
            for m in members:
                m.group = [o for o in members if o is not m]
                if spec.targeted:
                    m.targets = [o.session.connection_id for o in m.group]
            self.members += members
        # A member only ever receives from its own group, and a group lives in one worker: the
        # receiver finds the sender's send times here.
        self.by_index = {m.index: m for m in self.members}
        max_id = max(m.session.connection_id for m in self.members)
        self.msg_len = message_size(spec.payload_size, max_id)
        self.idle(0.3)  # let the JOIN news arrive and be read
        return {"members": len(self.members), "max_connection_id": max_id}

    def idle(self, seconds: float) -> None:
        """Between steps: keep sessions alive and sockets drained (membership news, pings)."""
        for m in self.members:
            m.session.ping()
        for m in self.members:
            m.session.poll_control(seconds / max(1, len(self.members)))

    # ---- build ------------------------------------------------------------------------------

    def build(self, step: int, rate_per_member: float, seconds: float, full: bool, sample_every: int) -> dict:
        """Seals every packet of the step; timestamps are scheduled offsets from the step start."""
        t0 = time.monotonic()
        spec = self.spec
        self.step, self.rate, self.seconds, self.full = step, rate_per_member, seconds, full
        self.sample_every = max(1, sample_every)
        batch = spec.batch
        interval_ns = batch / rate_per_member * 1e9
        n_packets = max(1, math.ceil(rate_per_member * seconds / batch))
        template = bytearray(bot_payload.build(spec.payload_size, step, 0, 0, 0))
        pack = bot_payload.HEADER.pack_into
        count = len(self.members)
        for k, m in enumerate(self.members):
            m.reset()
            m.session.ping()  # the last counter before the step's packets
            m.phase_ns = int(interval_ns * k / count)
            seal = m.session.packet
            seq = 0
            packets = []
            targets = m.targets
            for i in range(n_packets):
                at = int(m.phase_ns + i * interval_ns)
                parts = []
                for _ in range(batch):
                    seq += 1
                    pack(template, 0, _MAGIC, step & 0xFFFF, m.index, seq, at)
                    parts.append(send_message_bytes(bytes(template), targets))
                packets.append(seal(b"".join(parts)))
            m.packets = packets
            m.out = b""
            m.tx_ns = [0] * n_packets if full else []
            ws = m.session.transport == "ws"
            m.ends = list(itertools.accumulate(map(len, packets))) if full and ws else []
        if full != self.stamping:
            on = [enable_rx_timestamps(m.session.sock, full) for m in self.members]
            self.stamping = full and all(on)
        return {"build_s": time.monotonic() - t0, "packets": n_packets * count}

    # ---- the timed window ---------------------------------------------------------------------

    def run(self, start_ns: int, drain_s: float, tick: Connection | None) -> dict[str, Any]:
        members = self.members
        interval_ns = self.spec.batch / self.rate * 1e9
        end_ns = start_ns + int(self.seconds * 1e9)
        stop_ns = end_ns + int(drain_s * 1e9)
        by_fd = {m.session.sock.fileno(): m for m in members}
        fds = list(by_fd)
        use_select = max(fds) < 1000  # select() has microsecond timeouts; epoll only milliseconds
        poller = None
        if not use_select:
            poller = select.epoll()
            for fd in fds:
                poller.register(fd, select.EPOLLIN)
        while time.monotonic_ns() < start_ns:
            time.sleep(min(0.001, max(0.0, (start_ns - time.monotonic_ns()) / 1e9)))
        batch = self.spec.batch
        next_tick = start_ns + 500_000_000
        sending = True
        udp_recv = self._recv_udp_stamped if self.full else self._recv_udp
        ws_recv = self._recv_ws_stamped if self.full else self._recv_ws
        while True:
            now = time.monotonic_ns()
            if now >= stop_ns:
                break
            timeout = 0.05
            if sending:
                if now >= end_ns:
                    sending = False
                    for m in members:
                        m.in_window = m.delivered + m.held_msgs
                else:
                    elapsed = now - start_ns
                    next_due = end_ns
                    for m in members:
                        due = int((elapsed - m.phase_ns) // interval_ns) + 1
                        if due > len(m.packets):
                            due = len(m.packets)
                        if due > m.sent_dgrams or m.out:
                            self._send(m, due)
                        if m.sent_dgrams < len(m.packets):
                            at = start_ns + m.phase_ns + int(m.sent_dgrams * interval_ns)
                            if at < next_due:
                                next_due = at
                    timeout = max(0.0, (next_due - time.monotonic_ns()) / 1e9)
            if tick is not None and now >= next_tick:
                next_tick = now + 500_000_000
                tick.send(
                    (
                        "tick",
                        {
                            "t": (now - start_ns) / 1e9,
                            "sent": sum(m.sent_dgrams for m in members) * batch,
                            "delivered": sum(m.delivered + m.held_msgs for m in members),
                            "dgrams_in": sum(m.dgrams_in for m in members),
                        },
                    )
                )
            if use_select:
                ready = select.select(fds, (), (), timeout)[0]
            else:
                assert poller is not None
                ready = [fd for fd, _ in poller.poll(timeout)]
            for fd in ready:
                m = by_fd[fd]
                if m.session.transport == "udp":
                    udp_recv(m)
                else:
                    ws_recv(m)
        if poller is not None:
            poller.close()
        for m in members:
            if m.in_window < 0:
                m.in_window = m.delivered + m.held_msgs
            self._open_held(m)
        return self._result(start_ns)

    def _open_held(self, m: LoadMember) -> None:
        """Full mode, after the window: decrypts and records what was held, in arrival order."""
        held, nows, rxs = m.held, m.held_now, m.held_rx
        m.held, m.held_now, m.held_rx, m.held_msgs = [], [], [], 0
        for packet, now, rx in zip(held, nows, rxs, strict=True):
            self._open(m, packet, now, rx=rx)

    def _send(self, m: LoadMember, due: int) -> None:
        session = m.session
        packets = m.packets
        full = self.full
        if session.transport == "udp":
            send = session.sock.send
            i = m.sent_dgrams
            try:
                if full:
                    tx = m.tx_ns
                    clock = time.time_ns
                    while i < due:
                        tx[i] = clock()  # a retry after EAGAIN overwrites it
                        send(packets[i])
                        i += 1
                else:
                    while i < due:
                        send(packets[i])
                        i += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                session.closed = True
            m.sent_dgrams = i
            return
        out = m.out + b"".join(packets[m.sent_dgrams : due]) if due > m.sent_dgrams else m.out
        m.sent_dgrams = due
        t = time.time_ns() if full else 0
        try:
            n = session.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            session.closed = True
            n = 0
            out = b""
        m.out = out[n:]
        if full:
            # A packet's send time is that of the send() that took its last byte: the relay cannot
            # read the frame before, and bytes still in m.out wait on this generator, not the relay.
            m.partial_sends += n < len(out)
            accepted = m.accepted = m.accepted + n
            ends = m.ends
            tx = m.tx_ns
            k = m.stamped
            while k < due and ends[k] <= accepted:
                tx[k] = t
                k += 1
            m.stamped = k

    def _recv_udp(self, m: LoadMember) -> None:
        recv = m.session.sock.recv
        msg_len = self.msg_len
        full = self.full
        every = self.sample_every
        while True:
            try:
                packet = recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                m.session.closed = True
                return
            self._count(m, packet, msg_len, full, every)

    def _recv_udp_stamped(self, m: LoadMember) -> None:
        """Full mode: every datagram with its kernel receive timestamp (decrypted after the window)."""
        recvmsg = m.session.sock.recvmsg
        msg_len = self.msg_len
        while True:
            try:
                packet, ancdata, _flags, _addr = recvmsg(65536, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                m.session.closed = True
                return
            try:  # SO_TIMESTAMPNS is the only control message these sockets ask for
                sec, nsec = _unpack_timespec(ancdata[0][2])
                rx = sec * 1_000_000_000 + nsec
            except (IndexError, struct.error):
                rx = rx_stamp(ancdata)
            self._count(m, packet, msg_len, True, 1, rx)

    def _count(self, m: LoadMember, packet: bytes, msg_len: int, full: bool, every: int, rx: int = 0) -> None:
        m.dgrams_in += 1
        body = len(packet) - PACKET_OVERHEAD
        if body > 0 and body % msg_len == 0:
            if full:
                m.held.append(packet)
                m.held_now.append(time.monotonic_ns())
                m.held_rx.append(rx)
                m.held_msgs += body // msg_len
            else:
                m.delivered += body // msg_len
                if m.dgrams_in % every == 0:
                    self._open(m, packet, time.monotonic_ns())
        else:
            m.slow += 1
            self._open(m, packet, time.monotonic_ns(), count=True, rx=rx)

    def _open(self, m: LoadMember, packet: bytes, now: int, count: bool = False, rx: int = 0) -> None:
        """Decrypts one packet; records latency of each bot MESSAGE (and counts, in full mode).

        `rx` (full mode) is the packet's kernel receive stamp: with the sender's recorded send
        time of the packet the message left in, it gives the message's added latency.
        """
        plaintext = open_sample(m.session, packet)
        if plaintext is None:
            m.undecryptable += 1
            return
        step = self.step & 0xFFFF
        base = self._start_ns
        full = self.full or count
        track = self.full
        n = len(plaintext)
        hop = 2 + 1 + 2 + self.spec.payload_size
        msg_len = self.msg_len
        latencies = m.latencies
        latency_counts = m.latency_counts
        added = m.added
        added_counts = m.added_counts
        i = 0
        # fast path: every message is [20, sender<128, bin8(size)]
        if track:
            # Consecutive messages from one sender packet (same sender, same scheduled time)
            # share both latencies: one run, one look-up of the send time, one record.
            arrive = m.arrivals.arrive
            run_sender = run_at = -1
            run_added = run_n = 0
            while (
                i + msg_len <= n
                and plaintext[i] == 0x93
                and plaintext[i + 1] == 0x14
                and plaintext[i + 3] == 0xC4
            ):
                magic, mstep, sender, seq, at = _unpack_payload(plaintext, i + 5)
                i += hop
                if magic != _MAGIC or mstep != step:
                    continue
                arrive(sender, seq)
                if at == run_at and sender == run_sender:
                    run_n += 1
                    continue
                if run_n:
                    latencies.append(now - base - run_at)
                    latency_counts.append(run_n)
                    added.append(run_added)
                    added_counts.append(run_n)
                    m.delivered += run_n
                run_sender, run_at, run_n = sender, at, 1
                run_added = self._added_ns(sender, seq, rx)
            if run_n:
                latencies.append(now - base - run_at)
                latency_counts.append(run_n)
                added.append(run_added)
                added_counts.append(run_n)
                m.delivered += run_n
        else:
            while (
                i + msg_len <= n
                and plaintext[i] == 0x93
                and plaintext[i + 1] == 0x14
                and plaintext[i + 3] == 0xC4
            ):
                magic, mstep, sender, seq, at = _unpack_payload(plaintext, i + 5)
                if magic == _MAGIC and mstep == step:
                    latencies.append(now - base - at)
                    latency_counts.append(1)
                    if full:
                        m.delivered += 1
                i += hop
        if i >= n:
            return
        try:
            messages = decode_relay(plaintext[i:])
        except ProtocolError:
            m.undecryptable += 1
            return
        for msg in messages:
            if isinstance(msg, Message):
                parsed = bot_payload.parse(msg.data)
                if parsed and parsed[0] == step:
                    latencies.append(now - base - parsed[3])
                    latency_counts.append(1)
                    if full:
                        m.delivered += 1
                    if track:
                        m.arrivals.arrive(parsed[1], parsed[2])
                        added.append(self._added_ns(parsed[1], parsed[2], rx))
                        added_counts.append(1)
            else:
                m.session.handle_control(msg.encode())

    def _added_ns(self, sender: int, seq: int, rx: int) -> int:
        """Added latency of message `seq` from `sender` in a packet received at `rx` (kernel
        stamp), from the send time of the sender packet that held it; -1 if it cannot be paired."""
        src = self.by_index.get(sender)
        if src is None or not rx:
            return -1
        k = (seq - 1) // self.spec.batch
        tx = src.tx_ns[k] if 0 <= k < len(src.tx_ns) else 0
        return rx - tx if tx else -1

    def _recv_ws(self, m: LoadMember) -> None:
        session = m.session
        try:
            data = session.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            session.closed = True
            return
        if not data:
            session.closed = True
            return
        reader = session.reader
        assert reader is not None
        reader.buf += data
        self._ws_frames(m, reader.buf, 0)

    def _recv_ws_stamped(self, m: LoadMember) -> None:
        """Full mode: reads frame by frame, each read ending where the next frame ends.

        A TCP read carries the receive stamp of its last segment, so a read of several frames
        would give the earlier ones a late stamp. The relay writes each frame at once (one
        segment, or a few for a large one), so a read that ends with a frame's last byte carries
        that frame's arrival: two reads per frame (header, rest), in the half-load step only.
        """
        session = m.session
        recvmsg = session.sock.recvmsg
        reader = session.reader
        assert reader is not None
        buf = reader.buf
        rx = 0
        while True:
            n = len(buf)
            want = 2 - n  # bytes that complete the next frame's header, then the frame
            if n >= 2:
                length = buf[1] & 0x7F
                head = 2 if length < 126 else 4 if length == 126 else 10
                want = head - n
                if want <= 0:
                    if length == 126:
                        length = (buf[2] << 8) | buf[3]
                    elif length == 127:
                        length = int.from_bytes(buf[2:10], "big")
                    want = head + length - n
                    if not want:  # complete: the read that completed it gave `rx`
                        self._ws_frames(m, buf, rx)
                        continue
            try:
                data, ancdata, _flags, _addr = recvmsg(want, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                session.closed = True
                return
            if not data:
                session.closed = True
                return
            buf += data
            rx = rx_stamp(ancdata)

    def _ws_frames(self, m: LoadMember, buf: bytearray, rx: int) -> None:
        """Handles every complete frame at the front of `buf` (and removes them)."""
        session = m.session
        full = self.full
        pos = 0
        end = len(buf)
        msg_len = self.msg_len
        every = self.sample_every
        while end - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if end - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            start = pos + head
            pos = start + length
            if opcode == 2:
                body = length - PACKET_OVERHEAD
                if not full and body > 0 and body % msg_len == 0:
                    m.dgrams_in += 1
                    m.delivered += body // msg_len
                    if m.dgrams_in % every == 0:
                        self._open(m, bytes(buf[start:pos]), time.monotonic_ns())
                else:
                    self._count(m, bytes(buf[start:pos]), msg_len, full, every, rx)
            elif opcode == 9 and not m.out:  # never inside a half-sent frame of ours (skipped then)
                with contextlib.suppress(OSError):
                    session.sock.send(ws_frame(bytes(buf[start:pos]), 10))
            elif opcode == 8:
                session.closed = True
        del buf[:pos]

    _start_ns = 0

    def _result(self, start_ns: int) -> dict[str, Any]:
        batch = self.spec.batch
        hist = hdr.new()
        added = hdr.new()
        late = hdr.new()
        unstamped = 0
        for m in self.members:
            for v, n in zip(m.latencies, m.latency_counts, strict=True):
                hist.record_value(_clamp_us(v), n)
            for v, n in zip(m.added, m.added_counts, strict=True):
                if v < 0:
                    unstamped += n
                else:
                    added.record_value(_clamp_us(v), n)
        if self.full:
            # sender lateness: actual send (CLOCK_REALTIME) - scheduled send (CLOCK_MONOTONIC)
            interval_ns = batch / self.rate * 1e9
            base = start_ns + self._rt_offset
            for m in self.members:
                for i, t in enumerate(m.tx_ns):
                    if t:
                        hdr.record_us(late, (t - base - int(m.phase_ns + i * interval_ns)) / 1000)
        per_recipient = {}
        for m in self.members:
            sent = sum(o.sent_dgrams * batch for o in m.group)
            per_recipient[m.session.user_id] = {
                "sent": sent,
                "delivered": m.delivered,
                "lost": sent - m.delivered,
                "datagrams": m.dgrams_in,
                "slow_path": m.slow,
                "undecryptable": m.undecryptable,
                "closed": m.session.closed,
                "streams": m.arrivals.to_json() if self.full else {},
            }
        return {
            "sent_messages": sum(m.sent_dgrams for m in self.members) * batch,
            "sent_packets": sum(m.sent_dgrams for m in self.members),
            "planned_packets": sum(len(m.packets) for m in self.members),
            "delivered": sum(m.delivered for m in self.members),
            "delivered_in_window": sum(m.in_window for m in self.members),
            "datagrams_in": sum(m.dgrams_in for m in self.members),
            "per_recipient": per_recipient,
            "latency_hist": hdr.encode(hist),
            "latency_samples": sum(sum(m.latency_counts) for m in self.members),
            "added_hist": hdr.encode(added),
            "added_unstamped": unstamped,
            "sender_lateness_hist": hdr.encode(late),
            "partial_sends": sum(m.partial_sends for m in self.members),
            "rx_timestamps": self.stamping,
        }

    def go(self, start_ns: int, drain_s: float, tick: Connection | None) -> dict[str, Any]:
        self._start_ns = start_ns
        self._rt_offset = time.time_ns() - time.monotonic_ns()
        result = self.run(start_ns, drain_s, tick)
        for m in self.members:
            m.packets = []
            m.tx_ns = []
            m.ends = []
        result.update(self.quiesce())
        return result

    def quiesce(self, quiet: float = 0.3, limit: float = 20.0) -> dict[str, Any]:
        """Reads (without decrypting) until nothing has arrived for `quiet` s, so a backlog the
        relay still holds after an overloaded step is not counted in the next one."""
        by_fd = {m.session.sock.fileno(): m for m in self.members if not m.session.closed}
        t0 = last = time.monotonic()
        late = 0
        while by_fd and time.monotonic() - last < quiet and time.monotonic() - t0 < limit:
            ready = select.select(list(by_fd), (), (), 0.05)[0]
            for fd in ready:
                m = by_fd[fd]
                session = m.session
                try:
                    if session.transport == "udp":
                        while True:
                            session.sock.recv(65536)
                            late += 1
                    else:
                        data = session.sock.recv(1 << 20)
                        if not data:
                            session.closed = True
                            del by_fd[fd]
                            continue
                        assert session.reader is not None
                        for opcode, body in session.reader.feed(data):
                            late += opcode == 2
                            if opcode == 9:
                                session.sock.send(ws_frame(body, 10))
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    session.closed = True
                    by_fd.pop(fd, None)
            if ready:
                last = time.monotonic()
        return {"late_packets": late, "quiesce_s": time.monotonic() - t0}

    def close(self) -> None:
        for m in self.members:
            m.session.bye()
        time.sleep(0.05)
        for m in self.members:
            m.session.close()


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Process entry point: pin, uvloop is not needed (plain sockets), then obey the harness."""
    pin(set(spec.cpus) if spec.cpus else None)
    worker = Worker(spec)
    try:
        conn.send(("ready", worker.setup()))
    except Exception as exc:  # reported to the harness, which stops the scenario
        conn.send(("error", f"setup failed: {exc!r}"))
        return
    try:
        while True:
            if not conn.poll(1.0):
                worker.idle(0.05)
                continue
            cmd, args = conn.recv()
            if cmd == "build":
                conn.send(("built", worker.build(**args)))
            elif cmd == "go":
                conn.send(("result", worker.go(args["start_ns"], args["drain_s"], conn)))
            elif cmd == "idle":
                worker.idle(args.get("seconds", 0.2))
                conn.send(("idled", {}))
            elif cmd == "close":
                worker.close()
                conn.send(("closed", {"pid": os.getpid()}))
                return
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        worker.close()
