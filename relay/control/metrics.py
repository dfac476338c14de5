"""Prometheus metrics of one control plane, on its own CollectorRegistry (several per test process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.control.records import ROOM_END_REASONS, ROOM_STATES

if TYPE_CHECKING:
    from relay.host.warm_pool import WarmPool
    from relay.server.tls import Certificate


class ControlMetrics:
    def __init__(self, room_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rooms = Gauge("relay_control_rooms", "Rooms by state", ["state"], registry=self.registry)
        for state in ROOM_STATES:
            self.rooms.labels(state).set_function(lambda s=state: float(room_counts().get(s, 0)))
        self.provision_seconds = Histogram(
            "relay_control_provision_seconds",
            "wantRoom to relay registered",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "relay_control_api_requests",
            "API requests by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.api_latency = Histogram(
            "relay_control_api_latency_seconds",
            "API request latency",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.rooms_closed = Counter(
            "relay_control_rooms_closed", "Rooms ended, by reason", ["reason"], registry=self.registry
        )
        for reason in sorted(ROOM_END_REASONS):
            self.rooms_closed.labels(reason)
        self.heartbeats = Counter(
            "relay_control_heartbeats", "Agent heartbeats received", registry=self.registry
        )
        self.gateway_connections = Gauge(
            "relay_control_gateway_connections", "Open gateway WebSockets", registry=self.registry
        )
        self.notifications = Counter(
            "relay_control_notifications", "Pushes delivered to gateway connections", registry=self.registry
        )

    def watch_warm_pool(self, pool: WarmPool) -> None:
        """The warm relays of this node (relay/host/warm_pool.py), read at each scrape."""
        self.registry.register(_WarmPoolCollector(pool))

    def watch_certificate(self, certificate: Certificate | None) -> None:
        """The API's certificate (api_tls_cert): when it expires, read at each scrape (a renewal
        loaded since shows); named without a sample where the API is plain HTTP."""
        self.registry.register(_CertificateCollector(certificate))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CertificateCollector(Collector):
    def __init__(self, certificate: Certificate | None) -> None:
        self.certificate = certificate

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "relay_control_tls_certificate_expiry_timestamp_seconds",
            "When the API's TLS certificate expires, Unix seconds (no sample without one)",
            value=self.certificate.not_after if self.certificate is not None else None,
        )


class _WarmPoolCollector(Collector):
    """Whether rooms find a warm relay: a pool short of ready standbys (a burst drained it, or
    standbys keep failing) shows as forks, each a slower start (docs/operations.md)."""

    def __init__(self, pool: WarmPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        ready = len(pool.ready_pids)
        standbys = GaugeMetricFamily(
            "relay_control_warm_relays",
            "Standby relays by state: ready (rehearsed, waiting for a room) or rehearsing",
            labels=["state"],
        )
        standbys.add_metric(["ready"], ready)
        standbys.add_metric(["rehearsing"], len(pool.standby_pids) - ready)
        yield standbys
        yield GaugeMetricFamily(
            "relay_control_warm_relays_wanted",
            "Standby relays the pool keeps (relay_warm_relays)",
            value=pool.size,
        )
        spawns = CounterMetricFamily(
            "relay_control_room_spawns",
            "Relays started for rooms, by how: a standby handed its room, or a fresh fork",
            labels=["how"],
        )
        spawns.add_metric(["standby"], pool.handed_out)
        spawns.add_metric(["fork"], pool.forked)
        yield spawns
