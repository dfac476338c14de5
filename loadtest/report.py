"""Results folders: result.json, summary.md and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hdrh.histogram import HdrHistogram

from loadtest import hist as hdr
from loadtest.machine import machine_info


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


def plot_latency_cdf(path: Path, hists: dict[str, HdrHistogram], title: str = "Latency CDF") -> bool:
    """One line per histogram, x = latency (ms, log), y = percentile in nines."""
    series = {label: hdr.cdf_points(h) for label, h in hists.items() if h.get_total_count()}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, [-_log10(1 - y) for y in ys], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency (ms)")
    ticks = [0, 1, 2, 3, 4, 5]
    ax.set_yticks(ticks)
    ax.set_yticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.set_ylabel("percentile")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _log10(x: float) -> float:
    import math

    return math.log10(x) if x > 0 else -5.0


def plot_timeseries(
    path: Path,
    panels: list[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
    title: str,
    xlabel: str = "time (s)",
) -> bool:
    """Stacked panels sharing the x axis; each panel is (y label, {series label: (xs, ys)})."""
    panels = [(y, s) for y, s in panels if any(len(xs) for xs, _ in s.values())]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, (ylabel, series) in zip(axes[:, 0], panels, strict=True):
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), label=label, marker="." if len(xs) < 40 else None)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
    axes[-1, 0].set_xlabel(xlabel)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_histogram(path: Path, values_ms: dict[str, Sequence[float]], title: str, xlabel: str) -> bool:
    values_ms = {k: v for k, v in values_ms.items() if len(v)}
    if not values_ms:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in values_ms.items():
        ax.hist(list(values), bins=min(50, max(5, len(values) // 2)), alpha=0.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
