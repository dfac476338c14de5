"""Scenario name -> runner(args, report): each fills the report (results, markdown, plots)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from loadtest import baseline as c_baseline
from loadtest.report import Report, table


def _progress(args: Any) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def run_baseline(args: Any, report: Report) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.quick:
        kw["seconds"] = 1.0
    if args.seconds is not None:
        kw["seconds"] = args.seconds
    if args.pps is not None:
        kw["offered_pps"] = args.pps
    config = c_baseline.BaselineConfig(**kw)
    report.config = asdict(config)
    result = c_baseline.run_median(config, args.runs)
    report.results = result
    if "skipped" in result:  # cli.main exits 1 and says why
        report.note(f"not run: {result['skipped']}")
        report.markdown = ["Not run: " + result["skipped"]]
        return result
    rows = [
        [
            i + 1,
            r.get("sent_per_s"),
            r.get("relay_in_per_s"),
            r.get("relay_out_per_s"),
            r.get("received_per_s"),
            r.get("relay_cpu_percent"),
            r.get("limit"),
        ]
        for i, r in enumerate(result["runs"])
    ]
    report.markdown = [
        "## C per-packet UDP relay (fan-out 3, 100-byte datagrams, no crypto)",
        "",
        *table(
            ["run", "sent/s", "relay in/s", "relay out/s (delivered)", "received/s", "relay CPU %", "limit"],
            rows,
        ),
        "",
        f"Median delivered: {result['delivered_per_s']:,.0f} datagrams/s ({result['limit']}).",
    ]
    return result


def run_throughput(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import throughput

    return throughput.run(throughput.config_from_args(args), report, _progress(args))


def run_nano(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import nano

    return nano.run(nano.config_from_args(args), report, _progress(args))


def run_fleet(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import fleet

    return fleet.run(fleet.config_from_args(args), report, _progress(args))


def run_density(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import density

    return density.run(density.config_from_args(args), report, _progress(args))


def run_soak(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import soak

    return soak.run(soak.config_from_args(args), report, _progress(args))


def run_chaos(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import chaos

    return chaos.run(chaos.config_from_args(args), report, _progress(args))


def run_flood(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import flood

    return flood.run(flood.config_from_args(args), report, _progress(args))


def run_fleet_shape(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import fleetshape

    return fleetshape.run(fleetshape.config_from_args(args), report, _progress(args))


def run_stores(args: Any, report: Report) -> dict[str, Any]:
    from loadtest.scenarios import stores

    return stores.run(stores.config_from_args(args), report, _progress(args))


RUNNERS: dict[str, Callable[[Any, Report], Any]] = {
    "baseline": run_baseline,
    "throughput": run_throughput,
    "nano": run_nano,
    "fleet": run_fleet,
    "density": run_density,
    "soak": run_soak,
    "chaos": run_chaos,
    "flood": run_flood,
    "fleet-shape": run_fleet_shape,
    "stores": run_stores,
}
