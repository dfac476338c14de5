"""What the reports say and draw, from made-up results (no processes, well under a second each):
a run that did not saturate says so, nano is judged by the steps that ran, plots leave gaps
where nothing ran and stop their percentiles where the samples do, the progress display keeps
its bar at 80 columns, and a missing `loadtest` extra is named in one line."""

from __future__ import annotations

import math
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import matplotlib.axes
import pytest
from rich.console import Console

from loadtest import baseline, benchmarks, checks, cli
from loadtest import hist as hdr
from loadtest.progress import progress_bar
from loadtest.report import (
    Report,
    percentile_axis,
    percentile_label,
    plot_histogram,
    plot_latency_cdf,
    plot_timeseries,
)
from loadtest.scenarios import fleetshape, nano, throughput, throughput_report

ROOT = Path(__file__).resolve().parents[2]


def _hist(values_us: list[int]) -> str:
    h = hdr.new()
    for v in values_us:
        hdr.record_us(h, v)
    return hdr.encode(h)


def _step(n: int, offered: float, delivered: float, cpu: float, **kw: Any) -> dict[str, Any]:
    """A throughput step as Load.step reports it, the fields the report and the limits read."""
    lat = {"count": 3, "p50_ms": 0.3, "p99_ms": 1.0, "p99.9_ms": 1.2}
    step = {
        "step": n,
        "mode": "sampled",
        "seconds": 1.0,
        "offered_per_s": offered,
        "sent_per_s": offered,
        "sent_messages": int(offered),
        "planned_messages": int(offered),
        "delivered_per_s": delivered,
        "datagrams_in_per_s": delivered / 8,
        "messages_per_datagram": 8.0,
        "loss_ratio": 0.0,
        "behind_ratio": 0.0,
        "relay_cpu_percent": cpu,
        "latency": lat,
        "latency_hist": _hist([300, 400, 1000]),
        "added_latency": {},
        "added_latency_hist": "",
        "sender_lateness": {},
        "sender_kept_up": True,
        "fell_short": False,
    }
    return {**step, **kw}


def _timeline(spans: list[tuple[int, float, float, float]]) -> list[dict[str, Any]]:
    """Per step (n, start, end, cpu): the step, its rate and CPU points inside its window."""
    points: list[dict[str, Any]] = []
    for n, start, end, cpu in spans:
        points.append({"kind": "step", "t": start, "t_end": end, "step": n, "due_per_s": 3000.0 * n})
        for t in (start + 0.25, end - 0.25):
            points.append({"kind": "rate", "t": t, "delivered_per_s": 3000.0 * n, "step": n})
            points.append({"kind": "cpu", "t": t, "relay_cpu": cpu, "step": n})
    return points


CONFIG = throughput.ThroughputConfig.quick(max_steps=2)


def _unsaturated_results() -> dict[str, Any]:
    """A --quick run in the shape of issue 18's: two steps, every message delivered, the relay at
    15% of its core, then half load."""
    steps = [_step(1, 1000.0, 3000.0, 8.0), _step(2, 2000.0, 6000.0, 15.0)]
    half = _step(
        3, 1000.0, 3000.0, 6.0, mode="full", added_latency={"count": 3, "p50_ms": 0.2, "p99_ms": 0.5}
    )
    limit, why = throughput.saturation_limit(steps, None, CONFIG)
    transport = {
        "members": 4,
        "steps": steps,
        "saturated_at_step": None,
        "saturation": {
            "delivered_per_s": 6000.0,
            "offered_per_s": 2000.0,
            "relay_cpu_percent": 15.0,
            "step": 2,
            "reached": limit == "relay",
            "limit": limit,
            "why": why,
        },
        "sustained": throughput.sustained(steps, CONFIG),
        "half_load": half,
        "half_sustained": None,
        "timeline": _timeline([(1, 2.0, 3.0, 8.0), (2, 4.0, 5.0, 15.0), (3, 7.0, 8.0, 6.0)]),
        "ratio_to_baseline": None,
        "sustained_ratio_to_baseline": None,
        "cpu_us_per_delivered": 25.0,
    }
    return {"transports": {"udp": transport}, "gs2_cpu_vs_ws": None, "elapsed_s": 9.0}


