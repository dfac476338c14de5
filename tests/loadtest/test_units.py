"""The harness's own pieces: payload header, accounting, histograms, machine readings, reports."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest import checks, payload
from loadtest import hist as hdr
from loadtest.arguments import build_parser
from loadtest.controlplane import ControlPlane
from loadtest.fastload.messages import message_size
from loadtest.fastload.sender import spread_phase
from loadtest.loopback import loopback_problem, require_loopback
from loadtest.machine import (
    busy_percent,
    context_switches,
    cpu_ns,
    cpu_percent,
    cpu_sample,
    cpu_times,
    machine_info,
    parse_cpus,
    sample,
    steal_percent,
)
from loadtest.report import Report, plot_histogram, plot_latency_cdf, plot_timeseries
from loadtest.scenarios import fleetshape
from loadtest.streams import RecipientStats, SenderStream, account
from relay.protocol.messages import encode_message


def test_payload_round_trip_and_foreign_data() -> None:
    data = payload.build(100, 3, 7, 42, 123456789)
    assert len(data) == 100
    assert payload.parse(data) == (3, 7, 42, 123456789)
    assert payload.parse(b"x" * 100) is None
    assert payload.parse(b"short") is None
    assert len(payload.build(4, 0, 0, 0, 0)) == payload.HEADER_SIZE  # never shorter than the header


def test_the_receivers_message_size_matches_the_protocol_encoder() -> None:
    """The receivers' length count relies on every MESSAGE having this size."""
    data = bytes(range(100))
    assert len(encode_message(5, data)) == message_size(100, 5)
    assert len(encode_message(130, data)) == message_size(100, 130)


def test_sender_stream_tells_loss_duplicates_and_reordering_apart() -> None:
    s = SenderStream()
    for seq in (1, 2, 4, 3, 3, 6):
        s.arrive(seq)
    assert (s.delivered, s.duplicates, s.reordered, s.top) == (5, 1, 1, 6)


def test_account_keeps_sent_equal_delivered_plus_lost_per_recipient() -> None:
    a, b = RecipientStats(), RecipientStats()
    for seq in range(1, 9):
        a.arrive(2, seq)  # a got all 8 from bot2
    for seq in (1, 2, 3, 5):
        b.arrive(1, seq)  # b got 4 of 6 from bot1
    acc = account(
        {"bot1": {"botA": 0, "botB": 6}, "bot2": {"botA": 8}},
        {"botA": {"bot2": a.to_json()["2"]}, "botB": {"bot1": b.to_json()["1"]}},
    )
    expected = {"sent": 8, "delivered": 8, "lost": 0, "unaddressed": 0, "duplicates": 0, "reordered": 0}
    assert acc["per_recipient"]["botA"] == expected
    assert acc["per_recipient"]["botB"]["lost"] == 2
    assert acc["totals"]["sent"] == 14 and acc["totals"]["lost"] == 2
    assert abs(acc["totals"]["loss_ratio"] - 2 / 14) < 1e-12
    assert checks.accounting_problems(acc) == []


def test_a_delivery_the_sender_could_not_count_is_unaddressed_not_negative_loss() -> None:
    """Churn: bot1 broadcast before it saw botB rejoin, so it addressed botB 3 messages while the
    relay delivered 4; bot2 addressed botB 5 and 1 was lost. Neither hides the other."""
    from_1, from_2 = RecipientStats(), RecipientStats()
    for seq in range(1, 5):
        from_1.arrive(1, seq)
    for seq in range(1, 5):
        from_2.arrive(2, seq)
    acc = account(
        {"bot1": {"botB": 3}, "bot2": {"botB": 5}},
        {"botB": {"bot1": from_1.to_json()["1"], "bot2": from_2.to_json()["2"]}},
    )
    row = acc["per_recipient"]["botB"]
    assert (row["sent"], row["delivered"], row["lost"], row["unaddressed"]) == (8, 8, 1, 1)
    assert checks.accounting_problems(acc) == []
    row["lost"] = 0  # 8 + 1 != 8 + 0
    assert checks.accounting_problems(acc) != []


