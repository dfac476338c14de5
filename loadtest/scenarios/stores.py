"""`stores`: the control plane's requests on SQLite beside PostgreSQL, on one node and on two
sharing one database (docs/operations.md, "Several nodes"), and how soon a room is ready.

1. Requests, for each of: SQLite, one node; PostgreSQL, one node; PostgreSQL, two nodes. Each node
   is `relay dev --provisioner none` (a wantRoom is the control plane and its store, no relay).
   `concurrency` keep-alive connections, spread over the nodes, want new rooms back to back for
   `seconds` (after `warmup_seconds` not counted), then read those rooms with getRoom as long.
   Requests/s, p50/p99 (HDR histograms), errors, and the CPU each part used meanwhile: the nodes,
   PostgreSQL (its server processes), and this load generator (one asyncio process writing
   prepared HTTP/1.1 requests, far cheaper per request than httpx). Together with the machine's
   cores they say what bounds the figure: on a 2-core machine two nodes cannot double it.
2. Room ready: `relay dev` as shipped (local relays, zygote, warm pool) on SQLite and on
   PostgreSQL, both running, taking turns: wantRoom, then getRoom every 2 ms until it shows the
   address (density's measure). Rooms are held until the end, as density holds them: a deleted
   room's relay exits, and its exit (the removal of its cgroup) would fall in the next room's
   window. The target: p99 through PostgreSQL within `target_ratio` (1.5x) of SQLite's.

PostgreSQL is a throw-away server (loadtest/pgcluster.py), or RELAY_TEST_POSTGRES_DSN's; where
there is none its parts are skipped, with the reason in the report.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest import controlplane, pgcluster
from loadtest import hist as hdr
from loadtest.controlplane import ControlPlane
from loadtest.machine import busy_percent, cpu_times, machine_info, sample
from loadtest.progress import Live
from loadtest.report import Report, pair_ms, table
from loadtest.scenarios.density import DensityConfig, _ready

SQLITE, POSTGRES = "SQLite", "PostgreSQL"


@dataclass(frozen=True, slots=True)
class StoresConfig:
    seconds: float = 10.0
    warmup_seconds: float = 1.0
    concurrency: int = 16
    ready_rooms: int = 100
    target_ratio: float = 1.5
    setups: tuple[tuple[str, int], ...] = field(default=((SQLITE, 1), (POSTGRES, 1), (POSTGRES, 2)))

    @classmethod
    def quick(cls, **kw: Any) -> StoresConfig:
        base: dict[str, Any] = {"seconds": 1.0, "warmup_seconds": 0.2, "concurrency": 4, "ready_rooms": 3}
        base.update(kw)
        return cls(**base)


class Connection:
    """One keep-alive HTTP/1.1 connection: prepared requests out, Content-Length answers in."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = "".join(
            f"{k}: {v}\r\n" for k, v in {"Host": f"{self.host}:{self.port}", **headers}.items()
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        """The answer's status (its body is read and dropped)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{length}\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        size = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                size = int(line[15:])
        await self.reader.readexactly(size)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _cpu(pids: list[int]) -> dict[int, float]:
    return {pid: s.cpu_s for pid in pids if (s := sample(pid)) is not None}


def _used(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    """Percent of one core the processes used (ones born meanwhile count from zero)."""
    return 100.0 * sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items()) / seconds


async def _phase(
    nodes: list[ControlPlane], ns: str, kind: str, config: StoresConfig, names: list[str], pg: Any
) -> dict[str, Any]:
    """`kind` "want" (new rooms, appended to names) or "get" (names read in turn), warmed up first."""
    headers = {**nodes[0].headers(), "Connection": "keep-alive"}
    conns = [Connection(nodes[i % len(nodes)].url, headers) for i in range(config.concurrency)]
    counter = itertools.count()
    measured = {"hist": hdr.new(), "ok": 0, "errors": 0}

    async def drive(conn: Connection, until: float, record: bool) -> None:
        while time.monotonic() < until:
            n = next(counter)
            t0 = time.perf_counter()
            if kind == "want":
                name = f"w{n}"
                body = json.dumps({"name": name}).encode()
                status = await conn.request("POST", f"/realtime/{ns}/room", body)
                if status == 200:
                    names.append(name)
            else:
                status = await conn.request("GET", f"/realtime/{ns}/room/{names[n % len(names)]}")
            if record:
                hdr.record_us(measured["hist"], (time.perf_counter() - t0) * 1e6)
                measured["ok" if status == 200 else "errors"] += 1

    try:
        warm_until = time.monotonic() + config.warmup_seconds
        await asyncio.gather(*(drive(c, warm_until, False) for c in conns))
        node_pids = [n.proc.pid for n in nodes if n.proc is not None]
        pg_pids = pg.server_pids() if pg is not None else []
        before = (_cpu(node_pids), _cpu(pg_pids), _cpu([os.getpid()]))
        machine = cpu_times()
        t0 = time.monotonic()
        await asyncio.gather(*(drive(c, t0 + config.seconds, True) for c in conns))
        elapsed = time.monotonic() - t0
        busy = busy_percent(machine, cpu_times(), set(machine))
        after = (_cpu(node_pids), _cpu(pg.server_pids() if pg is not None else []), _cpu([os.getpid()]))
    finally:
        for conn in conns:
            conn.close()
    per_node = [_used({p: before[0].get(p, 0.0)}, {p: after[0].get(p, 0.0)}, elapsed) for p in node_pids]
    cpu = {
        "nodes": sum(per_node),
        "busiest_node": max(per_node, default=0.0),
        "postgresql": _used(before[1], after[1], elapsed) if pg is not None else 0.0,
        "load_generator": _used(before[2], after[2], elapsed),
        "machine": busy,
    }
    return {
        "per_s": measured["ok"] / elapsed,
        "ok": measured["ok"],
        "errors": measured["errors"],
        "latency": hdr.summary(measured["hist"]),
        "cpu_percent": cpu,
        "bound": bound(cpu, len(machine) or machine_info()["cores"] or 1),
    }


def bound(cpu: dict[str, float], cores: int) -> str:
    """What held the rate: the machine's cores (ours, or other work's too), or one process at a
    core of its own (a node, or the load generator), or neither (the round trips)."""
    ours = cpu["nodes"] + cpu["postgresql"] + cpu["load_generator"]
    parts = (
        f"nodes {cpu['nodes']:.0f}%, PostgreSQL {cpu['postgresql']:.0f}%, load {cpu['load_generator']:.0f}%, "
        f"other work {max(0.0, cpu['machine'] - ours):.0f}%"
    )
    if cpu["machine"] >= 0.85 * 100 * cores:
        return f"the machine's {cores} cores, {cpu['machine']:.0f}% busy ({parts})"
    single = {"a node": cpu["busiest_node"], "the load generator": cpu["load_generator"]}
    who, used = max(single.items(), key=lambda kv: kv[1])
    if used >= 85:
        return f"{who} at one core ({parts})"
    return f"no core saturated: waits (round trips, commits) ({parts})"


async def _requests(nodes: list[ControlPlane], config: StoresConfig, pg: Any) -> dict[str, Any]:
    ns = f"stores{int(time.time())}"
    async with httpx.AsyncClient(timeout=30.0) as http:
        await nodes[0].login(http)
        await nodes[0].create_namespace(http, ns)
    for node in nodes[1:]:
        node.token = nodes[0].token  # one signing key: a token is good on every node
    names: list[str] = []
    want = await _phase(nodes, ns, "want", config, names, pg)
    if not names:
        raise RuntimeError(f"no wantRoom succeeded ({want['errors']} errors)")
    get = await _phase(nodes, ns, "get", config, names, pg)
    return {"want": want, "get": get, "rooms": len(names)}


def _start_nodes(store: str, count: int, url: str | None, extra: list[str]) -> list[ControlPlane]:
    nodes: list[ControlPlane] = []
    try:
        for i in range(count):
            args = [*extra, *(["--store", url, "--node-id", f"node{i}"] if store == POSTGRES else [])]
            nodes.append(ControlPlane.start(extra_args=args))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def _room_ready(planes: dict[str, ControlPlane], rooms: int) -> dict[str, list[float]]:
    """Rooms wanted one at a time, the planes taking turns; held (their planes stop them)."""
    ns = f"ready{int(time.time())}"
    times: dict[str, list[float]] = {store: [] for store in planes}
    async with httpx.AsyncClient(timeout=30.0) as http:
        for cp in planes.values():
            await cp.login(http)
            await cp.create_namespace(http, ns)
            await _ready(cp, http, ns, "warm-up", DensityConfig())  # first uses: not counted
        for i in range(rooms):
            for store, cp in planes.items():
                item = await _ready(cp, http, ns, f"r{i}", DensityConfig())
                times[store].append(item["ready_ms"])
    return times


def run(config: StoresConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    report.config = asdict(config)
    reason = controlplane.available()
    if reason:
        report.note(f"skipped: {reason}")
        report.markdown = [f"Skipped: {reason}"]
        report.results = {"skipped": reason}
        return report.results
    pg_reason = pgcluster.unavailable()
    if pg_reason:
        report.note(f"PostgreSQL parts skipped: {pg_reason}")
        print(f"stores: PostgreSQL parts skipped: {pg_reason}")
    results: dict[str, Any] = {"setups": [], "postgresql_skipped": pg_reason}
    pg = None if pg_reason else pgcluster.PostgresServer.from_env()
    try:
        with Live("stores", total=len(config.setups) + 1, enabled=progress) as live:
            for store, count in config.setups:
                if store == POSTGRES and pg is None:
                    continue
                live.update(rates=f"{store}, {count} node(s)")
                url = pg.create_database() if pg is not None and store == POSTGRES else None
                nodes = _start_nodes(store, count, url, ["--provisioner", "none", "--log-level", "warning"])
                try:
                    figures = asyncio.run(_requests(nodes, config, pg if store == POSTGRES else None))
                finally:
                    for node in nodes:
                        node.stop()
                results["setups"].append({"store": store, "nodes": count, **figures})
                live.log(
                    f"stores: {store} x{count}: wantRoom {figures['want']['per_s']:,.0f}/s, "
                    f"getRoom {figures['get']['per_s']:,.0f}/s"
                )
            live.update(rates="room ready")
            planes: dict[str, ControlPlane] = {}
            try:
                planes[SQLITE] = _start_nodes(SQLITE, 1, None, [])[0]
                if pg is not None:
                    planes[POSTGRES] = _start_nodes(POSTGRES, 1, pg.create_database(), [])[0]
                times = asyncio.run(_room_ready(planes, config.ready_rooms))
            finally:
                for plane in planes.values():
                    plane.stop()
    finally:
        if pg is not None:
            pg.stop()
    ready = {store: _summary(values) for store, values in times.items()}
    results["ready"] = ready
    if POSTGRES in ready and ready[SQLITE].get("p99_ms"):
        ratio = ready[POSTGRES]["p99_ms"] / ready[SQLITE]["p99_ms"]
        results["ready_p99_ratio"] = ratio
        results["ready_within_target"] = ratio <= config.target_ratio
    report.results = results
    report.markdown = markdown(results, config)
    return results


def _summary(values_ms: list[float]) -> dict[str, Any]:
    hist = hdr.new()
    for value in values_ms:
        hdr.record_us(hist, value * 1000)
    return hdr.summary(hist)


def markdown(results: dict[str, Any], config: StoresConfig) -> list[str]:
    rows = []
    for s in results["setups"]:
        want, get = s["want"], s["get"]
        rows.append(
            [
                s["store"],
                s["nodes"],
                want["per_s"],
                pair_ms(want["latency"].get("p50_ms"), want["latency"].get("p99_ms")),
                get["per_s"],
                pair_ms(get["latency"].get("p50_ms"), get["latency"].get("p99_ms")),
                want["errors"] + get["errors"],
                want["bound"],
                get["bound"],
            ]
        )
    ready_rows = [
        [store, r.get("count"), r.get("p50_ms"), r.get("p99_ms"), r.get("max_ms")]
        for store, r in results.get("ready", {}).items()
    ]
    lines = [
        "## Result",
        "",
        f"{config.concurrency} keep-alive connections spread over the nodes, {config.seconds:g} s per "
        "phase; nodes with no provisioner (records only).",
        "",
        *table(
            [
                "store",
                "nodes",
                "wantRoom req/s",
                "wantRoom p50 / p99 ms",
                "getRoom req/s",
                "getRoom p50 / p99 ms",
                "errors",
                "what bounds wantRoom",
                "what bounds getRoom",
            ],
            rows,
        ),
        "",
        "Room ready (wantRoom -> getRoom shows the address; `relay dev` as shipped, one room at a time, "
        "rooms held):",
        "",
        *table(["store", "rooms", "p50 ms", "p99 ms", "max ms"], ready_rows),
        "",
    ]
    if "ready_p99_ratio" in results:
        met = "met" if results["ready_within_target"] else "NOT met"
        lines.append(
            f"Room-ready p99 through PostgreSQL is {results['ready_p99_ratio']:.2f}x SQLite's "
            f"(target: within {config.target_ratio:g}x): {met}."
        )
    if results.get("postgresql_skipped"):
        lines.append(f"PostgreSQL parts skipped: {results['postgresql_skipped']}.")
    return lines


def config_from_args(args: Any) -> StoresConfig:
    kw: dict[str, Any] = {}
    for name in ("seconds", "concurrency", "ready_rooms"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    return StoresConfig.quick(**kw) if getattr(args, "quick", False) else StoresConfig(**kw)