def test_a_run_that_did_not_saturate_says_so(tmp_path: Path) -> None:
    results = _unsaturated_results()
    sat = results["transports"]["udp"]["saturation"]
    assert sat["limit"] == "offered rate" and not sat["reached"]
    report = Report("throughput", tmp_path, {})
    throughput_report.write(report, throughput.asdict(CONFIG), results)
    text = "\n".join(report.markdown)
    assert "at saturation" not in text and "delivered msg/s, highest step" in text
    assert "| no: offered rate |" in text
    assert "udp: not saturated: offered rate" in text and "relay CPU 15%" in text
    report.write()
    assert checks.problems(tmp_path) == []


def test_saturation_limit_tells_the_relay_from_what_capped_the_run() -> None:
    ok = _step(1, 1000.0, 3000.0, 40.0)
    # fell short with the relay busy: the relay's limit
    busy = _step(2, 2000.0, 4000.0, 97.0, fell_short=True, loss_ratio=0.3)
    kind, why = throughput.saturation_limit([ok, busy], 2, CONFIG)
    assert kind == "relay" and why.startswith("saturated") and "97% CPU" in why
    # the senders could not send what was planned: the load generator's limit
    late = _step(2, 2000.0, 3000.0, 40.0, sender_kept_up=False, sent_messages=1200, planned_messages=2000)
    kind, why = throughput.saturation_limit([ok, late], 2, CONFIG)
    assert kind == "load generator" and "not saturated" in why and "60%" in why
    # fell short with the relay's core not busy, after the retries: starved, not saturated
    starved = _step(2, 2000.0, 3000.0, 30.0, fell_short=True, loss_ratio=0.3, load_cpu_percent=60.0)
    kind, why = throughput.saturation_limit([ok, starved], 2, CONFIG)
    assert kind == "relay starved" and "not saturated" in why
    assert not throughput.load_bound(starved, CONFIG)
    # the same, with the load process's core busy (GS2's one message a frame, bench-s41): the
    # load generator's limit, which a repeat would not change
    bound = {**starved, "load_cpu_percent": 99.9}
    assert throughput.load_bound(bound, CONFIG)
    kind, why = throughput.saturation_limit([ok, bound], 2, CONFIG)
    assert kind == "load generator" and "not saturated" in why and "its CPU 100%" in why
    # two load processes: busy means each near a core, not their sum
    two = throughput.ThroughputConfig.quick(max_steps=2, workers=2)
    assert not throughput.load_bound(bound, two)
    assert throughput.load_bound({**bound, "load_cpu_percent": 196.0}, two)


def test_the_c_baseline_offered_less_than_it_can_forward_is_not_saturated() -> None:
    config = baseline.BaselineConfig()
    run = {"sent_per_s": 100_000.0, "relay_in_per_s": 100_000.0, "relay_out_per_s": 300_000.0}
    assert baseline.limit({**run, "relay_cpu_percent": 40.0}, config) == (
        False,
        "not saturated: offered rate (100,000 datagrams/s in, relay CPU 40%)",
    )
    short = {**run, "relay_in_per_s": 60_000.0, "relay_out_per_s": 180_000.0}
    assert baseline.limit({**short, "relay_cpu_percent": 99.0}, config)[0] is True
    saturated, why = baseline.limit({**short, "relay_cpu_percent": 45.0}, config)
    assert not saturated and "60% of the datagrams sent reached the relay" in why


def test_the_cpu_plot_has_gaps_between_steps_labels_and_the_whole_run(tmp_path: Path) -> None:
    results = _unsaturated_results()
    results["baseline"] = {"delivered_per_s": 90_000.0, "relay_cpu_percent": 50.0}
    results["baseline_span"] = [0.0, 1.5]
    panels, spans, _ = throughput_report.timeline_panels(results)
    (rate_label, rate), (cpu_label, cpu) = panels
    assert (rate_label, cpu_label) == ("delivered msg/s", "relay CPU %")
    xs, ys = cpu["udp relay"]
    # three steps: their points, a NaN (a gap, not a 0) between each two
    assert len(xs) == 8 and [i for i, y in enumerate(ys) if math.isnan(y)] == [2, 5]
    assert all(y > 0 for y in ys if not math.isnan(y))
    assert [s[2] for s in spans] == ["C baseline", "udp 1", "udp 2", "udp half"]
    assert spans[1][:2] == (2.0, 3.0)
    assert rate["udp due (offered x 3)"][1][:2] == [3000.0, 3000.0]
    report = Report("throughput", tmp_path, {})
    throughput_report.write(report, throughput.asdict(CONFIG), results)
    assert (tmp_path / "throughput_cpu.png").stat().st_size > 10_000