def test_histograms_merge_across_processes_and_percentiles_are_ordered() -> None:
    one, two = hdr.new(), hdr.new()
    for v in range(1, 1001):
        hdr.record_us(one, v)
    hdr.record_us(two, 50_000)
    merged = hdr.merge([hdr.encode(one), hdr.encode(two), ""])
    summary = hdr.summary(merged)
    assert summary["count"] == 1001
    assert summary["max_ms"] >= 49.9
    assert checks.latency_problems({"lat": summary}) == []
    assert hdr.summary(hdr.new()) == {"count": 0}
    assert checks.latency_problems({"lat": {"count": 3, "p50_ms": 2.0, "p99_ms": 1.0}}) != []


@pytest.mark.parametrize("samples", [1, 2, 7, 3000])
def test_summaries_and_cdfs_read_what_hdrh_itself_reads(samples: int) -> None:
    """summary and cdf_points walk only the buckets holding samples; they must give hdrh's own
    mean and percentiles, on a histogram as recorded and as decoded from a worker's text."""
    import random

    rng = random.Random(samples)
    h = hdr.new()
    for _ in range(samples):
        hdr.record_us(h, rng.lognormvariate(rng.uniform(0, 12), 2.0))
    for hist in (h, hdr.decode(hdr.encode(h))):
        summary = hdr.summary(hist)
        assert summary["mean_ms"] == pytest.approx(hist.get_mean_value() / 1000, rel=1e-12)
        for p in hdr.PERCENTILES:
            assert summary[f"p{p:g}_ms"] == hist.get_value_at_percentile(p) / 1000
        xs, ys = hdr.cdf_points(hist, points=50)
        assert len(xs) == len(ys) == 51 and xs[-1] == hist.get_max_value() / 1000
        assert xs[:-1] == [hist.get_value_at_percentile(y * 100) / 1000 for y in ys[:-1]]


def test_machine_readings() -> None:
    info = machine_info()
    assert info["cores"] >= 1 and info["kernel"] and info["cpu_model"]
    assert parse_cpus(None) is None and parse_cpus("") is None
    assert parse_cpus("0") == {0}
    assert parse_cpus("0-1") == {c % (os.cpu_count() or 1) for c in (0, 1)}
    me = sample(os.getpid())
    assert me is not None and me.rss_bytes > 0 and me.fds > 0 and me.threads >= 1
    assert sample(2**22 + 12345) is None
    sum(range(200_000))
    later = sample(os.getpid())
    assert cpu_percent(me, later) >= 0.0
    before = cpu_times()
    assert before and busy_percent(before, cpu_times(), {0}) >= 0.0
    assert all(0 <= steal <= total and busy + steal <= total for busy, total, steal in before.values())
    # steal is its own share, out of busy: a window of 1000 jiffies, 300 busy and 50 stolen
    start, end = {0: (0, 0, 0)}, {0: (300, 1000, 50)}
    assert busy_percent(start, end, {0}) == 30.0 and steal_percent(start, end, {0}) == 5.0


def test_a_processs_context_switches_count_every_thread() -> None:
    """/proc/PID/status counts the main thread's switches alone: a thread that sleeps 50 times
    switches at least 50 times, and the process's count holds them while the thread lives."""
    go, done = threading.Event(), threading.Event()

    def sleeper() -> None:
        go.wait()
        for _ in range(50):
            time.sleep(0.0005)
        done.set()
        time.sleep(2)  # alive while the count is read

    threading.Thread(target=sleeper, daemon=True).start()
    before = context_switches(os.getpid())
    go.set()
    assert done.wait(5)
    assert context_switches(os.getpid()) - before >= 50
    assert context_switches(2**22 + 12345) == 0  # no such process


