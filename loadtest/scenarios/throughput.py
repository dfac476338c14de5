"""`throughput`: delivered messages per second on one relay core, 4-player rooms, 100-byte payloads.

Shape. A 4-player room is a fan-out of 3: every message a member sends is delivered to the 3
others. The relay runs one room per process, so by default one relay process (pinned to the
relay CPU) serves one 4-member room whose members broadcast. To put more members on the core,
`--groups G` puts G groups of 4 in one relay (each member sends to its 3 group mates by id, a
targeted send: still fan-out 3), and `--rooms R` runs R relay processes pinned to the same core
(one 4-player room each). All load (senders and receivers, in `--workers` processes, plus this
harness) is pinned to the load CPU.

Transports: "udp" and "ws" are native clients; "gs2" members are GS2 game clients on the
WebSocket port (GS2's wire: one signed Container per message and per WebSocket message, so a
client packet of `batch` messages is `batch` WebSocket messages sent in one write); "mixed"
alternates UDP and WS members. GS2's relay CPU per delivered message is reported beside the
WebSocket path's (`gs2_cpu_vs_ws`).

Figures. "Offered" is messages/s the senders sent; "delivered" is messages arriving at
recipients per second of the sending window (each offered message is due 3 deliveries; what a
relay behind its load delivers from its queues after the window counts against loss, not for
the rate); "datagrams" counts packets
(UDP datagrams or WebSocket messages) arriving at recipients, which hold several coalesced
messages each. Relay CPU is the relay process's CPU time over the step (loadtest.machine.sample).

Latency is one-way on one host. "End to end" runs from the packet's scheduled send time to
when the receiving worker got round to it (CLOCK_MONOTONIC), on a sample of packets (every
packet at half load); it includes the load generator's own lag, as the senders and receivers
share one busy core. Offered load rises by `growth` per step until the relay saturates
(deliveries fall short of what was due by more than `loss_threshold`, lost or still queued
at the window's end, or stop growing), then
one step runs at half of the saturation rate with every packet decrypted (after its window:
held as read, so the one load core spends the window sending on time). That step also
measures "added" latency: the kernel's receive timestamp of the packet at the recipient's
socket (SO_TIMESTAMPNS) minus the time taken just before the send() that handed it to the
kernel, both CLOCK_REALTIME: what the relay adds (its queueing and processing, plus loopback),
the figure reported as the relay's latency. The sender's lateness (actual - scheduled send)
is reported beside it. A GS2 member's half-load step stamps only the frame that ends each read
(`Receiver.recv_gs2_stamped`), so its added figure is a sample.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from loadtest import baseline as c_baseline
from loadtest import hist as hdr
from loadtest.fastload.spec import GroupSpec, WorkerSpec
from loadtest.fastload.worker import worker_main
from loadtest.machine import busy_percent, cpu_percent, cpu_sample, cpu_times, parse_cpus, pin, steal_percent
from loadtest.progress import Live
from loadtest.relayhost import RelayProcess
from loadtest.report import Report
from loadtest.scenarios import throughput_report

GROUP_SIZE = 4


class RelayAddress(Protocol):
    """Where a relay serves its room, and its process (for CPU figures)."""

    host: str
    port: int
    key: str
    pid: int


@dataclass(frozen=True, slots=True)
class ThroughputConfig:
    """Defaults run in about a minute per transport on a 2-core machine."""

    transports: tuple[str, ...] = ("udp", "ws", "gs2")  # "mixed" alternates UDP and WS members
    rooms: int = 1  # relay processes on the relay CPU, one 4-player room each
    groups: int = 1  # groups of 4 members per relay (targeted sends when > 1)
    workers: int = 1  # load processes on the load CPU
    payload_size: int = 100
    batch: int = 8  # messages coalesced per client packet
    step_seconds: float = 3.0
    start_rate: float = 20_000.0  # offered messages/s, all senders together, first step
    growth: float = 1.5
    max_steps: int = 12
    loss_threshold: float = 0.05  # a step delivering less than (1 - this) of what was due saturates
    starved_below_cpu: float = 70.0  # a "saturated" step with the relay under this CPU % is repeated
    starved_retries: int = 2
    load_bound_cpu: float = 95.0  # ...unless the load processes used this % of a core each: the
    # load generator, not the relay, is then the limit (GS2's one message a frame), and a repeat
    # only piles more backlog on the members' connections
    half_load_seconds: float = 3.0
    sustained_loss: float = 0.001  # a step "sustained" loses at most this share...
    sustained_p99_ms: float = 5.0  # ...with p99 latency at most this
    drain_seconds: float = 0.5
    sample_every: int = 16
    relay_cpus: str = "0"
    load_cpus: str = "1"
    coalesce_tick: float | None = None  # relay override; None keeps the relay's default
    max_coalesce_delay_udp: float | None = None  # relay override; None keeps the relay's default
    baseline: bool = True
    baseline_seconds: float = 4.0
    baseline_pps: int = 100_000
    relay_factory: str | None = None
    relay_profile: str | None = None  # write the relay's cProfile stats here (slows the relay down)

    @classmethod
    def quick(cls, **kw: Any) -> ThroughputConfig:
        base = {
            "step_seconds": 0.5,
            "start_rate": 4000.0,
            "growth": 2.0,
            "max_steps": 2,
            "half_load_seconds": 0.5,
            "drain_seconds": 0.3,
            "baseline_seconds": 1.0,
        }
        base.update(kw)
        return cls(**base)


def relay_settings(config: ThroughputConfig, members: int) -> dict[str, Any]:
    """Limits opened up so the relay, not its per-connection rate limiter, is what is measured."""
    settings: dict[str, Any] = {
        "limits": {
            "max_players": max(32, members),
            "messages_per_second": 0,
            "message_burst": 0,
            "bytes_per_second": 0,
            "byte_burst": 0,
            "ws_send_buffer": 8 << 20,
        },
        "keepalive_timeout": 120.0,
        "idle_timeout": 600.0,
    }
    for name in ("coalesce_tick", "max_coalesce_delay_udp"):
        if getattr(config, name) is not None:
            settings[name] = getattr(config, name)
    return settings


def _cpu_point(timeline: list[dict], step: int, before: list[Any], after: list[Any]) -> float:
    """Appends the relays' CPU % between two samples, at the middle of that time; returns it.
    Not over less than 0.2 s: CPU time comes in 10 ms ticks, so a short interval reads 0% or
    double (the step's figure holds that time anyway)."""
    cpu = sum(cpu_percent(a, b) for a, b in zip(before, after, strict=True))
    if before and before[0] and after and after[0] and after[0].at - before[0].at >= 0.2:
        timeline.append(
            {"t": (before[0].at + after[0].at) / 2, "kind": "cpu", "relay_cpu": cpu, "step": step}
        )
    return cpu


class Load:
    """The worker processes of one transport's run, and the relay processes they load."""

    def __init__(
        self,
        config: ThroughputConfig,
        transport: str,
        label: str = "steps",
        relays: Sequence[RelayAddress] | None = None,
    ) -> None:
        """`relays`: relays the caller started (and stops): one room each, `config.rooms` of them;
        None: this load starts its own (loadtest/relayhost.py) and stops them at close()."""
        self.config = config
        self.transport = transport
        members = config.groups * GROUP_SIZE
        self._own: list[RelayProcess] = (
            []
            if relays is not None
            else [
                RelayProcess(
                    relay_settings(config, members),
                    config.relay_cpus,
                    config.relay_factory,
                    profile=f"{config.relay_profile}.{transport}.{label}.{n}"
                    if config.relay_profile
                    else None,
                )
                for n in range(config.rooms)
            ]
        )
        self.relays: Sequence[RelayAddress] = relays if relays is not None else self._own
        ctx = multiprocessing.get_context("spawn")
        groups: list[list[GroupSpec]] = [[] for _ in range(config.workers)]
        index = 0
        slot = 0
        for r, relay in enumerate(self.relays):
            for g in range(config.groups):
                group = []
                for i in range(GROUP_SIZE):
                    index += 1
                    t = transport if transport != "mixed" else ("udp", "ws")[index % 2]
                    group.append((f"r{r}g{g}m{i}", t, index))
                groups[slot % config.workers].append(
                    GroupSpec(relay.host, relay.port, relay.key, tuple(group))
                )
                slot += 1
        self.members = index
        self.conns: list[Connection] = []
        self.procs = []
        cpus = parse_cpus(config.load_cpus)
        for worker_groups in groups:
            if not worker_groups:
                continue
            spec = WorkerSpec(
                tuple(worker_groups),
                targeted=config.groups > 1,
                payload_size=config.payload_size,
                batch=config.batch,
                cpus=frozenset(cpus) if cpus else None,
            )
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            kind, info = self._recv(conn, 60)
            if kind != "ready":
                self.close()
                raise RuntimeError(f"load worker failed: {info}")

    def _recv(self, conn: Connection, timeout: float) -> tuple[str, Any]:
        if not conn.poll(timeout):
            raise TimeoutError("load worker did not answer")
        return conn.recv()

    def relay_samples(self) -> list[Any]:
        return [cpu_sample(pid) for pid in dict.fromkeys(r.pid for r in self.relays)]  # rooms may share one

    def load_samples(self) -> list[Any]:
        return [cpu_sample(p.pid) for p in self.procs] + [cpu_sample(os.getpid())]

    def step(
        self,
        step: int,
        offered: float,
        seconds: float,
        full: bool,
        live: Live,
        timeline: list[dict],
        warmup: float = 0.0,
    ) -> dict[str, Any]:
        """One timed step at `offered` messages/s in total; returns its aggregated figures.
        `warmup`: the latencies of messages sent in the step's first seconds are not recorded
        (their loss and the relays' CPU are)."""
        c = self.config
        rate_per_member = offered / self.members
        for conn in self.conns:
            conn.send(
                (
                    "build",
                    {
                        "step": step,
                        "rate_per_member": rate_per_member,
                        "seconds": seconds,
                        "full": full,
                        "sample_every": c.sample_every,
                        "warmup": warmup,
                    },
                )
            )
        build_s = 0.0
        for conn in self.conns:
            kind, info = self._recv(conn, 300)
            if kind != "built":
                raise RuntimeError(f"load worker failed: {info}")
            build_s = max(build_s, info["build_s"])
        start_ns = time.monotonic_ns() + 200_000_000
        for conn in self.conns:
            conn.send(("go", {"start_ns": start_ns, "drain_s": c.drain_seconds}))
        while time.monotonic_ns() < start_ns:
            time.sleep(0.01)
        before = self.relay_samples()
        load_before = self.load_samples()
        cores_before = cpu_times()
        t_start = time.monotonic()
        last = before
        results: dict[int, dict] = {}
        prev_tick: dict[int, dict] = {}
        rates: dict[int, float] = {}  # half-second bucket since the step start -> delivered/s
        end_at = t_start + seconds
        cpu_at_end: list[Any] | None = None
        cpu_now = 0.0
        while len(results) < len(self.conns):
            # wake at the window's end too: the relay's CPU is read then, not in the idle drain after
            timeout = 0.5 if cpu_at_end is not None else min(0.5, max(0.005, end_at - time.monotonic()))
            for conn in wait(self.conns, timeout=timeout):
                kind, info = conn.recv()
                idx = self.conns.index(conn)
                if kind == "tick":
                    prev = prev_tick.get(idx, {"t": 0.0, "delivered": 0})
                    if info["t"] > prev["t"]:
                        bucket = round(info["t"] / 0.5)
                        rate = (info["delivered"] - prev["delivered"]) / (info["t"] - prev["t"])
                        rates[bucket] = rates.get(bucket, 0.0) + rate
                    prev_tick[idx] = info
                elif kind == "result":
                    results[idx] = info
                else:
                    raise RuntimeError(f"load worker failed: {info}")
            now = time.monotonic()
            if cpu_at_end is None and now >= end_at:
                cpu_at_end = self.relay_samples()
                load_at_end = self.load_samples()
                cores_at_end = cpu_times()
                _cpu_point(timeline, step, last, cpu_at_end)
            # the relay's CPU in the window only: the drain after it is idle time, not a drop
            if cpu_at_end is None and last and last[0] and now - last[0].at >= 0.45:
                current = self.relay_samples()
                cpu_now = _cpu_point(timeline, step, last, current)
                last = current
                delivered = sum(t["delivered"] for t in prev_tick.values())
                live.update(
                    rates=f"{self.transport} step {step}: offered {offered:,.0f}/s, "
                    f"delivered {delivered:,.0f} so far, relay cpu {cpu_now:.0f}%",
                )
        # each half second's rate at the middle of its half second, the sending window's only
        for bucket, rate in sorted(rates.items()):
            if 0.5 * bucket <= seconds + 0.1:
                timeline.append(
                    {
                        "t": t_start + 0.5 * bucket - 0.25,
                        "kind": "rate",
                        "delivered_per_s": rate,
                        "step": step,
                    }
                )
        timeline.append(
            {
                "kind": "step",
                "t": t_start,
                "t_end": t_start + seconds,
                "step": step,
                "due_per_s": offered * (GROUP_SIZE - 1),
            }
        )
        if cpu_at_end is None:
            cpu_at_end, load_at_end, cores_at_end = self.relay_samples(), self.load_samples(), cpu_times()
            _cpu_point(timeline, step, last, cpu_at_end)
        relay_cpu = sum(cpu_percent(a, b) for a, b in zip(before, cpu_at_end, strict=True))
        load_cpu = sum(cpu_percent(a, b) for a, b in zip(load_before, load_at_end, strict=True))
        out = self._aggregate(step, offered, seconds, full, results, relay_cpu, build_s)
        out["load_cpu_percent"] = load_cpu
        relay_cores = parse_cpus(c.relay_cpus) or {0}
        out["relay_core_busy_percent"] = busy_percent(cores_before, cores_at_end, relay_cores)
        out["relay_core_steal_percent"] = steal_percent(cores_before, cores_at_end, relay_cores)
        out["load_core_busy_percent"] = busy_percent(
            cores_before, cores_at_end, parse_cpus(c.load_cpus) or {1}
        )
        return out

    def _aggregate(
        self,
        step: int,
        offered: float,
        seconds: float,
        full: bool,
        results: dict[int, dict],
        relay_cpu: float,
        build_s: float,
    ) -> dict[str, Any]:
        sent = sum(r["sent_messages"] for r in results.values())
        planned = sum(r["planned_packets"] for r in results.values()) * self.config.batch
        delivered = sum(r["delivered"] for r in results.values())
        # the rate counts what arrived by the end of the sending window: what a relay that fell
        # behind delivers from its queues during the drain is not loss, but it is not rate either
        in_window = sum(r.get("delivered_in_window", r["delivered"]) for r in results.values())
        due = sum(p["sent"] for r in results.values() for p in r["per_recipient"].values())
        per_recipient = {k: v for r in results.values() for k, v in r["per_recipient"].items()}
        hist = hdr.merge([r["latency_hist"] for r in results.values()])
        lat = hdr.summary(hist)
        added = hdr.merge([r.get("added_hist", "") for r in results.values()])
        late = hdr.merge([r.get("sender_lateness_hist", "") for r in results.values()])
        return {
            "step": step,
            "mode": "full" if full else "sampled",
            "seconds": seconds,
            "offered_per_s": offered,
            "sent_messages": sent,
            "planned_messages": planned,
            "sent_per_s": sent / seconds,
            "due_deliveries": due,
            "delivered": delivered,
            "delivered_per_s": in_window / seconds,
            "delivered_in_window": in_window,
            "lost": due - delivered,
            "loss_ratio": (due - delivered) / due if due else 0.0,
            "behind_ratio": (due - in_window) / due if due else 0.0,
            "datagrams_in": sum(r["datagrams_in"] for r in results.values()),
            "datagrams_in_per_s": sum(r["datagrams_in"] for r in results.values()) / seconds,
            "messages_per_datagram": delivered / max(1, sum(r["datagrams_in"] for r in results.values())),
            "relay_cpu_percent": relay_cpu,
            "delivered_per_relay_cpu_s": in_window / seconds / (relay_cpu / 100) if relay_cpu > 1 else None,
            "latency": lat,  # end to end: scheduled send -> receiver got round to it
            "latency_hist": hdr.encode(hist),
            # full mode only: kernel receive stamp - actual send (the relay's added latency)
            "added_latency": hdr.summary(added),
            "added_latency_hist": hdr.encode(added),
            "added_unstamped": sum(r.get("added_unstamped", 0) for r in results.values()),
            "sender_lateness": hdr.summary(late),  # full mode only: actual - scheduled send
            "rx_timestamps": full and all(r.get("rx_timestamps") for r in results.values()),
            "partial_sends": sum(r.get("partial_sends", 0) for r in results.values()),
            "per_recipient": per_recipient,
            "build_s": build_s,
            "sender_kept_up": sent >= 0.95 * planned,
            "late_packets_after_step": sum(r.get("late_packets", 0) for r in results.values()),
            "quiesce_s": max((r.get("quiesce_s", 0.0) for r in results.values()), default=0.0),
        }

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("close", {}))
        for conn in self.conns:
            try:
                if conn.poll(5):
                    conn.recv()
            except (EOFError, OSError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        for relay in self._own:
            relay.stop()


def sustained(steps: list[dict[str, Any]], config: ThroughputConfig) -> dict[str, Any]:
    """The best step that kept up cleanly: (almost) nothing lost and p99 under the bound. The
    saturation figure is what the relay pushes through flat out; this is what it serves well."""
    ok = [
        s
        for s in steps
        if s["loss_ratio"] <= config.sustained_loss
        and (s["latency"].get("p99_ms") or float("inf")) <= config.sustained_p99_ms
    ]
    if not ok:
        return {"delivered_per_s": None, "step": None}
    best = max(ok, key=lambda s: s["delivered_per_s"])
    return {
        "delivered_per_s": best["delivered_per_s"],
        "step": best["step"],
        "relay_cpu_percent": best["relay_cpu_percent"],
        "p99_ms": best["latency"].get("p99_ms"),
    }


def run_transport(config: ThroughputConfig, transport: str, live: Live) -> dict[str, Any]:
    """Steps offered load up to saturation, then measures latency at half of it."""
    load = Load(config, transport)
    steps: list[dict[str, Any]] = []
    timeline: list[dict] = []
    try:
        offered = config.start_rate
        best = 0.0
        saturated_at: int | None = None
        retries = 0
        level = 0
        while level < config.max_steps:
            level += 1
            n = len(steps) + 1
            result = load.step(n, offered, config.step_seconds, False, live, timeline)
            steps.append(result)
            live.log(
                f"{transport} step {n}: offered {result['sent_per_s']:,.0f}/s, delivered "
                f"{result['delivered_per_s']:,.0f}/s, loss {100 * result['loss_ratio']:.2f}%, relay cpu "
                f"{result['relay_cpu_percent']:.0f}%, load cpu {result['load_cpu_percent']:.0f}%, "
                f"p99 {result['latency'].get('p99_ms', float('nan')):.2f} ms"
            )
            rate = result["delivered_per_s"]
            # short: lost more than the threshold, or (TCP loses nothing) that much was still
            # queued when the window closed: the relay no longer keeps up in real time
            short = max(result["loss_ratio"], result["behind_ratio"]) > config.loss_threshold
            result["fell_short"] = short or rate < best * 1.03  # or stopped growing
            if result["fell_short"] or not result["sender_kept_up"]:
                # A relay that falls short without using its core was starved by something else
                # on that core (this machine is shared): repeat the step rather than stop. Not
                # when the load's core was the busy one: that is the load generator's limit.
                result["starved"] = result["relay_cpu_percent"] < config.starved_below_cpu and not load_bound(
                    result, config
                )
                if result["starved"] and retries < config.starved_retries:
                    retries += 1
                    level -= 1
                    live.log(
                        f"{transport} step {n}: relay starved "
                        f"(cpu {result['relay_cpu_percent']:.0f}%), retrying"
                    )
                    continue
                saturated_at = n
                break
            best = max(best, rate)
            offered *= config.growth
        saturation = max(steps, key=lambda s: s["delivered_per_s"])
        limit, why = saturation_limit(steps, saturated_at, config)
        half_offered = max(100.0, saturation["delivered_per_s"] / 2 / (GROUP_SIZE - 1))
        # a fresh relay and fresh members: nothing left over from the overloaded steps
        load.close()
        load = Load(config, transport, "half")
        half = load.step(len(steps) + 1, half_offered, config.half_load_seconds, True, live, timeline)
        _log_latency(live, transport, "half load", half)
        # Half of what the relay sustains (loss <= 0.1%, p99 <= 5 ms): the flat-out saturation rate
        # is reached with queues and loss, so half of it can still keep the relay's core busy.
        kept = sustained(steps, config)["delivered_per_s"]
        half_kept: dict[str, Any] | None = None
        if kept:
            half_kept = load.step(
                len(steps) + 2,
                max(100.0, kept / 2 / (GROUP_SIZE - 1)),
                config.half_load_seconds,
                True,
                live,
                timeline,
            )
            _log_latency(live, transport, "half of sustained", half_kept)
    finally:
        load.close()
    timeline.sort(key=lambda p: p["t"])
    return {
        "transport": transport,
        "members": load.members,
        "steps": steps,
        "saturated_at_step": saturated_at,
        "saturation": {
            "delivered_per_s": saturation["delivered_per_s"],
            "offered_per_s": saturation["sent_per_s"],
            "relay_cpu_percent": saturation["relay_cpu_percent"],
            "step": saturation["step"],
            "reached": limit == "relay",
            "limit": limit,
            "why": why,
        },
        "sustained": sustained(steps, config),
        "half_load": half,
        "half_sustained": half_kept,
        "timeline": timeline,  # CLOCK_MONOTONIC: run() makes it seconds since the run started
    }


def load_bound(step: dict[str, Any], config: ThroughputConfig) -> bool:
    """The step's load processes were busy (`load_bound_cpu` of a core each, on average): what
    they could not send, or read off the members' sockets in time, says nothing of the relay."""
    return step.get("load_cpu_percent", 0.0) / max(1, config.workers) >= config.load_bound_cpu


def cpu_us_per_delivered(step: dict[str, Any]) -> float | None:
    """Relay CPU per delivered message of a step, in us; None for a step that delivered none."""
    delivered = step["delivered_per_s"]
    return step["relay_cpu_percent"] / 100 / delivered * 1e6 if delivered else None


def gs2_vs_ws_same_rate(transports: dict[str, Any], config: ThroughputConfig) -> dict[str, float] | None:
    """GS2 clients' relay CPU per delivered message against native WebSocket's at one offered
    rate: the highest step that both delivered in full below the first rate at which either load
    process was busy (`load_bound`). `gs2_cpu_vs_ws` compares each transport's highest step, and
    GS2's is the load generator's limit (its bots read a frame per message), where the relay sat
    at 47-58% of its core beside WebSocket's saturated 95%: a ratio of two different loads. Past
    the first busy rate the bots lag, their share can dip under the bound again (bench-s47: 97%
    at 683,432 delivered, 94% at 1,025,088) and the relay's writes to them gather into larger
    ones, so its CPU a message falls: no step above it says anything of the relay. None where
    no such step was run."""
    ws, gs2 = transports.get("ws"), transports.get("gs2")
    if not ws or not gs2:
        return None

    def usable(steps: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
        last_try = {s["offered_per_s"]: s for s in steps}  # a rate's last try
        kept: dict[float, dict[str, Any]] = {}
        for rate in sorted(last_try):
            step = last_try[rate]
            if not step["delivered_per_s"] or step.get("fell_short") or load_bound(step, config):
                break
            kept[rate] = step
        return kept

    ws_at, gs2_at = usable(ws["steps"]), usable(gs2["steps"])
    both = sorted(set(ws_at) & set(gs2_at))
    if not both:
        return None
    g, w = gs2_at[both[-1]], ws_at[both[-1]]
    gs2_us, ws_us = cpu_us_per_delivered(g), cpu_us_per_delivered(w)
    assert gs2_us and ws_us  # usable: both delivered
    return {
        "offered_per_s": g["offered_per_s"],
        "delivered_per_s": g["delivered_per_s"],
        "gs2_us": gs2_us,
        "ws_us": ws_us,
        "ratio": gs2_us / ws_us,
    }


def saturation_limit(
    steps: list[dict[str, Any]], saturated_at: int | None, config: ThroughputConfig
) -> tuple[str, str]:
    """What stopped the steps, as (kind, sentence): "relay" (saturated: deliveries fell short or
    stopped growing with the relay busy), or what capped a run that did not saturate: "offered
    rate" (every step allowed kept up), "load generator" (the senders could not send what was
    planned, or the load processes were busy: `load_bound`) or "relay starved" (fell short with
    its core not busy, after the retries). Only the first says anything about the relay's limit;
    the others must not read as one."""
    top = max(steps, key=lambda s: s["delivered_per_s"])
    if saturated_at is None:
        return "offered rate", (
            f"not saturated: offered rate ({len(steps)} of {config.max_steps} steps, every one "
            f"delivered in time; relay CPU {top['relay_cpu_percent']:.0f}% at "
            f"{top['sent_per_s']:,.0f} msg/s offered)"
        )
    last = steps[-1]
    cpu = last["relay_cpu_percent"]
    if last["fell_short"] and cpu >= config.starved_below_cpu:
        return "relay", (
            f"saturated: at {last['sent_per_s']:,.0f} msg/s offered the relay, at {cpu:.0f}% CPU, "
            f"delivered {100 * (1 - max(last['loss_ratio'], last['behind_ratio'])):.0f}% of what was due "
            "in time (or no more than the step before)"
        )
    if not last["sender_kept_up"]:
        share = last["sent_messages"] / last["planned_messages"] if last["planned_messages"] else 0.0
        return "load generator", (
            f"not saturated: load generator limit (the senders sent {100 * share:.0f}% of the "
            f"{last['offered_per_s']:,.0f} msg/s planned; relay CPU {cpu:.0f}%)"
        )
    if load_bound(last, config):
        return "load generator", (
            f"not saturated: load generator limit (its CPU {last['load_cpu_percent']:.0f}% while "
            f"the relay, at {cpu:.0f}% CPU, fell short of the {last['offered_per_s']:,.0f} msg/s offered)"
        )
    return "relay starved", (
        f"not saturated: relay starved (fell short at {cpu:.0f}% CPU, under "
        f"{config.starved_below_cpu:g}%, after {config.starved_retries} repeats: something else had its core)"
    )


def _log_latency(live: Live, transport: str, label: str, step: dict[str, Any]) -> None:
    added, e2e, nan = step["added_latency"], step["latency"], float("nan")
    live.log(
        f"{transport} {label}: offered {step['sent_per_s']:,.0f}/s, delivered "
        f"{step['delivered_per_s']:,.0f}/s, relay cpu {step['relay_cpu_percent']:.0f}%, added p50/p99 "
        f"{added.get('p50_ms', nan):.3f}/{added.get('p99_ms', nan):.3f} ms, end to end "
        f"{e2e.get('p50_ms', nan):.3f}/{e2e.get('p99_ms', nan):.3f} ms, sender late p99 "
        f"{step['sender_lateness'].get('p99_ms', nan):.3f} ms"
    )


def _since(point: dict[str, Any], origin: float) -> dict[str, Any]:
    """A timeline point's times as seconds since `origin`."""
    return {**point, **{k: point[k] - origin for k in ("t", "t_end") if k in point}}


def run(config: ThroughputConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    results: dict[str, Any] = {"transports": {}}
    total = len(config.transports) * (config.max_steps * config.step_seconds + 2 * config.half_load_seconds)
    started = time.monotonic()
    with Live("throughput", total=total, enabled=progress) as live:
        if config.baseline:
            live.update(rates="C baseline")
            base = c_baseline.run(
                c_baseline.BaselineConfig(
                    seconds=config.baseline_seconds,
                    offered_pps=config.baseline_pps,
                    size=config.payload_size,
                    relay_cpus=config.relay_cpus,
                    load_cpus=config.load_cpus,
                )
            )
            results["baseline"] = base
            results["baseline_span"] = [0.0, time.monotonic() - started]  # compiled and run
            if "skipped" in base:
                report.note(f"C baseline skipped: {base['skipped']}")
            else:
                live.log(
                    f"C baseline: {base['delivered_per_s']:,.0f} delivered/s, "
                    f"relay cpu {base['relay_cpu_percent']:.0f}%"
                )
        for transport in config.transports:
            results["transports"][transport] = t = run_transport(config, transport, live)
            t["timeline"] = [_since(p, started) for p in t["timeline"]]
    results["elapsed_s"] = time.monotonic() - started
    base_rate = results.get("baseline", {}).get("delivered_per_s")
    for t in results["transports"].values():
        t["ratio_to_baseline"] = t["saturation"]["delivered_per_s"] / base_rate if base_rate else None
        kept = t["sustained"]["delivered_per_s"]
        t["sustained_ratio_to_baseline"] = kept / base_rate if base_rate and kept else None
        t["cpu_us_per_delivered"] = cpu_us_per_delivered(t["saturation"])
    ws, gs2 = (results["transports"].get(name, {}).get("cpu_us_per_delivered") for name in ("ws", "gs2"))
    results["gs2_cpu_vs_ws"] = gs2 / ws if ws and gs2 else None  # the target: at most 1.3
    results["gs2_vs_ws_same_rate"] = gs2_vs_ws_same_rate(results["transports"], config)
    throughput_report.write(report, asdict(config), results)
    return results


def config_from_args(args: Any) -> ThroughputConfig:
    kw: dict[str, Any] = {}
    for name in (
        "rooms",
        "groups",
        "workers",
        "batch",
        "step_seconds",
        "start_rate",
        "growth",
        "max_steps",
        "payload_size",
        "coalesce_tick",
        "max_coalesce_delay_udp",
        "relay_cpus",
        "load_cpus",
        "sample_every",
        "baseline_pps",
        "baseline_seconds",
        "half_load_seconds",
        "relay_profile",
    ):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "transports", None):
        kw["transports"] = tuple(args.transports.split(","))
    if getattr(args, "no_baseline", False):
        kw["baseline"] = False
    return ThroughputConfig.quick(**kw) if getattr(args, "quick", False) else ThroughputConfig(**kw)
