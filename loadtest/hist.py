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


def _recorded(hist: HdrHistogram) -> list[tuple[int, int]]:
    """(bucket index, count) of every bucket holding a sample, in value order. hdrh walks all of
    its ~18,000 buckets in Python for each mean or percentile asked (0.2 s a call): the reports ask
    hundreds, so the buckets are read once and the few that hold samples are walked instead."""
    stored = min(hist.counts_len, hist.encoder.payload.counts_len)  # a decoded one may be shorter
    counts = hist.counts[:stored]
    return [(i, c) for i, c in enumerate(counts) if c]


def _percentiles(hist: HdrHistogram, recorded: list[tuple[int, int]], wanted: list[float]) -> list[int]:
    """The value at each percentile (ascending), as hdrh's get_value_at_percentile gives it."""
    out: list[int] = []
    targets = iter(wanted)
    want = next(targets, None)
    total = 0
    for index, count in recorded:
        total += count
        while want is not None and total >= hist.get_target_count_at_percentile(want):
            value = hist.get_value_from_index(index)
            out.append(
                hist.get_highest_equivalent_value(value) if want else hist.get_lowest_equivalent_value(value)
            )
            want = next(targets, None)
        if want is None:
            break
    return out


def summary(hist: HdrHistogram) -> dict[str, Any]:
    """Count, min/mean/max and the standard percentiles, in milliseconds."""
    count = hist.get_total_count()
    if not count:
        return {"count": 0}
    recorded = _recorded(hist)
    # the mean as hdrh's get_mean_value: each sample at the middle of its bucket's range
    middle = hist._hdr_median_equiv_value
    mean = sum(c * middle(hist.get_value_from_index(i)) for i, c in recorded) / count
    out: dict[str, Any] = {
        "count": count,
        "min_ms": hist.get_min_value() / 1000,
        "mean_ms": mean / 1000,
        "max_ms": hist.get_max_value() / 1000,
    }
    for p, value in zip(PERCENTILES, _percentiles(hist, recorded, list(PERCENTILES)), strict=True):
        out[f"p{p:g}_ms"] = value / 1000
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
    ys = [1 - 10 ** (-top * i / points) for i in range(points)]
    xs = [v / 1000 for v in _percentiles(hist, _recorded(hist), [y * 100 for y in ys])]
    xs.append(hist.get_max_value() / 1000)
    ys.append(1 - 10**-top)
    return xs, ys
