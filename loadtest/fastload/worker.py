"""The load worker process: connects its members, then builds, runs and reports steps on command.

The harness (loadtest/scenarios/throughput.py) drives it over a multiprocessing Connection:
build (seal the step's packets: `sender`), go (the timed window below: send what is due, read
what is ready, `receiver`), then its figures (`results`) and a quiet spell (`quiesce`) so a
backlog the relay still holds is not counted in the next step; idle between commands keeps
sessions alive; close says BYE.
"""

from __future__ import annotations

import math
import os
import select
import time
from multiprocessing.connection import Connection
from typing import Any

from loadtest import payload as bot_payload
from loadtest.fastload.member import LoadMember
from loadtest.fastload.messages import message_size
from loadtest.fastload.receiver import Receiver, discard
from loadtest.fastload.results import step_result
from loadtest.fastload.rxstamps import enable_rx_timestamps
from loadtest.fastload.sender import seal_step, send_due, spread_phase
from loadtest.fastload.spec import WorkerSpec
from loadtest.machine import pin
from loadtest.rawclient import connect


class Worker:
    """Runs in its own process (pinned); the harness drives it step by step."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.members: list[LoadMember] = []
        self.receiver = Receiver(spec.payload_size, spec.batch)
        self.rate = 0.0  # messages/s per member, this step
        self.seconds = 0.0
        self.full = False
        self.stamping = False  # receive sockets have SO_TIMESTAMPNS on
        self._rt_offset = 0  # time.time_ns() - time.monotonic_ns() at the step start

    # ---- setup ------------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Connects and joins every member (raises on failure); the harness waits for this."""
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
        self.receiver.by_index = {m.index: m for m in self.members}
        max_id = max(m.session.connection_id for m in self.members)
        self.receiver.msg_len = message_size(spec.payload_size, max_id)
        self.idle(0.3)  # let the JOIN news arrive and be read
        return {"members": len(self.members), "max_connection_id": max_id}

    def idle(self, seconds: float) -> None:
        """Between steps: keep sessions alive and sockets drained (membership news, pings)."""
        for m in self.members:
            m.session.ping()
        for m in self.members:
            m.session.poll_control(seconds / max(1, len(self.members)))

    # ---- build ------------------------------------------------------------------------------

    def build(
        self,
        step: int,
        rate_per_member: float,
        seconds: float,
        full: bool,
        sample_every: int,
        warmup: float = 0.0,
    ) -> dict:
        """Seals every packet of the step; timestamps are scheduled offsets from the step start.
        `warmup`: seconds at the step's start whose messages count but whose latencies do not."""
        t0 = time.monotonic()
        spec = self.spec
        self.rate, self.seconds, self.full = rate_per_member, seconds, full
        receiver = self.receiver
        receiver.step, receiver.full, receiver.sample_every = step, full, max(1, sample_every)
        receiver.measure_from = int(warmup * 1e9)
        batch = spec.batch
        interval_ns = batch / rate_per_member * 1e9
        n_packets = max(1, math.ceil(rate_per_member * seconds / batch))
        template = bytearray(bot_payload.build(spec.payload_size, step, 0, 0, 0))
        count = len(self.members)
        for k, m in enumerate(self.members):
            m.reset()
            m.session.ping()  # the last counter before the step's packets
            m.phase_ns = spread_phase(k, count, interval_ns)
            seal_step(m, template, step, n_packets, interval_ns, batch, full)
        if full != self.stamping:
            on = [enable_rx_timestamps(m.session.sock, full) for m in self.members]
            self.stamping = full and all(on)
        return {"build_s": time.monotonic() - t0, "packets": n_packets * count}

    # ---- the timed window ---------------------------------------------------------------------

    def run(self, start_ns: int, drain_s: float, tick: Connection | None) -> dict[str, Any]:
        """From `start_ns` (CLOCK_MONOTONIC) for the step's seconds: sends each member's packets
        as they fall due and reads whatever is ready in between (select or epoll), then `drain_s`
        more of reading only; a tick to the harness every half second. Returns the step's figures."""
        members = self.members
        full = self.full
        receiver = self.receiver
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
        udp_recv = receiver.recv_udp_stamped if full else receiver.recv_udp
        ws_recv = receiver.recv_ws_stamped if full else receiver.recv_ws
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
                            send_due(m, due, full)
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
            receiver.open_held(m)
        return step_result(
            members,
            batch=batch,
            full=full,
            rate=self.rate,
            start_ns=start_ns,
            rt_offset=self._rt_offset,
            stamping=self.stamping,
        )

    def go(self, start_ns: int, drain_s: float, tick: Connection | None) -> dict[str, Any]:
        """Runs the built step, drops its packets, then waits for the relay to go quiet."""
        self.receiver.start_ns = start_ns
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
        poller = select.poll()  # not select(): a worker of many members holds descriptors past 1024
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        t0 = last = time.monotonic()
        late = 0
        while by_fd and time.monotonic() - last < quiet and time.monotonic() - t0 < limit:
            ready = [fd for fd, _ in poller.poll(50) if fd in by_fd]
            for fd in ready:
                m = by_fd[fd]
                late += discard(m)
                if m.session.closed:
                    del by_fd[fd]
                    poller.unregister(fd)
            if ready:
                last = time.monotonic()
        return {"late_packets": late, "quiesce_s": time.monotonic() - t0}

    def close(self) -> None:
        """BYE from every member, a moment for it to leave, then the sockets closed."""
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
