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
        *_limits(results),
        *_gs2_line(results),
        *_explanation(config),
        *(line for name, t in results["transports"].items() for line in _steps(name, t)),
    ]
    _plots(report, results)
    report.config = config


def _pair(lat: dict[str, Any]) -> str | None:
    """p50 / p99 in ms as text, or None without samples."""
    return pair_ms(lat.get("p50_ms"), lat.get("p99_ms")) if lat.get("count") else None


def _saturated(limit: dict[str, Any]) -> str:
    """The headline's "saturated" cell: yes, or no and what capped the run instead."""
    if "saturated" in limit:  # the C baseline's result
        return "yes" if limit["saturated"] else "no"
    if "limit" not in limit:  # a result.json from before the limits were told apart
        return "yes" if limit.get("reached") else "no"
    return "yes" if limit["reached"] else f"no: {limit['limit']}"


def _headline(config: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """One row per transport (and the C baseline): the highest step's delivered rate and whether
    that was saturation, sustained, half-load latency."""
    base = results.get("baseline", {})
    rows: list[list[Any]] = []
    if base and "skipped" not in base:
        rows.append(
            [BASELINE_LABEL, base["delivered_per_s"], _saturated(base), 1.0, base["relay_cpu_percent"]]
            + [None] * 6
        )
    for name, t in results["transports"].items():
        half = t["half_load"]
        lat = half.get("added_latency", {})
        kept = (t.get("half_sustained") or {}).get("added_latency", {})
        rows.append(
            [
                f"relay, {name}",
                t["saturation"]["delivered_per_s"],
                _saturated(t["saturation"]),
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
            "delivered msg/s, highest step",
            "saturated",
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


def _limits(results: dict[str, Any]) -> list[str]:
    """What capped each run that did not saturate (and the C baseline's), in words: its figure
    is then the rate it was offered, not a limit of the relay, and the ratios with it too."""
    lines = []
    base = results.get("baseline", {})
    if base.get("limit") and not base.get("saturated"):
        lines.append(f"- C baseline: {base['limit']}.")
    for name, t in results["transports"].items():
        sat = t["saturation"]
        if sat.get("why") and not sat.get("reached"):
            lines.append(f"- {name}: {sat['why']}.")
    if not lines:
        return []
    return [
        "",
        "Not every run saturated: its delivered rate is what it was offered (or what the load "
        "generator could send), not the relay's limit, and the x C baseline ratios compare offered "
        "rates. Raise --max-steps or --start-rate (--baseline-pps for the C baseline) for a run "
        "that reaches the limit.",
        "",
        *lines,
    ]


def _gs2_line(results: dict[str, Any]) -> list[str]:
    """GS2 game clients' relay CPU per delivered message against native WebSocket's, same run."""
    ratio = results.get("gs2_cpu_vs_ws")
    if ratio is None:
        return []
    t = results["transports"]
    where = (
        "at saturation"
        if t["gs2"]["saturation"].get("reached") and t["ws"]["saturation"].get("reached")
        else "at the highest step (not saturated)"
    )
    return [
        "",
        f"Relay CPU per delivered message {where}: GS2 {t['gs2']['cpu_us_per_delivered']:.2f} us, "
        f"WebSocket {t['ws']['cpu_us_per_delivered']:.2f} us: GS2 at {ratio:.2f}x (target <= 1.3x).",
        *_same_rate_line(results.get("gs2_vs_ws_same_rate")),
    ]


def _same_rate_line(same: dict[str, float] | None) -> list[str]:
    """The same two at one offered rate (throughput.gs2_vs_ws_same_rate)."""
    if not same:
        return []
    return [
        f"At one offered rate, the highest step both delivered in full below the first rate at which "
        f"either load process was busy ({same['delivered_per_s']:,.0f} messages/s delivered): "
        f"GS2 {same['gs2_us']:.2f} us, WebSocket {same['ws_us']:.2f} us a delivered message, "
        f"GS2 at {same['ratio']:.2f}x.",
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


COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
BASELINE_STYLE = {"color": "0.45", "linewidth": 2.5}


def _plots(report: Report, results: dict[str, Any]) -> None:
    """latency_cdf.png (half load and saturation) and throughput_cpu.png (over time)."""
    hists = {}
    styles: dict[str, dict[str, Any]] = {}
    for colour, (name, t) in zip(COLOURS * 4, results["transports"].items(), strict=False):
        top = max(t["steps"], key=lambda s: s["delivered_per_s"])
        at_top = "saturation" if t["saturation"].get("reached", True) else "highest step"
        # a colour per transport, a dash pattern per measurement: a dozen lines stay tellable apart
        lines = [
            ("half load, added", t["half_load"].get("added_latency_hist", ""), "-"),
            ("half load, end to end", t["half_load"]["latency_hist"], "--"),
            (f"{at_top} (sampled, end to end)", top["latency_hist"], "-."),
        ]
        if t.get("half_sustained"):
            lines.append(("half of sustained, added", t["half_sustained"].get("added_latency_hist", ""), ":"))
        for what, text, dashes in lines:
            hists[f"{name} {what}"] = hdr.decode(text)
            styles[f"{name} {what}"] = {"color": colour, "linestyle": dashes}
    if plot_latency_cdf(report.out / "latency_cdf.png", hists, "throughput: one-way latency", styles):
        report.plots.append("latency_cdf.png")
    panels, spans, styles = timeline_panels(results)
    if plot_timeseries(
        report.out / "throughput_cpu.png",
        panels,
        "throughput and relay CPU over the run (shaded: the timed windows of the steps)",
        xlabel="time since the run started (s)",
        spans=spans,
        xlim=(0.0, results["elapsed_s"]) if "elapsed_s" in results else None,
        styles=styles,
        guides={"relay CPU %": (100.0, "one core")},
        from_zero=True,
    ):
        report.plots.append("throughput_cpu.png")


Series = dict[str, tuple[list[float], list[float]]]


def timeline_panels(
    results: dict[str, Any],
) -> tuple[list[tuple[str, Series]], list[tuple[float, float, str]], dict[str, dict[str, Any]]]:
    """throughput_cpu.png's content: (panels, labelled step spans, line styles).

    Per transport a delivered-rate line and, dotted, what was due (offered x 3) on top, its
    relay's CPU below; each step its own stretch of line, NaN between steps (the relay was
    idle or being restarted there: a line drawn across would show rates nobody measured). The
    C baseline is a grey bar over the time it ran. Spans label each step: transport, step
    number, "half" for half load, "half sust." for half of the sustained rate."""
    rate: Series = {}
    cpu: Series = {}
    spans: list[tuple[float, float, str]] = []
    styles: dict[str, dict[str, Any]] = {}
    base, base_span = results.get("baseline", {}), results.get("baseline_span")
    if base_span and "delivered_per_s" in base:
        label = "C baseline (compile and run)"
        rate[label] = (list(base_span), [base["delivered_per_s"]] * 2)
        cpu[label] = (list(base_span), [base["relay_cpu_percent"]] * 2)
        styles[label] = BASELINE_STYLE
        spans.append((base_span[0], base_span[1], "C baseline"))
    for colour, (name, t) in zip(COLOURS * 4, results["transports"].items(), strict=False):
        names = {t["half_load"]["step"]: "half"}
        if t.get("half_sustained"):
            names[t["half_sustained"]["step"]] = "half sust."
        points = t["timeline"]
        steps = [p for p in points if p["kind"] == "step"]
        delivered, due, busy = f"{name} delivered", f"{name} due (offered x 3)", f"{name} relay"
        rate[delivered], rate[due], cpu[busy] = ([], []), ([], []), ([], [])
        for step in steps:
            n = step["step"]
            spans.append((step["t"], step["t_end"], f"{name} {names.get(n, n)}"))
            _extend(rate[due], [(step["t"], step["due_per_s"]), (step["t_end"], step["due_per_s"])])
            _extend(rate[delivered], [(p["t"], p["delivered_per_s"]) for p in points if _of(p, n, "rate")])
            _extend(cpu[busy], [(p["t"], p["relay_cpu"]) for p in points if _of(p, n, "cpu")])
        if not steps:  # a result.json from before steps were recorded: the points as they are
            rate[delivered] = _xy([p for p in points if p["kind"] == "rate"], "delivered_per_s")
            cpu[busy] = _xy([p for p in points if p["kind"] == "cpu"], "relay_cpu")
        styles[delivered] = styles[busy] = {"color": colour}
        styles[due] = {"color": colour, "linestyle": ":", "marker": None}
    return [("delivered msg/s", rate), ("relay CPU %", cpu)], spans, styles


def _of(point: dict[str, Any], step: int, kind: str) -> bool:
    return point["kind"] == kind and point["step"] == step


def _extend(series: tuple[list[float], list[float]], points: list[tuple[float, float]]) -> None:
    """Appends one step's points after a NaN gap (none before the first step)."""
    if not points:
        return
    xs, ys = series
    if xs:
        xs.append(float("nan"))
        ys.append(float("nan"))
    xs += [x for x, _ in points]
    ys += [y for _, y in points]


def _xy(points: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    return [p["t"] for p in points], [p[key] for p in points]
