"""Relay metrics: plain integer counters on the hot path, exported to Prometheus at scrape time.

Incrementing a prometheus_client Counter per message costs a lock and a dict lookup; the relay
bumps attributes of `Counters` instead and a custom collector reads them when /metrics is asked.
The counts by transport are arrays of 64-bit integers, which relay/server/_lane.c adds to in
place: in a list each add made a new int and freed the old, met cold at every wake-up (about
4% of a relay's CPU in the deployed shape, docs/architecture.md).
Every relay has its own registry, so several can live in one process (tests, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

TRANSPORTS = ("udp", "ws", "gs2")
"""The transport label of the per-transport counters, by kind (relay/server/transport.py)."""


FANOUT_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
"""Bucket upper bounds (seconds) of relay_fanout_seconds."""


class Counters:
    """What the relay counts. Indexed by transport: 0 = udp, 1 = ws, 2 = gs2 (TRANSPORTS)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "decrypt_failures",
        "drops",
        "fanout_buckets",
        "fanout_ns",
        "handshake_failures",
        "handshakes",
        "messages_in",
        "messages_out",
        "packets_in",
        "packets_out",
        "rebinds",
    )

    def __init__(self) -> None:
        self.messages_in = _by_transport()
        self.messages_out = _by_transport()
        self.packets_in = _by_transport()
        self.packets_out = _by_transport()
        self.bytes_in = _by_transport()
        self.bytes_out = _by_transport()
        self.drops: Counter[str] = Counter()
        self.handshakes = 0
        self.handshake_failures = 0
        self.decrypt_failures = 0
        self.rebinds = 0
        # relay_fanout_seconds, kept as plain numbers like the rest (a prometheus Histogram's
        # observe() takes a lock and costs several times this, once per flush)
        self.fanout_buckets = array("q", [0] * (len(FANOUT_BOUNDS) + 1))  # the last: over every bound
        self.fanout_ns = array("q", [0])  # their sum in nanoseconds: an int, added to in place

    @property
    def fanout_sum(self) -> float:
        """relay_fanout_seconds' sum, in seconds."""
        return self.fanout_ns[0] / 1e9

    def observe_fanout(self, seconds: float) -> None:
        self.fanout_buckets[bisect_left(FANOUT_BOUNDS, seconds)] += 1
        self.fanout_ns[0] += round(seconds * 1e9)


def _by_transport() -> array[int]:
    return array("q", [0] * len(TRANSPORTS))


class _RelayCollector(Collector):
    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float | None]]) -> None:
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        c = self.counters
        for name, values, doc in (
            ("relay_messages_in", c.messages_in, "Messages received from members"),
            ("relay_messages_out", c.messages_out, "Messages delivered to members"),
            ("relay_packets_in", c.packets_in, "Packets (datagrams or WebSocket frames) received"),
            ("relay_packets_out", c.packets_out, "Packets (datagrams or WebSocket frames) sent"),
            ("relay_bytes_in", c.bytes_in, "Bytes received"),
            ("relay_bytes_out", c.bytes_out, "Bytes sent"),
        ):
            family = CounterMetricFamily(name, doc, labels=["transport"])
            for i, transport in enumerate(TRANSPORTS):
                family.add_metric([transport], values[i])
            yield family
        drops = CounterMetricFamily("relay_dropped", "Input dropped, by reason", labels=["reason"])
        for reason, count in sorted(c.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        yield CounterMetricFamily("relay_handshakes", "Completed handshakes", value=c.handshakes)
        yield CounterMetricFamily(
            "relay_handshake_failures", "HELLOs that failed authentication", value=c.handshake_failures
        )
        yield CounterMetricFamily(
            "relay_decrypt_failures", "DATA packets that failed authentication", value=c.decrypt_failures
        )
        yield CounterMetricFamily("relay_rebinds", "UDP sessions moved to a new address", value=c.rebinds)
        cumulative = 0
        buckets = []
        for bound, count in zip((*map(str, FANOUT_BOUNDS), "+Inf"), c.fanout_buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "relay_fanout_seconds",
            "Time from receipt of a message to the last send of the pass that delivered it",
            buckets=buckets,
            sum_value=c.fanout_sum,
        )
        for name, value in self.gauges().items():  # None: named, without a sample (not this relay's)
            yield GaugeMetricFamily(f"relay_{name}", name.replace("_", " "), value=value)


class RelayMetrics:
    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float | None]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_RelayCollector(counters, gauges))
        # Added to every series of the registry (the caps guard's too). Where Prometheus cannot
        # label a relay's target with its room (on Kubernetes: Agones keeps the room on the
        # GameServer, never on the Pod) the relay says it itself.
        self.labels: dict[str, str] = {}

    def render(self) -> bytes:
        return generate_latest(self if self.labels else self.registry)  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        """The registry's metrics with `labels` on every sample (what `render` writes)."""
        labels = self.labels
        for metric in self.registry.collect():
            metric.samples = [s._replace(labels={**s.labels, **labels}) for s in metric.samples]
            yield metric


Status = Callable[[], tuple[bool, dict[str, object]]]
"""A health or readiness check: (passing, its JSON body)."""


ADMIN_CONNECTIONS = 8
"""Admin connections served at once; one more is closed as it is accepted."""
ADMIN_DEADLINE = 5.0
"""Seconds an admin connection has, from accept to the end of the answer."""
ADMIN_HEADER_LINES = 64
ADMIN_LINE = 8192


class AdminServer:
    """A minimal HTTP/1.0 server for GET /metrics, /healthz (alive) and /readyz (ready to take
    members); nothing else is routed. The two checks answer JSON, 200 or 503, in the control
    plane's shape: {"status": "ok" | "ready" | "unavailable", "component", "reason"?, ...}.

    It runs inside the relay, whose file descriptors are the tier's (1,024 at realtime1.nano)
    and its players': a client that trickles its headers, never reads the answer or sends endless
    lines holds one of ADMIN_CONNECTIONS for at most ADMIN_DEADLINE, and no more connections."""

    def __init__(self, metrics: RelayMetrics, health: Status, readiness: Status) -> None:
        self.metrics = metrics
        self.checks = {"/healthz": health, "/readyz": readiness}
        self.server: asyncio.Server | None = None
        self.open = 0
        self._writers: set[asyncio.StreamWriter] = set()  # connections being answered

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port, limit=ADMIN_LINE)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= ADMIN_CONNECTIONS:
            writer.transport.abort()
            return
        self.open += 1
        self._writers.add(writer)
        try:
            await asyncio.wait_for(self._answer(reader, writer), ADMIN_DEADLINE)
        except (TimeoutError, OSError, ValueError):  # ValueError: a line over ADMIN_LINE
            writer.transport.abort()
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        for _ in range(ADMIN_HEADER_LINES):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        else:
            raise ValueError("too many header lines")
        parts = line.decode("latin-1").split()
        path = parts[1].split("?")[0] if len(parts) >= 2 else ""
        check = self.checks.get(path)
        if path == "/metrics":
            status, body, ctype = "200 OK", self.metrics.render(), "text/plain; version=0.0.4"
        elif check is not None:
            passing, answer = check()
            status = "200 OK" if passing else "503 Service Unavailable"
            body, ctype = json.dumps(answer).encode() + b"\n", "application/json"
        else:
            status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
        head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    async def close(self) -> None:
        """Stops listening and drops the connections still open (a slow client's would otherwise
        outlive the relay's close by up to ADMIN_DEADLINE)."""
        for writer in list(self._writers):
            writer.transport.abort()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)
