"""The C baseline scenario: compiled and run from the repository, or a failure that says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import baseline, checks

# serial: these measure CPU and latency, so `make test` runs them alone (Makefile)
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_baseline_quick_run_writes_a_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "baseline", "--quick", "--no-progress", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checks.problems(out) == []
    result = checks.load(out)["results"]
    reason = baseline.unavailable()
    if reason:  # the scenario says why it did not run, and fails
        assert proc.returncode == 1 and result["skipped"] == reason and reason in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    run = result["runs"][0]
    assert run["relay_out_per_s"] > 0
    # the relay forwards each datagram to 3 receivers: out is 3x in (within the counting window)
    assert run["relay_out_per_s"] == pytest.approx(3 * run["relay_in_per_s"], rel=0.02)
    assert run["relay_in_per_s"] <= run["sent_per_s"] * 1.02
    assert run["received_per_s"] <= run["relay_out_per_s"] * 1.02
    assert result["delivered_per_s"] == run["relay_out_per_s"]
    assert result["limit"] in proc.stdout and isinstance(result["saturated"], bool)


def test_baseline_says_why_when_the_source_is_missing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(baseline, "SOURCE", tmp_path / "nope.c")
    result = baseline.run(baseline.BaselineConfig(seconds=0.1))
    assert "not found" in result["skipped"]


SHARED_BENCH = ROOT.parent / "shared" / "bench" / "udp_baseline.c"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_BENCH.is_file(), reason=f"{SHARED_BENCH} is not beside this checkout")
def test_our_reference_relay_keeps_pace_with_the_shared_one() -> None:
    """Where the project's shared/ sits beside the checkout, our C relay (the one the benchmarks
    use) and the shared reference relay forward the same offered load in the same run, one after
    the other on the same CPUs: ours delivers what was due and costs about as much CPU."""
    # no gcc or taskset here is a failure, not a skip: the figures are to be compared in this run
    assert baseline.unavailable() is None, baseline.unavailable()
    config = baseline.BaselineConfig(seconds=1.0, offered_pps=20_000)
    ours = baseline.run(config)
    theirs = baseline.run(config, SHARED_BENCH)
    for result in (ours, theirs):
        assert "skipped" not in result, result
        assert result["relay_out_per_s"] == pytest.approx(3 * result["relay_in_per_s"], rel=0.02)
    # rates over one second on a shared machine spread (10-20% run to run): within a factor of 2
    assert 0.5 <= ours["relay_in_per_s"] / theirs["relay_in_per_s"] <= 2.0
    # CPU at a fixed rate, on a shared 2-core machine: only a gross difference would mean anything
    limit = max(2.5 * theirs["relay_cpu_percent"], theirs["relay_cpu_percent"] + 10)
    assert ours["relay_cpu_percent"] <= limit


@pytest.mark.slow
def test_the_c_relay_as_deployed_runs_a_process_per_room() -> None:
    """`run_per_room`: one C relay process per room, each forwarding only its own room's datagrams
    under the fleet-shape's spread load; every datagram reaches its 3 receivers, and the processes'
    CPU and context switches are read from /proc over the sending window."""
    assert baseline.unavailable() is None, baseline.unavailable()
    config = baseline.PerRoomConfig(rooms=10, hz=50.0, seconds=1.0)  # CPU is read in 10 ms ticks
    result = baseline.run_per_room(config)
    assert result["processes"] == 10
    # 10 rooms x 4 players x 50 Hz for 1 s, each datagram forwarded to 3 receivers
    assert result["sent_per_s"] == pytest.approx(2000, rel=0.1)
    assert result["received_per_s"] == pytest.approx(3 * result["sent_per_s"], rel=0.1)
    assert result["relay_cpu_percent"] > 0 and result["cpu_us_per_message_in"] > 0
    assert result["context_switches_per_message_in"] >= 0.5  # a wake-up for about every datagram


@pytest.mark.slow
@pytest.mark.parametrize(("relay", "per"), [("c-aead", 1), ("python", 1), ("python-aead", 2)])
def test_the_interpreters_floor_runs_in_the_relays_shape(relay: str, per: int) -> None:
    """The C relay with AES-GCM, and the floor relays (loadtest/floor_relay.py), in place of the C
    relay: one process per room, or `per` rooms to a process; every datagram reaches its 3
    receivers."""
    assert baseline.unavailable() is None, baseline.unavailable()
    config = baseline.PerRoomConfig(rooms=4, hz=50.0, seconds=1.0, relay=relay, rooms_per_process=per)
    result = baseline.run_per_room(config)
    assert result["processes"] == 4 // per
    assert result["sent_per_s"] == pytest.approx(800, rel=0.1)
    assert result["received_per_s"] == pytest.approx(3 * result["sent_per_s"], rel=0.1)
    assert result["relay_out_per_s"] == pytest.approx(3 * result["sent_per_s"], rel=0.1)  # its own report
    assert result["relay_cpu_percent"] > 0


def test_an_unknown_floor_relay_is_refused() -> None:
    with pytest.raises(ValueError, match="python-aead"):
        baseline.run_per_room(baseline.PerRoomConfig(relay="pypy"))


@pytest.mark.parametrize("relay", ["c-aead", "python-aead"])
def test_the_aead_relays_send_what_the_relay_sends(relay: str, tmp_path: Path) -> None:
    """With AES-GCM every datagram goes on as a sealed DATA packet: the 16-byte header, then the
    payload past the header encrypted under a counter nonce with its tag (AES-256, the relay's
    session keys' size), so both the C relay and the interpreter's floor pay a seal per
    recipient on packets as long as the relay's; each counter used once."""
    import socket
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from loadtest import floor_relay

    if relay == "c-aead":
        assert baseline.unavailable() is None, baseline.unavailable()
        command = [str(baseline.compile_baseline(tmp_path, aead=True))]
        extra = ["aead"]
    else:
        command, extra = [sys.executable, str(baseline.FLOOR)], ["--aead"]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)
        dest = sink.getsockname()[1]
        port = baseline._free_base(1)
        proc = subprocess.Popen(
            [*command, "relay", str(port), "1", "1", str(dest), *extra], stdout=subprocess.PIPE, text=True
        )
        try:
            baseline._wait_bound(port, 1, [proc], 30.0)
            payload = bytes(16) + b"x" * 84
            for _ in range(3):
                sender.sendto(payload, ("127.0.0.1", port))
            packets = [sink.recv(2048) for _ in range(3)]
        finally:
            out, _ = proc.communicate(timeout=30)
    seal_key = AESGCM(bytes(range(32)))
    counters = []
    for packet in packets:
        assert len(packet) == len(payload) + 16
        header = packet[:16]
        counters.append(struct.unpack("!Q", header[8:])[0])
        assert seal_key.decrypt(floor_relay.NONCE_PAD + header[8:], packet[16:], header) == payload[16:]
    assert counters == [1, 2, 3]
    assert out.startswith("relay: ") and "/s out" in out
