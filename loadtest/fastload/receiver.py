"""The receiver side: reading, counting and sampling what the relay delivers to each member.

Counting is by packet length (every MESSAGE of a step has the same size), so a receiver pays
per packet, not per message, and decrypts only one packet in `sample_every`, or, in full mode,
holds every packet as read (with its receive clock and kernel stamp) and decrypts it after the
timed window. WebSocket frames are located in the read buffer with the codec's `parse_head`
(relay/protocol/wsframes.py), so a payload is copied only when it is kept or decrypted. A GS2
member's frames are one Container each: a relayed message is told by its first bytes and
counted as one, and sampled (or, in full mode, every one) parsed for its payload's stamps.
"""

from __future__ import annotations

import contextlib
import struct
import time

from google.protobuf.message import DecodeError

from loadtest import payload as bot_payload
from loadtest.fastload.member import LoadMember
from loadtest.fastload.messages import PACKET_OVERHEAD, message_size
from loadtest.fastload.rxstamps import ANCILLARY_SIZE, rx_stamp, unpack_timespec
from loadtest.rawclient import RawSession, open_sample
from relay.protocol.constants import ProtocolError
from relay.protocol.gs2 import wire
from relay.protocol.messages import Message, decode_relay
from relay.protocol.wsframes import BINARY, CLOSE, PING, PONG, client_frame, missing, parse_head, read_frames

_unpack_payload = bot_payload.HEADER.unpack_from
_MAGIC = bot_payload.MAGIC
GS2_RELAYED = b"\x08\x80\x80\x80\x80\x03"  # a Container's first bytes: type BINARY_MESSAGE