def test_a_processs_cpu_is_read_exactly_with_its_ended_threads() -> None:
    """Not in clock ticks: a quiet relay's few ms in a 1 s step read as 0 in ticks."""
    worker = threading.Thread(target=lambda: sum(range(300_000)))
    worker.start()
    worker.join()
    low = time.process_time()
    me = sample(os.getpid())
    high = time.process_time()
    assert me is not None and low <= me.cpu_s <= high  # ticks would read up to 10 ms low
    assert low * 1e9 <= cpu_ns(os.getpid()) <= time.process_time() * 1e9
    light = cpu_sample(os.getpid())  # what a step reads of hundreds of relays: the clock alone
    assert light is not None and high <= light.cpu_s <= time.process_time()
    assert cpu_percent(me, light) >= 0 and cpu_sample(2**22 + 12345) is None  # no such process


def test_the_rooms_per_core_search_measures_a_step_lost_to_steal_again() -> None:
    """A failing step with the relay core stolen (bench-s43: 150 rooms, p99 57 ms at 34% of the
    core, 2.0% steal) is measured once more and the second counts; a failure without steal
    ends the search, and a stolen step that fails again is not measured a third time."""
    config = fleetshape.FleetShapeConfig(search=(100, 150, 200, 250), search_down=(50,))
    lat = {"count": 10, "p50_ms": 0.1, "p99.9_ms": 9.0}

    def searched(outcomes: list[tuple[float, float]]) -> list[tuple[int, bool, bool]]:
        left = iter(outcomes)

        def step(rooms: int) -> dict[str, Any]:
            p99, steal = next(left)
            added = lat | {"p99_ms": p99}
            return {"rooms": rooms, "lost": 0, "added": added, "relay_core_steal_percent": steal}

        steps = fleetshape.search(config, step)
        assert next(left, None) is None  # every outcome used, no step more
        return [(r["rooms"], r["held"], r.get("stolen", False)) for r in steps]

    assert searched([(0.2, 0.0), (57.0, 2.0), (0.3, 0.0), (4.0, 0.1), (9.0, 0.0)]) == [
        (100, True, False),
        (150, False, True),
        (150, True, False),
        (200, True, False),
        (250, False, False),
    ]
    assert searched([(0.2, 0.0), (57.0, 0.4)]) == [(100, True, False), (150, False, False)]  # under the line
    assert searched([(0.2, 0.0), (57.0, 2.0), (9.0, 1.0)]) == [
        (100, True, False),
        (150, False, True),
        (150, False, False),
    ]
    assert searched([(60.0, 0.0), (0.3, 0.0)]) == [(100, False, False), (50, True, False)]  # below the first


def test_fleet_shape_takes_its_warm_up_from_the_command_line() -> None:
    args = build_parser().parse_args(["fleet-shape", "--warmup-seconds", "0"])
    assert fleetshape.config_from_args(args).warmup_seconds == 0.0
    assert fleetshape.config_from_args(build_parser().parse_args(["fleet-shape"])).warmup_seconds == 0.5


def test_report_writes_json_markdown_and_plots(tmp_path) -> None:
    report = Report("unit", tmp_path, {"x": 1}, command="python -m loadtest unit")
    h = hdr.new()
    for v in (100, 200, 5000):
        hdr.record_us(h, v)
    assert plot_latency_cdf(tmp_path / "cdf.png", {"a": h})
    assert plot_timeseries(tmp_path / "ts.png", [("y", {"s": ([0, 1, 2], [1, 2, 3])})], "t")
    assert plot_histogram(tmp_path / "h.png", {"a": [1.0, 2.0, 2.5]}, "t", "ms")
    assert not plot_latency_cdf(tmp_path / "none.png", {"a": hdr.new()})
    report.plots += ["cdf.png", "ts.png", "h.png"]
    accounts = {"r": {"sent": 3, "delivered": 2, "lost": 1}}
    report.results = {"latency": hdr.summary(h), "per_recipient": accounts}
    report.note("a note")
    report.write()
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["machine"]["cores"] >= 1 and doc["notes"] == ["a note"]
    assert "a note" in (tmp_path / "summary.md").read_text()
    assert checks.problems(tmp_path) == []
    report.results["per_recipient"]["r"]["lost"] = 0  # 3 != 2 + 0
    report.plots.append("missing.png")
    report.write()
    found = checks.problems(tmp_path)
    assert any("sent 3" in p for p in found) and any("missing.png" in p for p in found)


