"""Kernel receive timestamps (SO_TIMESTAMPNS): when a packet reached the recipient's socket.

The half-load step's "added" latency is this stamp minus the sender's time just before its
send(), both CLOCK_REALTIME on one host, so neither a late sender nor a busy receiver counts.
"""

from __future__ import annotations

import socket
import struct

# Linux (asm-generic, so x86 and arm): Python has no name for it. SCM_TIMESTAMPNS, the control
# message type, is the same number. The payload is a struct timespec in CLOCK_REALTIME.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
unpack_timespec = _TIMESPEC.unpack
"""(seconds, nanoseconds) of one control message's data: the receivers' fast path, which
trusts that SO_TIMESTAMPNS is the only control message their sockets ask for."""


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
