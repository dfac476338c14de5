"""The throughput scenario's summary.md tables and plots, written from its results.

Kept apart from the scenario (loadtest/scenarios/throughput.py), which runs and measures. It
reads only the configuration as a plain dict (what result.json records) and the results, so a
summary can be written again from a result.json.
"""

from __future__ import annotations

from typing import Any

from loadtest import hist as hdr
from loadtest.report import Report, pair_ms, plot_latency_cdf, plot_timeseries, table

BASELINE_LABEL = "C baseline (UDP, per packet, no crypto)"


def write(report: Report, config: dict[str, Any], results: dict[str, Any]) -> None:
    """Fills the report: results, config, the Markdown (headline table, then every step) and
    the latency CDF and throughput/CPU plots."""
    report.results = results
    report.markdown = [
        "## Result",
        "",
        *_headline(config, results),
        *_gs2_line(results),
        *_explanation(config),
        *(line for name, t in results["transports"].items() for line in _steps(name, t)),
    ]
    _plots(report, results)
    report.config = config


def _pair(lat: dict[str, Any]) -> str | None:
    """p50 / p99 in ms as text, or None without samples."""
    return pair_ms(lat.get("p50_ms"), lat.get("p99_ms")) if lat.get("count") else None


def _headline(config: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """One row per transport (and the C baseline): saturation, sustained, half-load latency."""
    base = results.get("baseline", {})
    rows: list[list[Any]] = []
    if base and "skipped" not in base:
        rows.append([BASELINE_LABEL, base["delivered_per_s"], 1.0, base["relay_cpu_percent"], *[None] * 6])
    for name, t in results["transports"].items():
        half = t["half_load"]
        lat = half.get("added_latency", {})
        kept = (t.get("half_sustained") or {}).get("added_latency", {})
        rows.append(
            [
                f"relay, {name}",
                t["saturation"]["delivered_per_s"],
                t.get("ratio_to_baseline"),
                t["saturation"]["relay_cpu_percent"],
                t["sustained"]["delivered_per_s"],
                t.get("sustained_ratio_to_baseline"),
                lat.get("p50_ms"),
                lat.get("p99_ms"),
                _pair(half["latency"]),
                _pair(kept),
            ]
        )
    return table(
        [
            "",
            "delivered msg/s at saturation",
            "x C baseline",
            "relay CPU %",
            f"sustained msg/s (loss <= {100 * config['sustained_loss']:g}%, "
            f"p99 <= {config['sustained_p99_ms']:g} ms)",
            "x C baseline",
            "added p50 ms @ half load",
            "added p99 ms @ half load",
            "end-to-end p50 / p99 ms @ half load",
            "added p50 / p99 ms @ half of sustained",
        ],
        rows,
    )


def _gs2_line(results: dict[str, Any]) -> list[str]:
    """GS2 game clients' relay CPU per delivered message against native WebSocket's, same run."""
    ratio = results.get("gs2_cpu_vs_ws")
    if ratio is None:
        return []
    t = results["transports"]
    return [
        "",
        f"Relay CPU per delivered message at saturation: GS2 {t['gs2']['cpu_us_per_delivered']:.2f} us, "
        f"WebSocket {t['ws']['cpu_us_per_delivered']:.2f} us: GS2 at {ratio:.2f}x (target <= 1.3x).",
    ]


def _explanation(config: dict[str, Any]) -> list[str]:
    """What was run and what the latency columns mean."""
    return [
        "",
        f"Shape: {config['rooms']} relay process(es) x {config['groups']} group(s) of 4 members, "
        f"{config['payload_size']}-byte payloads, {config['batch']} messages per client packet, "
        f"relay on CPU {config['relay_cpus']}, all load on CPU {config['load_cpus']}. Delivered = "
        "messages arriving at recipients (fan-out 3); the C baseline's figure is datagrams out of "
        "its relay (each one 100-byte message).",
        "",
        "Latency at half load: *added* is the kernel's receive timestamp at the recipient's socket "
        "(SO_TIMESTAMPNS) minus the time just before the sender's send() of that packet, both "
        "CLOCK_REALTIME on this host: the relay's queueing and processing plus loopback. *End to end* "
        "runs from the scheduled send time to when the receiving worker got round to the packet, so it "
        "also holds the load generator's lag (late sends, packets waiting in the recipient's socket "
        "while the shared load core is busy). Per-step p50/p99/p99.9 below are end to end.",
    ]


def _steps(name: str, t: dict[str, Any]) -> list[str]:
    """One transport's steps, the half-load ones last."""
    rows = []
    for s in [*t["steps"], t["half_load"], *([t["half_sustained"]] if t.get("half_sustained") else [])]:
        lat = s["latency"]
        rows.append(
            [
                s["step"],
                s["mode"] + (" (starved, repeated)" if s.get("starved") else ""),
                s["sent_per_s"],
                s["delivered_per_s"],
                s["datagrams_in_per_s"],
                s["messages_per_datagram"],
                100 * s["loss_ratio"],
                s["relay_cpu_percent"],
                lat.get("p50_ms"),
                lat.get("p99_ms"),
                lat.get("p99.9_ms"),
                _pair(s.get("added_latency", {})),
                s.get("sender_lateness", {}).get("p99_ms"),
            ]
        )
    headers = [
        "step",
        "mode",
        "offered/s",
        "delivered/s",
        "datagrams/s",
        "msg/datagram",
        "loss %",
        "relay CPU %",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "added p50 / p99 ms",
        "sender late p99 ms",
    ]
    return ["", f"### {name} steps", "", *table(headers, rows)]


def _plots(report: Report, results: dict[str, Any]) -> None:
    """latency_cdf.png (half load and saturation) and throughput_cpu.png (over time)."""
    hists = {}
    for name, t in results["transports"].items():
        hists[f"{name} half load, added"] = hdr.decode(t["half_load"].get("added_latency_hist", ""))
        hists[f"{name} half load, end to end"] = hdr.decode(t["half_load"]["latency_hist"])
        if t.get("half_sustained"):
            hists[f"{name} half of sustained, added"] = hdr.decode(
                t["half_sustained"].get("added_latency_hist", "")
            )
        top = max(t["steps"], key=lambda s: s["delivered_per_s"])
        hists[f"{name} saturation (sampled, end to end)"] = hdr.decode(top["latency_hist"])
    if plot_latency_cdf(report.out / "latency_cdf.png", hists, "throughput: one-way latency"):
        report.plots.append("latency_cdf.png")
    panels_rate: dict[str, tuple[list[float], list[float]]] = {}
    panels_cpu: dict[str, tuple[list[float], list[float]]] = {}
    for name, t in results["transports"].items():
        rate_points = [p for p in t["timeline"] if p["kind"] == "rate"]
        cpu_points = [p for p in t["timeline"] if p["kind"] == "cpu"]
        panels_rate[name] = ([p["t"] for p in rate_points], [p["delivered_per_s"] for p in rate_points])
        panels_cpu[name] = ([p["t"] for p in cpu_points], [p["relay_cpu"] for p in cpu_points])
    if plot_timeseries(
        report.out / "throughput_cpu.png",
        [("delivered msg/s", panels_rate), ("relay CPU %", panels_cpu)],
        "throughput and relay CPU over time",
    ):
        report.plots.append("throughput_cpu.png")