def test_cpu_points_need_a_fifth_of_a_second() -> None:
    """CPU time comes in 10 ms ticks: a shorter interval would read 0% (the old plot's drops)."""

    class Sample:
        def __init__(self, at: float, cpu_s: float) -> None:
            self.at, self.cpu_s = at, cpu_s

    timeline: list[dict[str, Any]] = []
    throughput._cpu_point(timeline, 1, [Sample(10.0, 1.0)], [Sample(10.5, 1.25)])
    throughput._cpu_point(timeline, 1, [Sample(10.5, 1.25)], [Sample(10.55, 1.25)])
    assert timeline == [{"t": 10.25, "kind": "cpu", "relay_cpu": 50.0, "step": 1}]


def test_cdf_stops_at_the_percentile_the_samples_support(tmp_path: Path) -> None:
    values = list(range(100, 5100, 100))  # 50 samples, 0.1 .. 5 ms
    h = hdr.decode(_hist(values))
    xs, ys = hdr.cdf_points(h)
    assert max(ys) == pytest.approx(1 - 1 / 50) and xs[-1] == pytest.approx(5.0, rel=0.01)
    ticks, _, top = percentile_axis(50)
    assert [percentile_label(t) for t in ticks] == ["0%", "90%", "98%"] and top < 2
    ticks, _, _ = percentile_axis(12_000)
    assert [percentile_label(t) for t in ticks] == ["0%", "90%", "99%", "99.9%", "99.99%"]
    assert plot_latency_cdf(tmp_path / "cdf.png", {"a": h})


