"""Attackers for the `flood` scenario, one process each, pinned to the load CPU.

Every attacker counts the bytes it sent the relay and the bytes the relay sent back to it, so
the report can say what each attack bought. Member floods hold the room key (a malicious
player): they join, then send one kind of message as fast as the rate says (8 coalesced per
packet, sealed before the clock starts), and keep sending after the relay kicks them (their
packets then name a session the relay has forgotten). The others do not hold the key.

- `send`, `ping`, `sync`, `profile`: a member flooding that message kind;
- `hello`: HELLOs sealed with the wrong key (1200 bytes, as a UDP HELLO must be), from many
  source ports;
- `halfopen`: TCP connections that send half an HTTP request and then nothing;
- `nonreader`: a WebSocket member that never reads what the relay sends it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from loadtest.machine import parse_cpus, pin
from loadtest.rawclient import RawSession, connect
from relay.protocol import messages as m
from relay.protocol.constants import UDP_HELLO_PAD_TO
from relay.protocol.keys import derive_psk
from relay.protocol.packets import ClientHello

MEMBER_FLOODS = ("send", "ping", "sync", "profile")
KINDS = (*MEMBER_FLOODS, "hello", "halfopen", "nonreader")
BATCH = 8  # messages per packet in the member floods


@dataclass(frozen=True, slots=True)
class Attack:
    kind: str
    rate: float  # messages/s (member floods), HELLOs/s, connections (halfopen)
    seconds: float
    transport: str = "udp"  # of the member floods
    source_ports: int = 64  # of the HELLO flood


def _message(kind: str) -> bytes:
    return {
        "send": m.Send(b"x" * 16).encode(),
        "ping": m.Ping(1, 1).encode(),
        "sync": m.Sync().encode(),
        "profile": m.SetProfile(b"p" * 16).encode(),
    }[kind]


def _drain(session: RawSession) -> int:
    """Reads what the relay sent the attacker (without blocking); the byte count."""
    got = 0
    while True:
        try:
            data = session.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return got
        except OSError:
            session.closed = True
            return got
        if not data:
            session.closed = True
            return got
        got += len(data)
        if session.transport == "udp" and _closing(session, data):
            session.closed = True  # a UDP kick is a CLOSING, not a closed socket


def _closing(session: RawSession, datagram: bytes) -> bool:
    """Whether a datagram from the relay is this session's CLOSING."""
    return any(isinstance(msg, m.Closing) for msg in session.relay_messages(datagram))


def _paced(total: int, seconds: float, send: Any, read: Any) -> tuple[int, float]:
    """Calls send(i) for i in range(total) spread evenly over `seconds`, and read() between;
    returns how many went out and how long it took."""
    start = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) / seconds * total) + 1)
        while sent < due:
            if not send(sent):
                break
            sent += 1
        read()
        if time.monotonic() - start > seconds + 1.0:
            break
        time.sleep(0.0005)
    return sent, time.monotonic() - start


def member_flood(attack: Attack, host: str, port: int, key: str) -> dict[str, Any]:
    session = connect(host, port, key, f"attacker-{attack.kind}", attack.transport)
    plaintext = _message(attack.kind) * BATCH
    packets = [session.packet(plaintext) for _ in range(int(attack.rate * attack.seconds / BATCH))]
    bytes_in = 0
    bytes_out = 0

    def send(i: int) -> bool:
        nonlocal bytes_in
        try:
            session.sock.send(packets[i])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            session.closed = True
            return False
        bytes_in += len(packets[i])
        return True

    def read() -> None:
        nonlocal bytes_out
        bytes_out += _drain(session)

    sent, took = _paced(len(packets), attack.seconds, send, read)
    time.sleep(0.3)
    read()
    kicked = session.closed
    session.close()
    return {
        "messages_sent": sent * BATCH,
        "rate": sent * BATCH / took if took else 0.0,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "closed_by_relay": kicked,
    }


