"""Results folders: result.json, summary.md and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from hdrh.histogram import HdrHistogram
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from loadtest import hist as hdr
from loadtest.machine import machine_info


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (None: a run that did not measure it); None if none did."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def results_dir(scenario: str, base: str | Path | None = None) -> Path:
    """./results/<scenario>-<timestamp>/ unless `base` names the folder."""
    if base is not None:
        path = Path(base)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("results") / f"{scenario}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("results") / f"{scenario}-{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Report:
    """One scenario run: its configuration, results, the Markdown summary and plots written."""

    scenario: str
    out: Path
    config: dict[str, Any]
    command: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def note(self, text: str) -> None:
        """Something the reader must know (skips, caps missing, what was lost and why)."""
        self.notes.append(text)

    def write(self) -> Path:
        """Writes result.json and summary.md; returns the folder."""
        doc = {
            "scenario": self.scenario,
            "command": self.command,
            "started_at": self.started_at,
            "finished_at": time.time(),
            "machine": machine_info(),
            "config": self.config,
            "notes": self.notes,
            "plots": self.plots,
            "results": self.results,
        }
        (self.out / "result.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        machine = doc["machine"]
        lines = [
            f"# {self.scenario} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started_at))})",
            "",
            f"Machine: {machine['cpu_model']}, {machine['cores']} cores, Linux {machine['kernel']}, "
            f"Python {machine['python']}.",
            "",
        ]
        if self.command:
            lines += ["Command:", "", "```", self.command, "```", ""]
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        lines += self.markdown
        if self.plots:
            lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in self.plots), ""]
        (self.out / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
        return self.out


def pair_ms(p50: float | None, p99: float | None) -> str | None:
    """ "p50 / p99" in ms as table text, or None when either is missing."""
    return None if p50 is None or p99 is None else f"{p50:.3f} / {p99:.3f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table; floats get a sensible number of digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def plot_latency_cdf(
    path: Path,
    hists: dict[str, HdrHistogram],
    title: str = "Latency CDF",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> bool:
    """One line per histogram (its sample count in the legend), x = latency (ms, log), y =
    percentile in nines. The y axis stops at the percentile the largest sample count supports
    (hist.supported_nines): 50 samples say nothing about the 99.99th. `styles`: matplotlib line
    options per label (colour per transport, dashes per measurement)."""
    counts = {label: h.get_total_count() for label, h in hists.items() if h.get_total_count()}
    if not counts:
        return False
    many = len(counts) > 5  # then the legend goes beside the plot: inside it would cover lines
    fig, ax = plt.subplots(figsize=(12 if many else 9, 5.5))
    xs_all: list[float] = []
    # past the default cycle's 10 colours lines would share one: 20 distinct ones instead
    palette = plt.get_cmap("tab20").colors if len(counts) > 10 else None
    for i, (label, count) in enumerate(counts.items()):
        xs, ys = hdr.cdf_points(hists[label])
        xs_all += xs
        style = dict((styles or {}).get(label, {}))
        if palette is not None:
            style.setdefault("color", palette[i % len(palette)])
        ax.plot(xs, [-math.log10(1 - y) for y in ys], label=f"{label} (n={count:,})", **style)
    ticks, bottom, top = percentile_axis(max(counts.values()))
    ax.set_yticks(ticks)
    ax.set_yticklabels([percentile_label(t) for t in ticks])
    ax.set_ylim(bottom, top)
    ax.set_ylabel(f"percentile (to 1 - 1/n, n = {max(counts.values()):,})")
    _log_ms_axis(ax, min(xs_all), max(xs_all))
    ax.set_xlabel("one-way latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # a CDF leaves the lower right empty: low percentiles at high latency
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def percentile_axis(count: int) -> tuple[list[float], float, float]:
    """A CDF's percentile axis in nines for at most `count` samples: (ticks, bottom, top). It
    ends at 1 - 1/count: whole nines (0%, 90%, 99% ...) up to there, and that percentile itself
    when it falls well between two."""
    top = hdr.supported_nines(count)
    ticks = [float(k) for k in range(int(top) + 1)]
    if top - int(top) >= 0.15:
        ticks.append(top)
    span = max(top, 1.0)
    return ticks, -0.03 * span, top + 0.03 * span


def percentile_label(nines: float) -> str:
    """The percentile `nines` nines stand for, with the digits that tell it apart: 0 -> "0%",
    1 -> "90%", 1.7 -> "98%", 3 -> "99.9%"."""
    digits = max(0, math.ceil(nines - 1e-9) - 2)
    return f"{100 * (1 - 10**-nines):.{digits}f}%"


def _log_ms_axis(ax: Any, low: float, high: float) -> None:
    """A log axis labelled in plain milliseconds (0.2, 0.5, 1, 2, 5, 10), not 2 x 10^-1: ticks
    at 1, 1.5, 2, 3, 4, 5, 7 in a range of a decade or so, 1-2-5 up to four, decades beyond."""
    ax.set_xscale("log")
    decades = math.log10(max(high, 1e-6) / max(low, 1e-6))
    subs = (
        (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if decades <= 1.5 else (1.0, 2.0, 5.0) if decades <= 4 else (1.0,)
    )
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_timeseries(
    path: Path,
    panels: list[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
    title: str,
    xlabel: str = "time (s)",
    spans: Sequence[tuple[float, float, str]] = (),
    xlim: tuple[float, float] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    guides: Mapping[str, tuple[float, str]] | None = None,
    from_zero: bool = False,
) -> bool:
    """Stacked panels sharing the x axis; each panel is (y label, {series label: (xs, ys)}).

    A NaN in a series leaves a gap (nothing ran there), rather than a line drawn across it.
    `spans`: (start, end, label) shaded in every panel and labelled at the top, so a reader
    sees which step or phase each stretch of the lines belongs to. `xlim`: the whole run, not
    only where samples fell. `styles`: line options per series label. `guides`: per panel (y
    label), a dashed reference line and its label (one core = 100%); that panel's y axis
    starts at 0 and shows the line. `from_zero`: every y axis starts at 0, where a figure that
    should stay flat is plotted (an axis fitted to 43.0 .. 44.4 MB draws 3% as a cliff). Panels
    whose values are all whole numbers get whole-number ticks (no 17.5 file descriptors)."""
    panels = [(y, s) for y, s in panels if any(len(xs) for xs, _ in s.values())]
    if not panels:
        return False
    width = min(16.0, max(9.0, 0.35 * len(spans)))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(width, 2.8 * len(panels) + 1.0), sharex=True, squeeze=False
    )
    for ax, (ylabel, series) in zip(axes[:, 0], panels, strict=True):
        values: list[float] = []
        for label, (xs, ys) in series.items():
            if not len(xs):
                continue  # not in the legend either
            style: dict[str, Any] = {"marker": "." if len(xs) < 40 else None, **(styles or {}).get(label, {})}
            ax.plot(list(xs), list(ys), label=label, **style)
            values += [y for y in ys if y == y]
        guide = (guides or {}).get(ylabel)
        if guide is not None:
            ax.axhline(guide[0], color="0.4", linestyle="--", linewidth=1)
            ax.annotate(
                guide[1],
                (0.005, guide[0]),
                xycoords=("axes fraction", "data"),
                fontsize=8,
                color="0.3",
                va="bottom",
            )
            ax.set_ylim(0, max([guide[0], *values]) * 1.12)
        elif from_zero and values:
            ax.set_ylim(0, max(values) * 1.1 or 1)
        if values and all(float(v).is_integer() for v in values):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        for start, end, _ in spans:
            ax.axvspan(start, end, color="0.5", alpha=0.08, linewidth=0)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    first = axes[0, 0]
    if xlim is not None:
        first.set_xlim(*xlim)
    width_x = first.get_xlim()[1] - first.get_xlim()[0]
    for start, end, label in spans:
        narrow = end - start < 0.1 * width_x  # a label across a narrow span would cover its neighbours'
        first.annotate(
            label,
            ((start + end) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            rotation=90 if narrow else 0,
            fontsize=7 if narrow else 8,
            ha="center",
            va="bottom",
            annotation_clip=False,
        )
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plain(value: float, _: Any = None) -> str:
    """An axis number as a reader writes it: 250,000 rather than 250000 or 2.5e5."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


