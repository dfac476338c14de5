"""The sender side: a step's packets sealed before it starts, then only send() in its window.

Sealing in the window would cost the one load core an AES-GCM call per packet while it must
send on time; sealed ahead (counters ascending), the window pays one system call per packet
(UDP) or per batch of due frames (WebSocket).
"""

from __future__ import annotations

import itertools
import math
import time

from loadtest import payload as bot_payload
from loadtest.fastload.member import LoadMember

_MAGIC = bot_payload.MAGIC
_pack_header = bot_payload.HEADER.pack_into
_GOLDEN = 0.6180339887498949  # 1/phi: the stride that keeps every few consecutive members apart


def spread_phase(k: int, count: int, interval_ns: float) -> int:
    """The send phase (ns into the tick) of the `k`-th of a worker's `count` members.

    Real players' ticks are not in step, not even within one room. Members k, k+1, ... are
    room-mates, so phases handed out in member order (k / count of the tick) sent a room's four
    packets within a fraction of a millisecond: its relay woke once for several, which flattered
    the one-process-per-room shape against the C relay, whose paced sender wakes it per packet.
    The phases are still the `count` even slots of the tick, dealt with a stride near count/phi
    that shares no factor with count: the load is as even as before, and room-mates land about
    0.38, 0.24 and 0.15 of a tick apart, the same in every run.
    """
    if count <= 1:
        return 0
    stride = max(1, round(count * _GOLDEN))
    while math.gcd(stride, count) != 1:
        stride += 1
    return int(interval_ns * ((k * stride) % count) / count)


def seal_step(
    m: LoadMember, template: bytearray, step: int, n_packets: int, interval_ns: float, batch: int, full: bool
) -> None:
    """Seals the member's `n_packets` packets of `batch` SENDs each (for a GS2 member, `batch`
    WebSocket messages sent together); every payload carries its scheduled send time (offset from
    the step start), so a late sender shows as latency.

    `template` is a payload of the step's size; its header is overwritten per message.
    """
    sends = m.session.sends
    pack = _pack_header
    seq = 0
    packets = []
    targets = m.targets
    for i in range(n_packets):
        at = int(m.phase_ns + i * interval_ns)
        parts = []
        for _ in range(batch):
            seq += 1
            pack(template, 0, _MAGIC, step & 0xFFFF, m.index, seq, at)
            parts.append(bytes(template))
        packets.append(sends(parts, targets))
    m.packets = packets
    m.out = b""
    m.tx_ns = [0] * n_packets if full else []
    stream = m.session.transport != "udp"  # WebSocket, native or GS2
    m.ends = list(itertools.accumulate(map(len, packets))) if full and stream else []


def send_due(m: LoadMember, due: int, full: bool) -> None:
    """Sends the member's packets up to `due` (those whose scheduled time has come), and what a
    previous WebSocket send() left over; in full mode records each packet's send time."""
    session = m.session
    packets = m.packets
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
