"""The C per-packet UDP relay (loadtest/c/udp_reference.c, written for this project), run the way
the project's reference script runs it.

Same workload shape as the throughput scenario: one relay on CPU 0 forwarding every 100-byte
datagram to 3 receivers (a 4-player room's fan-out), sender and receivers on CPU 1. Its
"delivered" figure is datagrams arriving at the receivers per second; each datagram is one
100-byte message, so it compares directly with the relay's delivered messages per second.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).resolve().parent / "c" / "udp_reference.c"
FLOOR = Path(__file__).resolve().parent / "floor_relay.py"
RELAYS = ("c", "c-aead", "python", "python-aead")
"""What `run_per_room` runs: the C relay, without or with the relay's AES-GCM work (`aead`: what a
native data path would pay), or the interpreter's floor (loadtest/floor_relay.py), the same two."""

_RELAY = re.compile(r"relay: (\d+) datagrams/s in, (\d+)/s out, cpu (\d+)%")
_RECV = re.compile(r"recv: (\d+) datagrams/s in")
_SEND = re.compile(r"send: (\d+) datagrams in ([\d.]+) s = (\d+)/s, cpu (\d+)%")


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """4 s at 100k datagrams/s offered, fan-out 3, 100 bytes: the shape of the throughput runs."""

    seconds: float = 4.0
    offered_pps: int = 100_000
    size: int = 100
    fanout: int = 3
    relay_cpus: str = "0"
    load_cpus: str = "1"


def unavailable() -> str | None:
    """Why the baseline cannot run here, or None."""
    if not SOURCE.is_file():
        return f"{SOURCE} not found"
    if shutil.which("gcc") is None:
        return "gcc not installed (Debian: apt-get install gcc)"
    if shutil.which("taskset") is None:
        return "taskset not installed"
    return None


def _bound_udp_ports() -> set[int] | None:
    """The local ports of this network namespace's UDP sockets (/proc/net/udp, udp6); None where
    there is no /proc to read."""
    ports: set[int] = set()
    try:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as f:
                next(f, None)  # the heading
                ports.update(int(line.split()[1].rsplit(":", 1)[1], 16) for line in f)
    except (OSError, ValueError, IndexError):
        return None
    return ports


def _wait_bound(base: int, count: int, relays: list[subprocess.Popen[str]], timeout: float) -> None:
    """Until every port from `base` is bound (the relays are up), or `timeout` seconds: a hundred
    interpreters take seconds to start on one core, the C relays milliseconds. Read from /proc,
    not probed with a bind, which would take a port from a relay starting that instant."""
    deadline = time.monotonic() + timeout
    wanted = set(range(base, base + count))
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in relays):
            raise RuntimeError("a relay of the baseline exited before the load began")
        bound = _bound_udp_ports()
        if bound is None:  # no /proc: the time a C relay needs
            time.sleep(min(timeout, 0.3 + count / 500))
            return
        if wanted <= bound:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # the last one bound its socket; let it reach its loop