def test_roombench_times_the_room_alone() -> None:
    from loadtest.roombench import RoomBench, run

    result = run(RoomBench(batch=2, datagrams=200, repeat=2))
    assert result["messages_in"] == 400
    # 4 members, a flush every 4 datagrams (one from each): each member gets one packet a flush
    assert result["packets_out_per_run"] == 200
    assert result["us_per_message_in"] >= 0 and len(result["runs_s"]) == 2
    full = run(RoomBench(datagrams=64, pass_size=32, repeat=1, members=32))
    # a flush every 32 datagrams: each member's 31 messages of ~105 bytes in three 1200-byte datagrams
    assert full["packets_out_per_run"] == 2 * 32 * 3
    dealt = run(RoomBench(datagrams=300, pass_size=1, repeat=1, rooms=5))
    # dealt over five rooms, a flush a datagram: each datagram's three room-mates get one packet
    assert dealt["packets_out_per_run"] == 3 * 300
    gs2 = run(RoomBench(datagrams=64, pass_size=32, repeat=2, members=32, rooms=2, gs2=True))
    # GS2 clients: a Container per message for each of its 31 room-mates (none were dropped)
    assert gs2["messages_in"] == 64 and gs2["packets_out_per_run"] == 64 * 31


def test_a_udp_attacker_knows_it_was_kicked_by_the_relays_closing() -> None:
    """Over UDP a kick is a sealed CLOSING, not a closed socket: the flood report's "attacker
    closed by relay" must see it (it said "no" for every UDP member flood)."""
    import os
    import socket

    from loadtest.attackers import _closing
    from loadtest.rawclient import RawSession
    from relay.protocol import messages as m
    from relay.protocol.packets import Opener, Sealer

    key = os.urandom(32)
    relay_side = Sealer(key, session_id=7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        session = RawSession("udp", sock, "a", 7, Sealer(os.urandom(32), 7), Opener(key), None)
        assert not _closing(session, relay_side.seal(m.Error(6, "rate limit exceeded").encode()))
        assert _closing(session, relay_side.seal(m.Closing(5, "rate limit exceeded").encode()))
        assert not _closing(session, b"\x01" * 40)  # not a packet of this session


def test_send_phases_spread_the_tick_and_keep_room_mates_apart() -> None:
    """A room's four members must not send together (their relay would wake once for several),
    and all members together must still load the tick evenly: the same even slots as before."""
    tick = 50_000_000
    for members in (4, 8, 100, 400, 600):
        phases = [spread_phase(k, members, tick) for k in range(members)]
        assert sorted(phases) == [int(tick * slot / members) for slot in range(members)]
        for first in range(0, members, 4):
            mates = sorted(phases[first : first + 4])
            gaps = [b - a for a, b in itertools.pairwise(mates)] + [tick - mates[-1] + mates[0]]
            assert min(gaps) >= tick // 10, (members, first, mates)
    assert spread_phase(0, 1, tick) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "::1", "[::1]", "localhost"])
def test_loopback_addresses_may_be_loaded(host: str) -> None:
    assert loopback_problem(host) is None
    require_loopback(host, "relay address")


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "192.0.2.1", "::ffff:8.8.8.8", "2001:db8::1", "no-such-host.invalid"]
)
def test_an_address_off_this_machine_is_never_loaded(host: str) -> None:
    """The load tests send only to loopback: an address from outside (a --control-url, the room
    addresses a control plane hands out) is refused before anything is sent."""
    assert loopback_problem(host) is not None
    with pytest.raises(ValueError, match=r"relay address: .* send only to 127\.0\.0\.0/8 or ::1"):
        require_loopback(host, "relay address")


