"""HDR latency histograms (microseconds) and their summaries, mergeable across processes."""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes: anything slower is clamped
SIGNIFICANT = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT)


def record_us(hist: HdrHistogram, value_us: float) -> None:
    hist.record_value(min(max(int(value_us), LOWEST_US), HIGHEST_US))


def encode(hist: HdrHistogram) -> str:
    """Compressed base64 text: how histograms travel from worker processes to the harness."""
    return hist.encode().decode("ascii") if hist.get_total_count() else ""


def decode(text: str) -> HdrHistogram:
    hist = new()
    if text:
        hist.add(HdrHistogram.decode(text.encode("ascii")))
    return hist


def merge(texts: list[str]) -> HdrHistogram:
    hist = new()
    for text in texts:
        if text:
            hist.add(HdrHistogram.decode(text.encode("ascii")))
    return hist


def summary(hist: HdrHistogram) -> dict[str, Any]:
    """Count, min/mean/max and the standard percentiles, in milliseconds."""
    count = hist.get_total_count()
    if not count:
        return {"count": 0}
    out: dict[str, Any] = {
        "count": count,
        "min_ms": hist.get_min_value() / 1000,
        "mean_ms": hist.get_mean_value() / 1000,
        "max_ms": hist.get_max_value() / 1000,
    }
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = hist.get_value_at_percentile(p) / 1000
    return out


def supported_nines(count: int) -> float:
    """How far into the tail `count` samples reach, in nines: log10(count), the percentile
    1 - 1/count (50 samples: 1.7 nines, 98%). A CDF drawn further shows one sample stretched
    across percentiles nothing was measured at."""
    return math.log10(count) if count > 1 else 0.0


def cdf_points(hist: HdrHistogram, points: int = 200) -> tuple[list[float], list[float]]:
    """(latency ms, cumulative fraction) pairs for a CDF plot, spaced evenly in "nines" so the
    tail is visible, up to the percentile the sample count supports (1 - 1/count), where the
    slowest sample is drawn."""
    count = hist.get_total_count()
    if not count:
        return [], []
    top = supported_nines(count)
    xs: list[float] = []
    ys: list[float] = []
    for i in range(points):
        frac = 1 - 10 ** (-top * i / points)
        xs.append(hist.get_value_at_percentile(frac * 100) / 1000)
        ys.append(frac)
    xs.append(hist.get_max_value() / 1000)
    ys.append(1 - 10**-top)
    return xs, ys