class Receiver:
    """A worker's receiving for the current step: what it counts by, samples and records against.

    The worker sets `step`, `full`, `sample_every`, `msg_len` and `measure_from` when it builds
    a step and `start_ns` when the step starts; `by_index` finds a sender's recorded send times (a
    group's members all live in one worker).
    """

    def __init__(self, payload_size: int, batch: int) -> None:
        self.payload_size = payload_size
        self.batch = batch
        self.msg_len = message_size(payload_size)
        self.by_index: dict[int, LoadMember] = {}
        self.step = 0
        self.full = False
        self.sample_every = 16
        self.start_ns = 0
        self.measure_from = 0
        """ns into the step: a message scheduled earlier (the step's warm-up) is counted, but its
        latencies are not recorded."""

    def open_held(self, m: LoadMember) -> None:
        """Full mode, after the window: decrypts and records what was held, in arrival order."""
        held, nows, rxs = m.held, m.held_now, m.held_rx
        m.held, m.held_now, m.held_rx, m.held_msgs = [], [], [], 0
        opener = self.open_gs2 if m.session.transport == "gs2" else self.open
        for packet, now, rx in zip(held, nows, rxs, strict=True):
            opener(m, packet, now, rx=rx)

    def recv_udp(self, m: LoadMember) -> None:
        """Sampled mode: every queued datagram, counted by length (plain recv(), no stamps)."""
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
            self.count_packet(m, packet, msg_len, full, every)

    def recv_udp_stamped(self, m: LoadMember) -> None:
        """Full mode: every datagram with its kernel receive timestamp (decrypted after the window)."""
        recvmsg = m.session.sock.recvmsg
        msg_len = self.msg_len
        while True:
            try:
                packet, ancdata, _flags, _addr = recvmsg(65536, ANCILLARY_SIZE)
                # SO_TIMESTAMPNS is the only control message these sockets ask for
                sec, nsec = unpack_timespec(ancdata[0][2])
                rx = sec * 1_000_000_000 + nsec
            except (BlockingIOError, InterruptedError):
                return
            except (IndexError, struct.error):  # no stamp, or not in the first control message
                rx = rx_stamp(ancdata)
            except OSError:
                m.session.closed = True
                return
            self.count_packet(m, packet, msg_len, True, 1, rx)

    def count_packet(
        self, m: LoadMember, packet: bytes, msg_len: int, full: bool, every: int, rx: int = 0
    ) -> None:
        """One DATA packet: counted by its length and sampled, or (full mode) held for after the
        window; one whose length does not fit bot MESSAGEs is decrypted and parsed now."""
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
                    self.open(m, packet, time.monotonic_ns())
        else:
            m.slow += 1
            self.open(m, packet, time.monotonic_ns(), count=True, rx=rx)

    def open(self, m: LoadMember, packet: bytes, now: int, count: bool = False, rx: int = 0) -> None:
        """Decrypts one packet; records latency of each bot MESSAGE (and counts, in full mode).

        `rx` (full mode) is the packet's kernel receive stamp: with the sender's recorded send
        time of the packet the message left in, it gives the message's added latency.
        """
        plaintext = open_sample(m.session, packet)
        if plaintext is None:
            m.undecryptable += 1
            return
        step = self.step & 0xFFFF
        base = self.start_ns
        full = self.full or count
        track = self.full
        n = len(plaintext)
        hop = 2 + 1 + 2 + self.payload_size
        msg_len = self.msg_len
        latencies = m.latencies
        latency_counts = m.latency_counts
        added = m.added
        added_counts = m.added_counts
        arrive = m.arrivals.arrive
        measure_from = self.measure_from
        run_sender = run_at = -1
        delivered = 0
        i = 0
        # fast path: every message is [20, sender<128, bin8(size)]
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
            delivered += 1
            if at < measure_from:
                if track:
                    arrive(sender, seq)
                continue
            if not track:
                latencies.append(now - base - at)
                latency_counts.append(1)
                continue
            arrive(sender, seq)
            # Consecutive messages from one sender packet (same sender, same scheduled time)
            # share both latencies: one run, one look-up of the send time, one record.
            if at == run_at and sender == run_sender:
                latency_counts[-1] += 1
                added_counts[-1] += 1
                continue
            run_sender, run_at = sender, at
            latencies.append(now - base - at)
            latency_counts.append(1)
            added.append(self.added_ns(sender, seq, rx))
            added_counts.append(1)
        if full:
            m.delivered += delivered
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
                    timed = parsed[3] >= measure_from
                    if timed:
                        latencies.append(now - base - parsed[3])
                        latency_counts.append(1)
                    if full:
                        m.delivered += 1
                    if track:
                        arrive(parsed[1], parsed[2])
                        if timed:
                            added.append(self.added_ns(parsed[1], parsed[2], rx))
                            added_counts.append(1)
            else:
                m.session.handle_control(msg.encode())

    def open_gs2(self, m: LoadMember, container: bytes, now: int, rx: int = 0) -> None:
        """A GS2 member's relayed message: its latency (in full mode also counted, its stream and
        added latency recorded), as `open` does for a native packet's messages."""
        try:
            kind, body = wire.parse_server(container)
        except DecodeError:
            m.undecryptable += 1
            return
        parsed = bot_payload.parse(body.data) if kind == wire.BINARY_MESSAGE else None
        if parsed is None or parsed[0] != self.step & 0xFFFF:
            return
        _, sender, seq, at = parsed
        timed = at >= self.measure_from
        if timed:
            m.latencies.append(now - self.start_ns - at)
            m.latency_counts.append(1)
        if self.full:
            m.delivered += 1
            m.arrivals.arrive(sender, seq)
            if timed:
                m.added.append(self.added_ns(sender, seq, rx))
                m.added_counts.append(1)

    def gs2_frame(self, m: LoadMember, frame: bytes, rx: int) -> bool:
        """One binary message to a GS2 member: a relayed message is counted (sampled mode) or held
        (full mode: returns True); membership news goes to the member table."""
        if frame[:6] != GS2_RELAYED:
            m.session.handle_gs2(frame)
            return False
        m.dgrams_in += 1
        if self.full:
            m.held.append(frame)
            m.held_now.append(time.monotonic_ns())
            m.held_rx.append(rx)
            m.held_msgs += 1
            return True
        m.delivered += 1
        if m.dgrams_in % self.sample_every == 0:
            self.open_gs2(m, frame, time.monotonic_ns())
        return False

    def added_ns(self, sender: int, seq: int, rx: int) -> int:
        """Added latency of message `seq` from `sender` in a packet received at `rx` (kernel
        stamp), from the send time of the sender packet that held it; -1 if it cannot be paired."""
        src = self.by_index.get(sender)
        if src is None or not rx:
            return -1
        k = (seq - 1) // self.batch
        tx = src.tx_ns[k] if 0 <= k < len(src.tx_ns) else 0
        return rx - tx if tx else -1

    def recv_ws(self, m: LoadMember) -> None:
        """Sampled mode: one read of whatever is queued, then every whole frame in the buffer."""
        data = _recv_ws_bytes(m.session)
        if data:
            buf = m.session.ws_in
            buf += data
            self.ws_frames(m, buf, 0)

    def recv_ws_stamped(self, m: LoadMember) -> None:
        """Full mode: reads frame by frame, each read ending where the next frame ends.

        A TCP read carries the receive stamp of its last segment, so a read of several frames
        would give the earlier ones a late stamp. The relay writes each frame at once (one
        segment, or a few for a large one), so a read that ends with a frame's last byte carries
        that frame's arrival: two reads per frame (header, rest), in the half-load step only.
        A GS2 member's frames are read as `recv_gs2_stamped` says.
        """
        session = m.session
        if session.transport == "gs2":
            self.recv_gs2_stamped(m)
            return
        recvmsg = session.sock.recvmsg
        buf = session.ws_in
        rx = 0
        while True:
            want = missing(buf)  # bytes that complete the next frame's header, then the frame
            if not want:  # complete: the read that completed it gave `rx`
                self.ws_frames(m, buf, rx)
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

    def recv_gs2_stamped(self, m: LoadMember) -> None:
        """Full mode for a GS2 member: one read of whatever is queued, as in sampled mode, whose
        stamp goes to its last frame alone, and only where the read ended with that frame's
        last byte (the earlier frames may have come in earlier segments: they are counted and
        timed end to end, but left out of the added figure as unstamped).

        GS2 carries one message a frame, so the two reads a frame of `recv_ws_stamped` would
        cost the one load core two system calls a message: at half of the peak that put the
        senders seconds behind, and the backlog in the relay's send queues showed as seconds
        of added latency (bench-s41). So the added figure is a sample, one frame a read: where a
        read finds one frame (a light load) it is every frame; where frames arrive together, as
        after a stall, the burst counts once, so it under-weights bursts. The end-to-end figure
        still holds every frame, and the step reports how many went unstamped."""
        session = m.session
        try:
            data, ancdata, _flags, _addr = session.sock.recvmsg(1 << 20, ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            session.closed = True
            return
        buf = session.ws_in
        buf += data
        if self.ws_frames(m, buf, 0) and not buf:  # its last frame, held by this call, ended the read
            m.held_rx[-1] = rx_stamp(ancdata)

    def ws_frames(self, m: LoadMember, buf: bytearray, rx: int) -> bool:
        """Handles every complete frame at the front of `buf` (and removes them); True when the
        last of them was a GS2 relayed message held for after the window (full mode)."""
        session = m.session
        full = self.full
        msg_len = self.msg_len
        every = self.sample_every
        gs2 = session.transport == "gs2"
        pos = 0
        end = len(buf)
        last_held = False
        while (head := parse_head(buf, pos, end)) is not None:
            b0, _masked, start, length = head  # a server's frames are not masked
            stop = start + length
            if stop > end:
                break
            pos = stop
            opcode = b0 & 0x0F
            last_held = False
            if opcode == BINARY:
                if gs2:
                    last_held = self.gs2_frame(m, bytes(buf[start:stop]), rx)
                    continue
                body = length - PACKET_OVERHEAD
                if not full and body > 0 and body % msg_len == 0:
                    m.dgrams_in += 1
                    m.delivered += body // msg_len
                    if m.dgrams_in % every == 0:
                        self.open(m, bytes(buf[start:stop]), time.monotonic_ns())
                else:
                    self.count_packet(m, bytes(buf[start:stop]), msg_len, full, every, rx)
            elif opcode == PING and not m.out:  # never inside a half-sent frame of ours (skipped then)
                with contextlib.suppress(OSError):
                    session.sock.send(client_frame(PONG, bytes(buf[start:stop])))
            elif opcode == CLOSE:
                session.closed = True
        del buf[:pos]
        return last_held


def _recv_ws_bytes(session: RawSession) -> bytes:
    """What the connection has queued, up to 1 MiB; b"" when nothing is, or at the end of the
    stream or on an error, which also mark the session closed."""
    try:
        data = session.sock.recv(1 << 20)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        data = b""
    if not data:
        session.closed = True
    return data


def discard(m: LoadMember) -> int:
    """Reads what is queued for the member without decrypting it (answering pings), so a backlog
    is not counted in the next step; returns the packets read. Marks the session closed at the
    end of its stream or on an error."""
    session = m.session
    late = 0
    if session.transport == "udp":
        try:
            while True:
                session.sock.recv(65536)
                late += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            session.closed = True
        return late
    session.ws_in += _recv_ws_bytes(session)
    for opcode, body in read_frames(session.ws_in):
        late += opcode == BINARY
        if opcode == PING:
            try:
                session.sock.send(client_frame(PONG, body))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                session.closed = True
    return late
