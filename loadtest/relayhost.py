"""Runs one relay (one room) in its own pinned process, for scenarios that must measure it alone.

`python -m loadtest.relayhost --cpus 0 --config '{"limits": {...}}'` starts the relay through the
embedded API (`relay.embedded.room(**overrides)`, the same `Relay` that `relay serve` runs)
under uvloop, prints one JSON line {host, port, key, pid, admin_port} on stdout, and serves
until stdin closes or SIGTERM/SIGINT arrives. The embedded API is used instead of the
`relay serve` command line because the load scenarios need limits (rates, players, timeouts)
that a command line does not necessarily expose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from loadtest.machine import parse_cpus, pin


def config_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Turns {"limits": {...}, other fields...} into RelayConfig keyword overrides (RelayConfig
    is flat: `limits` only groups the scenario's rate and size knobs). An unknown name is an
    error: a scenario must not run silently with a default it meant to change."""
    from relay.server.config import RelayConfig

    names = {f.name for f in dataclasses.fields(RelayConfig)}
    out = {**(settings.get("limits") or {}), **{k: v for k, v in settings.items() if k != "limits"}}
    unknown = sorted(set(out) - names)
    if unknown:
        raise ValueError(f"RelayConfig has no {', '.join(unknown)}")
    return out


async def _serve(factory_path: str, settings: dict[str, Any], stats_interval: float = 0.0) -> None:
    module_name, _, attr = factory_path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr or "room")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    async with factory(**config_overrides(settings)) as room:
        relay = getattr(room, "relay", None)
        info = {
            "host": room.host,
            "port": room.port,
            "key": room.key,
            "pid": os.getpid(),
            "admin_port": getattr(relay, "admin_port", None),
        }
        print(json.dumps(info), flush=True)
        gc.freeze()  # as `relay serve` does once started: collections then skip the start-up heap
        reporter = asyncio.ensure_future(_report_stats(relay, stats_interval)) if stats_interval > 0 else None
        closed = (
            asyncio.ensure_future(relay.wait_closed())
            if relay is not None and hasattr(relay, "wait_closed")
            else None
        )
        waiters = [asyncio.ensure_future(stop.wait())] + ([closed] if closed else [])
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if reporter is not None:
            reporter.cancel()


async def _report_stats(relay: Any, interval: float) -> None:
    """One JSON line per interval: what only the relay's own process can see (its asyncio tasks)."""
    while True:
        await asyncio.sleep(interval)
        line: dict[str, Any] = {"stats": True, "at": time.monotonic(), "tasks": len(asyncio.all_tasks())}
        stats = getattr(relay, "stats", None)
        if callable(stats):
            with contextlib.suppress(Exception):
                value = stats()
                line["relay"] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)
        print(json.dumps(line, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.relayhost")
    parser.add_argument("--cpus", default=None, help="CPU set to pin to, e.g. 0")
    parser.add_argument("--config", default="{}", help="JSON RelayConfig overrides (limits nested)")
    parser.add_argument("--factory", default="relay.embedded:room", help="module:callable (async context)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--stats-interval", type=float, default=0.0, help="print task/relay stats every N s")
    parser.add_argument("--profile", default=None, help="run under cProfile and write pstats here at exit")
    args = parser.parse_args(argv)
    pin(parse_cpus(args.cpus))
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    coro = _serve(args.factory, json.loads(args.config), args.stats_interval)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(coro)
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        asyncio.run(coro)
    return 0


class RelayProcess:
    """The harness side: starts a relayhost, reads its address, stops it (or kills it, for chaos)."""

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        cpus: str | None = None,
        factory: str | None = None,
        timeout: float = 20.0,
        stats_interval: float = 0.0,
        profile: str | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "loadtest.relayhost", "--config", json.dumps(settings or {})]
        if stats_interval > 0:
            cmd += ["--stats-interval", str(stats_interval)]
        if profile:
            cmd += ["--profile", profile]
        if cpus:
            cmd += ["--cpus", cpus]
        if factory or os.environ.get("LOADTEST_RELAY_FACTORY"):
            cmd += ["--factory", factory or os.environ["LOADTEST_RELAY_FACTORY"]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = ""
        assert self.proc.stdout is not None
        while not line:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"relay host did not start (exit {self.proc.returncode})")
            line = self.proc.stdout.readline().strip()
        info = json.loads(line)
        self.host: str = info["host"]
        self.port: int = info["port"]
        self.key: str = info["key"]
        self.pid: int = info["pid"]
        self.admin_port: int | None = info.get("admin_port")
        self.stats: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read_stats, daemon=True)
        self._reader.start()

    def _read_stats(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and item.get("stats"):
                    self.stats.append(item)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Graceful: SIGTERM (the relay sends CLOSING to every member), then kill if needed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no CLOSING, no flush (what a crash looks like to the members)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
