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

The worker talks to the harness over a multiprocessing Connection: setup, build, go, close.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
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
        "arrivals",
        "delivered",
        "dgrams_in",
        "group",
        "index",
        "latencies",
        "out",
        "packets",
        "phase_ns",
        "sent",
        "sent_dgrams",
        "session",
        "slow",
        "targets",
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
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.sent_dgrams = 0
        self.delivered = 0
        self.dgrams_in = 0
        self.slow = 0
        self.undecryptable = 0
        self.latencies: list[int] = []
        self.arrivals = RecipientStats()


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
        udp_recv = self._recv_udp
        ws_recv = self._recv_ws
        while True:
            now = time.monotonic_ns()
            if now >= stop_ns:
                break
            timeout = 0.05
            if sending:
                if now >= end_ns:
                    sending = False
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
                            "delivered": sum(m.delivered for m in members),
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
        return self._result(start_ns)

    def _send(self, m: LoadMember, due: int) -> None:
        session = m.session
        packets = m.packets
        if session.transport == "udp":
            send = session.sock.send
            i = m.sent_dgrams
            try:
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
        try:
            n = session.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            session.closed = True
            n = len(out)
        m.out = out[n:]

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

    def _count(self, m: LoadMember, packet: bytes, msg_len: int, full: bool, every: int) -> None:
        m.dgrams_in += 1
        body = len(packet) - PACKET_OVERHEAD
        if body > 0 and body % msg_len == 0:
            if full:
                self._open(m, packet, time.monotonic_ns())
            else:
                m.delivered += body // msg_len
                if m.dgrams_in % every == 0:
                    self._open(m, packet, time.monotonic_ns())
        else:
            m.slow += 1
            self._open(m, packet, time.monotonic_ns(), count=True)

    def _open(self, m: LoadMember, packet: bytes, now: int, count: bool = False) -> None:
        """Decrypts one packet; records latency of each bot MESSAGE (and counts, in full mode)."""
        plaintext = open_sample(m.session, packet)
        if plaintext is None:
            m.undecryptable += 1
            return
        step = self.step & 0xFFFF
        base = self._start_ns
        full = self.full or count
        track = self.full
        n = len(plaintext)
        size = self.spec.payload_size
        msg_len = self.msg_len
        i = 0
        # fast path: every message is [20, sender<128, bin8(size)]
        while (
            i + msg_len <= n
            and plaintext[i] == 0x93
            and plaintext[i + 1] == 0x14
            and plaintext[i + 3] == 0xC4
        ):
            magic, mstep, sender, seq, at = _unpack_payload(plaintext, i + 5)
            if magic == _MAGIC and mstep == step:
                m.latencies.append(now - base - at)
                if full:
                    m.delivered += 1
                if track:
                    m.arrivals.arrive(sender, seq)
            i += 2 + 1 + 2 + size
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
                    m.latencies.append(now - base - parsed[3])
                    if full:
                        m.delivered += 1
                    if track:
                        m.arrivals.arrive(parsed[1], parsed[2])
            else:
                m.session.handle_control(msg.encode())

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
        buf = reader.buf
        buf += data
        pos = 0
        end = len(buf)
        msg_len = self.msg_len
        full = self.full
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
                    self._count(m, bytes(buf[start:pos]), msg_len, full, every)
            elif opcode == 9:
                with contextlib.suppress(OSError):
                    session.sock.send(ws_frame(bytes(buf[start:pos]), 10))
            elif opcode == 8:
                session.closed = True
        del buf[:pos]

    _start_ns = 0

    def _result(self, start_ns: int) -> dict[str, Any]:
        batch = self.spec.batch
        hist = hdr.new()
        for m in self.members:
            for v in m.latencies:
                hdr.record_us(hist, v / 1000)
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
            "datagrams_in": sum(m.dgrams_in for m in self.members),
            "per_recipient": per_recipient,
            "latency_hist": hdr.encode(hist),
            "latency_samples": sum(len(m.latencies) for m in self.members),
        }

    def go(self, start_ns: int, drain_s: float, tick: Connection | None) -> dict[str, Any]:
        self._start_ns = start_ns
        result = self.run(start_ns, drain_s, tick)
        for m in self.members:
            m.packets = []
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