FEW_SAMPLES = 30  # below this a histogram's bars are single samples: plot_histogram marks each one


def plot_histogram(path: Path, values_ms: dict[str, Sequence[float]], title: str, xlabel: str) -> bool:
    """Histograms on shared bins (so bars of different series line up and compare), counts on
    whole-number ticks, each series' sample count in the legend. Where every series has fewer
    than FEW_SAMPLES values, one row of marks per series instead: a histogram of 4 samples
    draws bins of 0 and 1 that run together into one wide bar."""
    values_ms = {k: v for k, v in values_ms.items() if len(v)}
    if not values_ms:
        return False
    everything = [float(v) for values in values_ms.values() for v in values]
    count = max(len(v) for v in values_ms.values())
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.7 * len(values_ms) if count < FEW_SAMPLES else 4.5))
    if count < FEW_SAMPLES:
        for row, values in enumerate(values_ms.values()):
            ax.plot(list(values), [row] * len(values), "o", alpha=0.6, markersize=8)
        ax.set_yticks(range(len(values_ms)))
        ax.set_yticklabels([f"{label} (n={len(v):,})" for label, v in values_ms.items()])
        ax.set_ylim(-0.6, len(values_ms) - 0.4)
        ax.invert_yaxis()  # the first series on top, as in a legend
    else:
        low, high = min(everything), max(everything)
        bins = np.linspace(low, high if high > low else low + 1, min(50, max(5, count // 2)) + 1)
        for label, values in values_ms.items():
            ax.hist(
                list(values), bins=bins, alpha=0.6, edgecolor="white", label=f"{label} (n={len(values):,})"
            )
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("count")
        ax.legend(fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