def test_cdf_lines_past_ten_keep_colours_of_their_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """nano's 12 lines (3 transports x steps): the default cycle's 10 colours made two pairs alike."""
    colours: list[Any] = []
    real = matplotlib.axes.Axes.plot

    def plot(ax: Any, *a: Any, **kw: Any) -> Any:
        colours.append(kw.get("color"))
        return real(ax, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    h = hdr.decode(_hist(list(range(100, 5100, 100))))
    assert plot_latency_cdf(tmp_path / "cdf.png", {f"line {i}": h for i in range(12)})
    assert len(colours) == 12 and len(set(colours)) == 12


def test_timeseries_plot_takes_nan_gaps_and_spans(tmp_path: Path) -> None:
    nan = float("nan")
    series = {"fds": ([0, 1, nan, 3, 4], [15, 16, nan, 18, 15])}
    assert plot_timeseries(tmp_path / "ts.png", [("open fds", series)], "t", spans=[(0.5, 3.5, "churn")])


def test_a_few_samples_are_marked_one_by_one_not_binned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fleet --quick's 2 provisioning and 4 join times: a histogram drew 0/1 bins run together."""
    binned: list[int] = []
    real = matplotlib.axes.Axes.hist
    monkeypatch.setattr(
        matplotlib.axes.Axes, "hist", lambda ax, x, *a, **kw: binned.append(len(x)) or real(ax, x, *a, **kw)
    )
    assert plot_histogram(
        tmp_path / "few.png", {"provisioning": [85.4, 87.9], "join": [90, 104, 110, 118]}, "t", "ms"
    )
    assert binned == []
    many = [float(v) for v in range(40)]
    assert plot_histogram(tmp_path / "many.png", {"provisioning": many, "join": []}, "t", "ms")
    assert binned == [40]


def _nano_step(players: int, hz: float, held: bool = True, why: str = "held") -> dict[str, Any]:
    return {"players": players, "hz": hz, "rate": players * hz, "held": held, "why": why}


def test_nano_is_judged_against_the_steps_that_ran() -> None:
    # --quick: 4 x 5 Hz held; 20 msg/s is not 0.833x the tier, the tier's shape was never run
    x, text = nano.tier([_nano_step(4, 5)])
    assert x is None and text == (
        "not reached: the steps stopped at 4 x 5 Hz, which held, below the tier's 8 players x 3 Hz "
        "(not a failure)"
    )
    x, text = nano.tier([_nano_step(2, 5), _nano_step(4, 5, False, "loss 2%")])
    assert x is None and text.startswith("not reached: 4 x 5 Hz failed (loss 2%) before the steps got to")
    x, text = nano.tier([_nano_step(8, 3), _nano_step(8, 30), _nano_step(16, 30, False, "p99 30 ms")])
    assert x == pytest.approx(10.0) and "8 x 30 Hz" in text
    x, text = nano.tier([_nano_step(8, 3, False, "loss 1%")])
    assert x is None and text.startswith("below realtime1.nano") and "loss 1%" in text
    result = {
        "transports": {"ws": {"steps": [_nano_step(4, 5)], "best": {"players": 4, "hz": 5, "rate": 20}}}
    }
    (row,) = nano.tier_rows(result)
    assert row[3] is None and row[4].startswith("not reached")


def test_progress_keeps_its_bar_and_figures_at_80_columns() -> None:
    console = Console(width=80, file=StringIO(), color_system=None)
    bar = progress_bar(console)
    task = bar.add_task("throughput", total=60, rates="")
    rates = "udp step 3: offered 45,000/s, delivered 120,000 so far, relay cpu 87%"
    bar.update(task, completed=20, rates=rates)
    console.print(bar.get_renderable())
    lines = console.file.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("throughput") and "33%" in lines[0]
    assert lines[0].count("━") >= 15  # the bar, not one character
    assert rates in lines[1]


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.missing_extra() is None
    monkeypatch.setitem(sys.modules, "hdrh", None)  # as if not installed
    message = cli.missing_extra()
    assert message is not None and "hdrhistogram" in message and "pip install -e '.[loadtest]'" in message


def test_python_m_loadtest_without_the_extra_says_what_to_install() -> None:
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        "sys.argv = ['loadtest', 'nano', '--quick']; runpy.run_module('loadtest', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m loadtest needs the loadtest extra (matplotlib not installed): "
        "pip install -e '.[loadtest]' (from the repository root)"
    ]


def test_baseline_without_a_compiler_says_so_and_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = baseline.shutil.which
    monkeypatch.setattr(baseline.shutil, "which", lambda name: None if name == "gcc" else real(name))
    assert cli.main(["baseline", "--quick", "--no-progress", "--out", str(tmp_path)]) == 1
    assert "baseline: not run: gcc not installed" in capsys.readouterr().err
    assert "Not run: gcc not installed" in (tmp_path / "summary.md").read_text()


def _fleet_run(relay_cpu: float, c_cpu: float, c_per_room: float | None) -> dict[str, Any]:
    lat = {"count": 10, "p50_ms": 1.0, "p99_ms": 2.0, "p99.9_ms": 3.0}
    shape = {
        "rooms": 100,
        "offered_per_s": 8000.0,
        "relay_cpu_percent": relay_cpu,
        "cpu_us_per_message_in": relay_cpu / 100 / 8000 * 1e6,
        "context_switches_per_message_in": 0.5,
        "added": lat,
        "end_to_end": lat,
        "lost": 0,
        "caps": "caps",
    }
    run: dict[str, Any] = {
        "shape": {"udp": shape},
        "c_baseline": {"relay_cpu_percent": c_cpu},
        "rooms_per_core": 10,
    }
    if c_per_room is not None:
        run["c_per_room"] = {
            "relay_cpu_percent": c_per_room,
            "cpu_us_per_message_in": c_per_room / 100 / 8000 * 1e6,
            "context_switches_per_message_in": 1.0,
        }
    return run