def _free_base(count: int) -> int:
    """A base port with `count` consecutive free UDP ports (picked at random)."""
    for _ in range(200):
        base = random.randint(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for the baseline")


def compile_baseline(workdir: Path, source: Path = SOURCE, aead: bool = False) -> Path:
    """`aead`: with its AES-GCM mode, which links OpenSSL's libcrypto (Debian: libssl-dev)."""
    binary = workdir / source.stem
    flags = ["-DWITH_AEAD"] if aead else []
    libs = ["-lcrypto"] if aead else []
    subprocess.run(
        ["gcc", "-O2", *flags, "-o", str(binary), str(source), *libs], check=True, capture_output=True
    )
    return binary


def _command(cpus: str, binary: Path, *args: object) -> list[str]:
    """The C relay binary in one of its roles (relay, send, recv), pinned to `cpus`."""
    return ["taskset", "-c", cpus, str(binary), *map(str, args)]


def _start(cpus: str, binary: Path, *args: object) -> subprocess.Popen[str]:
    """A role that runs beside the sender and prints its report when its time is up."""
    return subprocess.Popen(_command(cpus, binary, *args), stdout=subprocess.PIPE, text=True)


def _receivers(
    cpus: str, binary: Path, first_port: int, count: int, seconds: str
) -> list[subprocess.Popen[str]]:
    return [_start(cpus, binary, "recv", first_port + j, seconds) for j in range(count)]


def run(config: BaselineConfig = BaselineConfig(), source: Path = SOURCE) -> dict[str, Any]:
    """Compiles and runs one baseline measurement; {'skipped': reason} when it cannot run.
    `source`: another C relay with the same command line and output (a cross-check)."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="udp_baseline-") as tmp:
        binary = compile_baseline(Path(tmp), source)
        base = _free_base(config.fanout + 1)
        secs = f"{config.seconds:g}"
        receivers = _receivers(config.load_cpus, binary, base + 1, config.fanout, secs)
        relay = _start(config.relay_cpus, binary, "relay", base, secs, config.fanout, base + 1)
        time.sleep(0.3)
        sender = subprocess.run(
            _command(config.load_cpus, binary, "send", base, secs, config.size, config.offered_pps),
            capture_output=True,
            text=True,
            timeout=config.seconds + 30,
        )
        relay_out, _ = relay.communicate(timeout=config.seconds + 30)
        recv_outs = [r.communicate(timeout=config.seconds + 30)[0] for r in receivers]
    result: dict[str, Any] = {
        "config": asdict(config),
        "raw": {
            "relay": relay_out.strip(),
            "send": sender.stdout.strip(),
            "recv": [o.strip() for o in recv_outs],
        },
    }
    m = _RELAY.search(relay_out)
    if not m:
        return {**result, "skipped": f"could not parse the baseline relay's output: {relay_out!r}"}
    result["relay_in_per_s"] = float(m.group(1))
    result["relay_out_per_s"] = float(m.group(2))
    result["relay_cpu_percent"] = float(m.group(3))
    recv_rates = [float(m.group(1)) for o in recv_outs if (m := _RECV.search(o))]
    result["received_per_s"] = sum(recv_rates)
    s = _SEND.search(sender.stdout)
    result["sent_per_s"] = float(s.group(3)) if s else None
    # Delivered = datagrams (= 100-byte messages) the relay put out to the receivers, per second.
    result["delivered_per_s"] = result["relay_out_per_s"]
    result["saturated"], result["limit"] = limit(result, config)
    return result


def limit(result: dict[str, Any], config: BaselineConfig, busy_cpu: float = 70.0) -> tuple[bool, str]:
    """Whether the C relay ran at its limit, and why not: it is offered a fixed rate, so a
    run where it forwarded all of it says nothing about how much more it could (the figure is
    the offered rate), and one where datagrams went missing with its core not busy lost them to
    the kernel or to a shared core, not to its own CPU."""
    cpu = result["relay_cpu_percent"]
    sent = result.get("sent_per_s") or 0.0
    if sent and result["relay_out_per_s"] >= 0.95 * config.fanout * sent:
        return False, f"not saturated: offered rate ({sent:,.0f} datagrams/s in, relay CPU {cpu:.0f}%)"
    if cpu >= busy_cpu:
        return True, f"saturated: relay at {cpu:.0f}% CPU"
    reached = result["relay_in_per_s"] / sent if sent else 0.0
    return False, (
        f"not saturated: {100 * reached:.0f}% of the datagrams sent reached the relay, at {cpu:.0f}% "
        "CPU (dropped by the kernel or the core shared, not the relay's CPU limit)"
    )


def run_median(config: BaselineConfig, runs: int) -> dict[str, Any]:
    """Median delivered rate of several runs (each run's figures kept)."""
    results = [run(config) for _ in range(max(1, runs))]
    ok = [r for r in results if "skipped" not in r]
    if not ok:
        return results[0]
    median = sorted(ok, key=lambda r: r["delivered_per_s"])[len(ok) // 2]
    return {
        "delivered_per_s": median["delivered_per_s"],
        "relay_cpu_percent": sorted(r["relay_cpu_percent"] for r in ok)[len(ok) // 2],
        "saturated": median["saturated"],
        "limit": median["limit"],  # the median run's
        "runs": results,
        "config": asdict(config),
    }


@dataclass(frozen=True, slots=True)
class PerRoomConfig:
    """The deployed shape for the C relay (or the interpreter's floor): one process per room, the
    fleet-shape load."""

    rooms: int = 100
    players: int = 4
    hz: float = 20.0
    seconds: float = 10.0
    size: int = 100
    relay_cpus: str = "0"
    load_cpus: str = "1"
    relay: str = "c"  # one of RELAYS
    rooms_per_process: int = 1  # the floor relays only: ports one process serves (C: 1)


def run_per_room(config: PerRoomConfig = PerRoomConfig()) -> dict[str, Any]:
    """The C relay as a host would run it if it were the product: one process per room, each
    forwarding its room's datagrams to the room's other players (fan-out players - 1), all of
    them on the relay CPU; every player sends one datagram per tick at its own phase
    (`spread_phase`, the fleet-shape load's). Measured like the Python relays in fleet-shape:
    the relay processes' CPU (/proc/PID/schedstat, exact for many small processes) and context
    switches from /proc over the sending window. It shows
    what the one-process-per-room shape costs with no interpreter at all (docs/architecture.md).
    `config.relay` "python" or "python-aead": the interpreter's floor in the same shape instead
    (loadtest/floor_relay.py), `rooms_per_process` ports to each process.
    The sender runs in this process: the caller pins it to the load CPU."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    if config.relay not in RELAYS:
        raise ValueError(f"relay {config.relay!r}: one of {', '.join(RELAYS)}")
    from loadtest.fastload.sender import spread_phase
    from loadtest.machine import context_switches, cpu_ns

    fanout = config.players - 1
    count = config.rooms * config.players
    tick = 1.0 / config.hz
    slots = sorted((spread_phase(k, count, tick * 1e9) / 1e9, k // config.players) for k in range(count))
    native, aead = config.relay.startswith("c"), config.relay.endswith("-aead")
    per = 1 if native else max(1, config.rooms_per_process)
    with tempfile.TemporaryDirectory(prefix="udp_baseline-") as tmp:
        try:
            binary = compile_baseline(Path(tmp), aead=native and aead)
        except subprocess.CalledProcessError as exc:
            if not (native and aead):
                raise
            error = exc.stderr.decode(errors="replace").strip().splitlines()[:1]
            why = "it links OpenSSL's libcrypto; Debian: apt-get install libssl-dev"
            return {"skipped": f"the C relay with AES-GCM did not build ({why}): {error}"}
        base = _free_base(config.rooms + fanout)
        first_dest = base + config.rooms
        # how long after its first datagram a relay stops: the window and a second (the floor relays
        # have no timer while they relay, so they sleep it out; the C ones stop at a second's silence)
        lifetime = f"{config.seconds + 1:g}"
        relays = []
        for first in range(0, config.rooms, per):
            args: tuple[object, ...] = ("relay", base + first, lifetime, fanout, first_dest)
            if native:
                relays.append(_start(config.relay_cpus, binary, *args, *(["aead"] if aead else [])))
            else:
                extra = ("--rooms", min(per, config.rooms - first), *(["--aead"] if aead else []))
                relays.append(_start(config.relay_cpus, Path(sys.executable), FLOOR, *args, *extra))
        sent = 0
        receivers: list[subprocess.Popen[str]] = []
        try:
            _wait_bound(base, config.rooms, relays, 0.3 + config.rooms / 500 if native else 60.0)
            # after the relays: a receiver that waited through their start would have given up
            receivers = _receivers(config.load_cpus, binary, first_dest, fanout, lifetime)
            time.sleep(0.2)
            payload = b"x" * config.size
            before = sum(cpu_ns(p.pid) for p in relays)
            switches = sum(context_switches(p.pid) for p in relays)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                start = time.monotonic()
                for t in range(round(config.seconds * config.hz)):
                    for offset, room in slots:
                        wait = start + t * tick + offset - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        s.sendto(payload, ("127.0.0.1", base + room))
                        sent += 1
                window = time.monotonic() - start
            cpu_s = (sum(cpu_ns(p.pid) for p in relays) - before) / 1e9
            switches = sum(context_switches(p.pid) for p in relays) - switches
        finally:
            outs = [p.communicate(timeout=config.seconds + 30)[0] for p in relays]
            recv_outs = [p.communicate(timeout=config.seconds + 30)[0] for p in receivers]
    received = [float(m.group(1)) for o in recv_outs if (m := _RECV.search(o))]
    forwarded = [float(m.group(2)) for o in outs if (m := _RELAY.search(o))]
    return {
        "config": asdict(config),
        "processes": len(relays),
        "sent_per_s": sent / window,
        "relay_out_per_s": sum(forwarded),
        "received_per_s": sum(received),
        "relay_cpu_percent": round(100 * cpu_s / window, 1),
        "cpu_us_per_message_in": round(cpu_s / sent * 1e6, 2) if sent else None,
        "context_switches_per_message_in": round(switches / sent, 3) if sent else None,
    }
