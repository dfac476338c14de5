"""A worker's figures for one step, from its members' counters: what it sends the harness.

Histograms travel encoded (loadtest/hist.py) so the harness can merge workers' exactly.
"""

from __future__ import annotations

from typing import Any

from loadtest import hist as hdr
from loadtest.fastload.member import LoadMember


def _clamp_us(ns: int) -> int:
    """Nanoseconds to whole microseconds within the histograms' range (as hist.record_us does)."""
    return min(max(ns // 1000, hdr.LOWEST_US), hdr.HIGHEST_US)


def step_result(
    members: list[LoadMember],
    *,
    batch: int,
    full: bool,
    rate: float,
    start_ns: int,
    rt_offset: int,
    stamping: bool,
) -> dict[str, Any]:
    """Sent, delivered and lost per recipient, latency histograms (end to end; in full mode added
    latency and sender lateness too). `rate` is per member (messages/s); `rt_offset` is
    time.time_ns() - time.monotonic_ns() at the step start, to compare send times with schedules."""
    hist = hdr.new()
    added = hdr.new()
    late = hdr.new()
    unstamped = 0
    for m in members:
        for v, n in zip(m.latencies, m.latency_counts, strict=True):
            hist.record_value(_clamp_us(v), n)
        for v, n in zip(m.added, m.added_counts, strict=True):
            if v < 0:
                unstamped += n
            else:
                added.record_value(_clamp_us(v), n)
    if full:
        # sender lateness: actual send (CLOCK_REALTIME) - scheduled send (CLOCK_MONOTONIC)
        interval_ns = batch / rate * 1e9
        base = start_ns + rt_offset
        for m in members:
            for i, t in enumerate(m.tx_ns):
                if t:
                    hdr.record_us(late, (t - base - int(m.phase_ns + i * interval_ns)) / 1000)
    per_recipient = {}
    for m in members:
        sent = sum(o.sent_dgrams * batch for o in m.group)
        per_recipient[m.session.user_id] = {
            "sent": sent,
            "delivered": m.delivered,
            "lost": sent - m.delivered,
            "datagrams": m.dgrams_in,
            "slow_path": m.slow,
            "undecryptable": m.undecryptable,
            "closed": m.session.closed,
            "streams": m.arrivals.to_json() if full else {},
        }
    return {
        "sent_messages": sum(m.sent_dgrams for m in members) * batch,
        "sent_packets": sum(m.sent_dgrams for m in members),
        "planned_packets": sum(len(m.packets) for m in members),
        "delivered": sum(m.delivered for m in members),
        "delivered_in_window": sum(m.in_window for m in members),
        "datagrams_in": sum(m.dgrams_in for m in members),
        "per_recipient": per_recipient,
        "latency_hist": hdr.encode(hist),
        "latency_samples": sum(sum(m.latency_counts) for m in members),
        "added_hist": hdr.encode(added),
        "added_unstamped": unstamped,
        "sender_lateness_hist": hdr.encode(late),
        "partial_sends": sum(m.partial_sends for m in members),
        "rx_timestamps": stamping,
    }