def test_fleet_refuses_a_control_plane_off_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fleet --control-url` elsewhere: the scenario says why and exits 1, having sent nothing
    (192.0.2.1 is TEST-NET-1: nothing would answer, and the check comes before any request)."""
    from loadtest import cli

    argv = [
        "fleet",
        "--quick",
        "--no-progress",
        "--control-url",
        "http://192.0.2.1:7700",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 1
    assert "--control-url: '192.0.2.1' is not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--search", "100,0"], ["--rooms", "0"], ["--rooms-per-process", "-1"]])
def test_fleet_shape_refuses_counts_under_one(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Found measuring: `--search 0` ran the harness up and failed deep in a step (ZeroDivisionError)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fleet-shape", *flags])
    assert f"argument {flags[0]}" in capsys.readouterr().err


def test_fleet_shape_takes_counts_as_written() -> None:
    args = build_parser().parse_args(["fleet-shape", "--search", "100,150", "--rooms", "10"])
    assert (args.search, args.rooms) == ("100,150", 10)


def test_a_control_plane_the_harness_started_leaves_no_folder_behind() -> None:
    """Found on the development machine: 402 loadtest-control-* folders (a control plane's data
    and log, up to 7 MB each), one per scenario or test that started one. Stopped, or failed to
    start, it removes its folder."""
    cp = ControlPlane.start(extra_args=["--warm-relays", "0", "--log-level", "warning"])
    assert cp.workdir is not None and Path(cp.workdir, "data").is_dir()
    cp.stop()
    assert not Path(cp.workdir).exists()
    before = set(Path(tempfile.gettempdir()).glob("loadtest-control-*"))
    with pytest.raises(RuntimeError, match=r"control plane exited .*no-such-flag"):
        ControlPlane.start(extra_args=["--no-such-flag"])  # refused by its argument parser
    assert set(Path(tempfile.gettempdir()).glob("loadtest-control-*")) <= before


def test_sendbench_times_both_ways_of_sending_a_pass() -> None:
    from loadtest.sendbench import SendBench, run

    result = run(SendBench(members=4, passes=20, rounds=2))
    assert result["received"] == 2 * 2 * 20 * 4  # every datagram of both ways arrived
    assert [len(v) for v in result["us_per_datagram"].values()] == [2, 2]
    assert all(v > 0 for values in result["us_per_datagram"].values() for v in values)


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_a_run_ended_with_sigterm_stops_what_it_started(tmp_path: Path) -> None:
    """Found on the development machine: a fleet-shape run killed with SIGTERM left its relays
    (forked from the zygote template) running until their idle timeout. SIGTERM now unwinds the
    run as Ctrl-C does, and its cleanup stops them."""
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "fleet-shape",
        "--quick",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    relays: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(relays) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            relays = {pid for pid in _descendants(proc.pid) if b"relay.cli\x00serve" in _cmdline(pid)}
        assert len(relays) >= 3, "the run's three relays did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 15
        while any(_cmdline(pid) for pid in relays) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in relays if _cmdline(pid)], "relays left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in relays:  # a failure above: none left behind by the test itself
            if _cmdline(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_workers_quiesce_reads_members_whose_descriptors_are_past_select_s_limit() -> None:
    """Found when the relay got cheaper: the rooms-per-core search reached more rooms, a load
    worker held descriptors past 1024, and its quiesce (select()) raised ValueError."""
    import resource
    import socket
    from types import SimpleNamespace

    from loadtest.fastload.worker import Worker

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this host allows {hard} descriptors: none past select()'s 1024")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    high = os.dup2(receiver.fileno(), 1100)
    sock = socket.socket(fileno=high)
    sock.setblocking(False)
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(3):
            sender.sendto(b"late", receiver.getsockname())
        time.sleep(0.05)
        worker = Worker(SimpleNamespace(payload_size=100, batch=1))  # type: ignore[arg-type]
        session = SimpleNamespace(sock=sock, closed=False, transport="udp")
        worker.members = [SimpleNamespace(session=session)]  # type: ignore[list-item]
        assert worker.quiesce(quiet=0.1)["late_packets"] == 3
        sender.close()
    finally:
        sock.close()
        receiver.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
