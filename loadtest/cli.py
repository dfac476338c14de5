"""`python -m loadtest SCENARIO [options]`: parses the command line (loadtest/arguments.py), runs
the scenario and writes its results folder; `benchmarks` reruns several and rewrites BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loadtest.arguments import build_parser

if TYPE_CHECKING:
    from loadtest.report import Report

# the `loadtest` extra (pyproject.toml): module imported -> the distribution that provides it
EXTRA_MODULES = {"matplotlib": "matplotlib", "rich": "rich", "hdrh": "hdrhistogram"}


def missing_extra() -> str | None:
    """One line naming what to install when the `loadtest` extra is not, or None. The relay's
    own install leaves it out (plots, progress bars, HDR histograms); without this a run dies
    in an import deep inside, naming a module and not the extra that brings it."""
    missing = []
    for module, dist in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    if not missing:
        return None
    return (
        f"python -m loadtest needs the loadtest extra ({', '.join(missing)} not installed): "
        "pip install -e '.[loadtest]' (from the repository root)"
    )


def _scenarios() -> dict[str, Callable[[Any, Report], Any]]:
    from loadtest.scenarios import runners

    return runners.RUNNERS


def exit_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a cancelled CI job, a kill) ends a run as Ctrl-C does: SystemExit
    unwinds it, so every scenario's cleanup runs (its finally blocks stop the relays, control
    planes and bots it started). Python's default for SIGTERM ends the process at once, and
    those went on running until their idle timeout."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    """Runs one scenario (or `benchmarks`); 2 without the extra, 1 when the scenario could not
    run here (its report says why), else 0."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        exit_on_sigterm()
    missing = missing_extra()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from loadtest.report import Report, results_dir

    command = "python -m loadtest " + shlex.join(argv)
    if args.scenario == "benchmarks":
        from loadtest.benchmarks import regenerate

        return regenerate(args, command)
    report = Report(args.scenario, results_dir(args.scenario, args.out), config={}, command=command)
    _scenarios()[args.scenario](args, report)
    out = report.write()
    print(f"{args.scenario}: results in {out}/ (summary.md, result.json)")
    print((out / "summary.md").read_text())
    skipped = report.results.get("skipped") if isinstance(report.results, dict) else None
    if skipped:
        print(f"{args.scenario}: not run: {skipped}", file=sys.stderr)
        return 1
    return 0
