"""`python -m loadtest SCENARIO [options]`: parses the command line (loadtest/arguments.py), runs
the scenario and writes its results folder; `benchmarks` reruns several and rewrites BENCHMARKS.md.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any

from loadtest.arguments import build_parser
from loadtest.report import Report, results_dir


def _scenarios() -> dict[str, Callable[[Any, Report], Any]]:
    from loadtest.scenarios import runners

    return runners.RUNNERS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m loadtest " + shlex.join(argv)
    if args.scenario == "benchmarks":
        from loadtest.benchmarks import regenerate

        return regenerate(args, command)
    report = Report(args.scenario, results_dir(args.scenario, args.out), config={}, command=command)
    _scenarios()[args.scenario](args, report)
    out = report.write()
    print(f"{args.scenario}: results in {out}/ (summary.md, result.json)")
    print((out / "summary.md").read_text())
    return 0