def test_the_deployed_shape_section_compares_with_the_c_relay_a_process_per_room() -> None:
    """BENCHMARKS.md's deployed-shape table gives the C relay run as one process per room beside
    the one C process (medians of the runs' ratios), with a note saying what it is; the grouped
    tier's table and runs without that measurement leave the columns out."""
    runs = [_fleet_run(90.0, 30.0, 45.0), _fleet_run(80.0, 40.0, 40.0), _fleet_run(100.0, 25.0, 50.0)]
    runs[0]["shape"]["udp"]["load_core_busy_percent"] = 61.4
    runs[1]["shape"]["udp"]["load_core_busy_percent"] = 97.0  # a run before it was recorded: none
    runs[0]["shape"]["udp"]["relay_core_steal_percent"] = 0.04
    runs[1]["shape"]["udp"]["relay_core_steal_percent"] = 0.52
    runs[2]["shape"]["udp"]["added"] = {**runs[2]["shape"]["udp"]["added"], "p99.9_ms": 96.4}
    lines = benchmarks._fleet_shape_section(runs)
    header = next(line for line in lines if line.startswith("| transport"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    row = dict(
        zip(cells, (c.strip() for c in lines[lines.index(header) + 2].strip("|").split("|")), strict=True)
    )
    assert row["x C"] == "3"  # 3.0, 2.0, 4.0
    assert row["C relay, a process per room, CPU %"] == "45.0"
    assert row["x C per room"] == "2"  # 2.0, 2.0, 2.0
    # the bots' core beside each run's ratio: a run whose bots fell behind is told from a dearer relay
    assert row["load core busy % per run"] == "61, 97, -"
    assert fleetshape.LOAD_CORE_NOTE in lines
    # a run's tail beside the steal on the relay core in the same window: the median hides both
    assert row["added p99.9 ms per run"] == "3, 3, 96.4"
    assert row["relay core steal % per run"] == "0.0, 0.5, -"
    assert fleetshape.STEAL_NOTE in lines
    assert not any(line.startswith("*Warm-up*") for line in lines)  # runs measured without one
    rooms_line = next(line for line in lines if line.startswith("Rooms per core"))
    assert rooms_line.endswith("(median; per run: 10, 10, 10)")  # no step measured again
    runs[2]["search"] = [{"rooms": 150, "stolen": True}, {"rooms": 150}]
    rooms_line = next(line for line in benchmarks._fleet_shape_section(runs) if line.startswith("Rooms"))
    assert rooms_line.endswith(f"10). {fleetshape.STOLEN_RULE} Measured again: 150 rooms in run 3")
    runs[0]["shape"]["udp"]["warmup_seconds"] = 0.5
    warm = benchmarks._fleet_shape_section(runs)
    assert [line for line in warm if line.startswith("*Warm-up*")] == fleetshape.warmup_note(runs[0])[:1]
    assert "first 0.5 s" in fleetshape.warmup_note(runs[0])[0]
    note = next(line for line in lines if line.startswith("*C relay, a process per room*"))
    assert "56 us of CPU and 1.00 context switches" in note and "1.50x the one C process" in note
    assert "(per run: 1.50, 1.00, 2.00)" in note
    one = benchmarks._fleet_shape_section(runs, rooms_per_process=benchmarks.ONE_PROCESS)
    assert one[0] == "## One process for all 100 rooms"  # issue 20's one-process target's own table
    for lines in (
        benchmarks._fleet_shape_section(runs, rooms_per_process=25),
        benchmarks._fleet_shape_section([_fleet_run(90.0, 30.0, None)]),
        one,
    ):
        assert not any("a process per room" in line for line in lines)


def test_gs2_is_set_beside_websocket_at_one_offered_rate_too() -> None:
    """GS2's highest step is its load generator's limit: the saturation ratio compares it with a
    saturated WebSocket relay, so the report also compares both at the highest rate that both
    delivered in full below the first rate at which either load process was busy (bench-s44: 2.55x
    at the top, 1.54x so)."""
    config = throughput.ThroughputConfig()

    def step(offered: float, cpu: float, load: float, short: bool = False) -> dict[str, Any]:
        delivered = 3 * offered * (0.5 if short else 1.0)
        return {
            "offered_per_s": offered,
            "delivered_per_s": delivered,
            "relay_cpu_percent": cpu,
            "load_cpu_percent": load,
            "fell_short": short,
        }

    ws = {"steps": [step(1e5, 30.0, 40.0), step(2e5, 50.0, 60.0), step(4e5, 95.0, 90.0)]}
    gs2 = {"steps": [step(1e5, 45.0, 60.0), step(2e5, 80.0, 90.0), step(4e5, 50.0, 99.0, short=True)]}
    same = throughput.gs2_vs_ws_same_rate({"ws": ws, "gs2": gs2}, config)
    assert same is not None and same["offered_per_s"] == 2e5  # 4e5: GS2's bots were the limit
    assert same["ratio"] == pytest.approx(80.0 / 50.0)
    gs2["steps"][1]["load_cpu_percent"] = 96.0  # the bots busy at 2e5 too: the step below
    same = throughput.gs2_vs_ws_same_rate({"ws": ws, "gs2": gs2}, config)
    assert same is not None and same["offered_per_s"] == 1e5 and same["ratio"] == pytest.approx(1.5)
    gs2["steps"].insert(2, step(3e5, 40.0, 94.0))  # lagging bots dip under the bound again
    same = throughput.gs2_vs_ws_same_rate(
        {"ws": ws | {"steps": [*ws["steps"], step(3e5, 60.0, 80.0)]}, "gs2": gs2}, config
    )
    assert same is not None and same["offered_per_s"] == 1e5  # bench-s47: not the step past the busy one
    assert throughput.gs2_vs_ws_same_rate({"ws": ws}, config) is None
    runs: list[dict[str, Any]] = [{"gs2_vs_ws_same_rate": same}, {"gs2_vs_ws_same_rate": None}]
    note = benchmarks._same_rate_note(runs)
    assert "GS2 was at 1.50x (per run: 1.50 at 300,000/s, -)." in note
    assert benchmarks._same_rate_note([{}]) == ""


def test_the_floor_table_sets_the_relay_beside_what_it_cannot_go_below() -> None:
    """Under the deployed-shape table: the C relay (one process, a process per room, and with the
    relay's AES-GCM), the interpreter's floor without and with it, and the relay itself at the
    same load, each as CPU, CPU per message and a ratio to the one C process (medians of the
    runs); runs without a floor leave it out."""
    runs = [_fleet_run(90.0, 30.0, 45.0), _fleet_run(80.0, 40.0, 40.0), _fleet_run(100.0, 25.0, 50.0)]
    assert not any(line.startswith("The floor") for line in benchmarks._fleet_shape_section(runs))
    for run, (plain, aead) in zip(runs, [(60.0, 70.0), (60.0, 80.0), (75.0, 90.0)], strict=True):
        run["shape"]["udp"] |= {"due": 300, "delivered": 297}
        run["c_baseline"] |= {"sent_per_s": 8000.0, "received_per_s": 24000.0}
        run["c_per_room"] |= {"sent_per_s": 8000.0, "received_per_s": 24000.0, "processes": 100}
        run["floor"] = {
            relay: {
                "processes": 100,
                "relay_cpu_percent": cpu,
                "cpu_us_per_message_in": cpu * 1.25,
                "sent_per_s": 8000.0,
                "received_per_s": 12000.0,
            }
            for relay, cpu in (("c-aead", 50.0), ("python", plain), ("python-aead", aead))
        }
    lines = benchmarks._fleet_shape_section(runs)
    start = lines.index(next(line for line in lines if line.startswith("The floor at this load")))
    assert "medians of 3 runs" in lines[start]
    rows = {
        cells[0]: cells[1:]
        for line in lines[start + 4 :]
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    assert rows["C relay, one process"] == ["1", "30.0", "37.5", "1", "100"]
    assert rows["C relay, a process per room"] == ["100", "45.0", "56.2", "1.5", "100"]
    assert rows[fleetshape.FLOOR_RELAYS["c-aead"]] == ["100", "50.0", "62.5", "1.67", "50"]  # 1.67, 1.25, 2
    assert rows[fleetshape.FLOOR_RELAYS["python"]] == ["100", "60.0", "75.0", "2", "50"]
    assert rows[fleetshape.FLOOR_RELAYS["python-aead"]] == [
        "100",
        "80.0",
        "100.0",
        "2.33",
        "50",
    ]  # 2.33, 2, 3.6
    assert rows["this relay (UDP)"] == ["100", "90.0", "112.5", "3", "99"]
    runs[1]["floor"]["c-aead"] = {"skipped": "no libcrypto"}  # a row not measured says why
    lines = benchmarks._fleet_shape_section(runs)
    assert f"*{fleetshape.FLOOR_RELAYS['c-aead']}*: not run: no libcrypto" in lines
    assert not any(line.startswith(f"| {fleetshape.FLOOR_RELAYS['c-aead']}") for line in lines)


def _nano_run_step(players: int, hz: float, cpu: float, p99: float, held: bool) -> dict[str, Any]:
    return {
        "players": players,
        "hz": hz,
        "rate": players * hz,
        "relay_cpu_percent": cpu,
        "latency": {"p50_ms": p99 / 2, "p99_ms": p99},
        "totals": {"lost": 0, "loss_ratio": 0.0},
        "connected": {"failed": []},
        "held": held,
        "why": "held" if held else f"p99 {p99} ms >= 20 ms",
    }


def test_the_nano_section_gives_every_runs_steps_against_the_cap() -> None:
    """Issue 20's tier target is judged per run: BENCHMARKS.md's nano section gives each run's
    CPU (as a share of the cap) and p99 for the steps from 16 players up, and the failures of
    each run."""
    runs = []
    for cpu, p99, held in ((6.25, 12.0, True), (10.0, 25.0, False)):
        steps = [_nano_run_step(8, 3, 0.5, 1.0, True), _nano_run_step(32, 30, cpu, p99, held)]
        best = steps[1] if held else steps[0]
        result = {"transports": {"ws": {"steps": steps, "best": best}}}
        runs.append((Report("nano", Path("/nonexistent"), {}), result))
    lines = benchmarks._nano_section(runs)
    detail = lines[next(i for i, line in enumerate(lines) if line.startswith("Every run's steps")) :]
    row = next(line for line in detail if line.startswith("| ws | 32 x 30 Hz"))
    assert "6.2 (50%), 10.0 (80%)" in row and "6 / 12, 12.5 / 25" in row and "1 of 2" in row
    assert not any(line.startswith("| ws | 8 x 3 Hz") for line in detail)
    summary = next(line for line in lines if line.startswith("| ws |"))
    assert "run 2: 32x30 (p99 25.0 ms >= 20 ms)" in summary


def test_the_nano_section_names_the_largest_step_with_headroom_in_every_run() -> None:
    """Issue 20's headroom target (at most 60% of the cap, p99 under 10 ms, nothing lost) in every
    run: a step that held but used 65% of the cap, or had p99 10 ms in one run, does not have it."""
    runs = []
    for big_cpu, big_p99 in ((7.0, 9.0), (7.0, 10.0)):  # 32 x 30: 56% of the cap; p99 10 in run 2
        steps = [
            _nano_run_step(16, 30, 5.0, 6.0, True),
            _nano_run_step(32, 30, big_cpu, big_p99, True),
            _nano_run_step(32, 60, 8.1, 9.0, True),  # 65% of the cap
        ]
        runs.append(
            (
                Report("nano", Path("/nonexistent"), {}),
                {"transports": {"ws": {"steps": steps, "best": steps[2]}}},
            )
        )
    lines = benchmarks._nano_section(runs)
    rows = {
        line.split(" | ")[1]: line
        for line in lines
        if line.startswith("| ws | ") and " x " in line.split(" | ")[1]
    }
    assert rows["16 x 30 Hz"].endswith("| 2 of 2 | 2 of 2 |")
    assert rows["32 x 30 Hz"].endswith("| 2 of 2 | 1 of 2 |")
    assert rows["32 x 60 Hz"].endswith("| 2 of 2 | 0 of 2 |")
    assert any("largest step with it in every run" in line and "ws 16 x 30 Hz." in line for line in lines)
    assert nano.with_headroom(_nano_run_step(32, 30, 7.5, 9.9, True))  # 60% exactly, under 10 ms
    lost = _nano_run_step(32, 30, 5.0, 5.0, True)
    lost["totals"] = {"lost": 1, "loss_ratio": 1e-5}
    assert not nano.with_headroom(lost)