def hello_flood(attack: Attack, host: str, port: int) -> dict[str, Any]:
    wrong = derive_psk(os.urandom(32))
    hellos = [ClientHello.create(wrong, pad_to=UDP_HELLO_PAD_TO).packet for _ in range(64)]
    socks = []
    for _ in range(attack.source_ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((host, port))
        socks.append(sock)
    bytes_in = bytes_out = 0

    def send(i: int) -> bool:
        nonlocal bytes_in
        packet = hellos[i % len(hellos)]
        try:
            socks[i % len(socks)].send(packet)
        except (BlockingIOError, InterruptedError):
            return False
        bytes_in += len(packet)
        return True

    def read() -> None:
        nonlocal bytes_out
        for sock in socks:
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                while True:
                    bytes_out += len(sock.recv(2048))

    sent, took = _paced(int(attack.rate * attack.seconds), attack.seconds, send, read)
    read()
    for sock in socks:
        sock.close()
    return {
        "messages_sent": sent,
        "rate": sent / took if took else 0.0,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }


def half_open(attack: Attack, host: str, port: int) -> dict[str, Any]:
    held: list[socket.socket] = []
    bytes_in = bytes_out = 0
    refused = 0
    start = time.monotonic()
    for _ in range(int(attack.rate)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect((host, port))
            request = b"GET / HTTP/1.1\r\nHost: relay\r\n"  # and never the rest
            sock.send(request)
            bytes_in += len(request)
            sock.setblocking(False)
            held.append(sock)
        except OSError:
            refused += 1
            sock.close()
    while time.monotonic() - start < attack.seconds:
        time.sleep(0.1)
    closed_by_relay = 0
    for sock in held:
        try:
            data = sock.recv(4096)
            bytes_out += len(data)
            closed_by_relay += not data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            closed_by_relay += 1
        sock.close()
    return {
        "messages_sent": len(held),
        "refused": refused,
        "closed_by_relay": closed_by_relay,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }


def non_reader(attack: Attack, host: str, port: int, key: str) -> dict[str, Any]:
    session = connect(host, port, key, "attacker-nonreader", "ws")
    session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bytes_in = 0
    deadline = time.monotonic() + attack.seconds
    while time.monotonic() < deadline:  # asks for snapshots now and then, reads nothing
        with contextlib.suppress(OSError):
            packet = session.packet(m.Sync().encode())
            session.sock.send(packet)
            bytes_in += len(packet)
        time.sleep(0.25)
    bytes_out = _drain(session)
    closed = session.closed
    session.close()
    return {
        "messages_sent": bytes_in // 40,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "closed_by_relay": closed,
    }


def attacker_main(conn: Connection, attack: Attack, host: str, port: int, key: str, cpus: str | None) -> None:
    """Process entry: waits for "go", attacks, answers with its figures (or the error).

    It shares the load CPU with the honest members' bots, and runs at SCHED_IDLE there: their
    latency is to show what the relay does to them, not that their own CPU was busy sending the
    flood (a real attacker is not on the members' machines). The bots need a few percent of
    the core, so the flood still gets the rest; its rate is reported."""
    if cpus:
        pin(parse_cpus(cpus))
    with contextlib.suppress(AttributeError, OSError):  # not Linux: shares the CPU as it is
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        conn.send("ready")
        conn.recv()
        if attack.kind in MEMBER_FLOODS:
            result = member_flood(attack, host, port, key)
        elif attack.kind == "hello":
            result = hello_flood(attack, host, port)
        elif attack.kind == "halfopen":
            result = half_open(attack, host, port)
        elif attack.kind == "nonreader":
            result = non_reader(attack, host, port, key)
        else:
            raise ValueError(f"unknown attack {attack.kind!r}")
        conn.send({"ok": True, **result})
    except Exception as exc:  # reported, never hangs the harness
        conn.send({"ok": False, "error": repr(exc)})
