"""Every coverage-guided fuzz target (tests/fuzz/targets.py) for a few seconds: a crash (an
exception the contract does not allow, a broken invariant) fails the test with its input.
RELAY_FUZZ_SECONDS sets the time per target (a long run: RELAY_FUZZ_SECONDS=3600).

Each target runs in its own process (single-threaded, one CPU); the selected targets run
RELAY_FUZZ_JOBS at a time (default: 2, or 1 on a one-CPU machine), started when the first of
them is reached, so each still gets its full time on a CPU of its own while the suite waits on
two at once. Under pytest-xdist (`make test`: `--dist loadfile`, this module in one worker) they
run one at a time: the other workers keep the other CPUs busy. Each test asserts on its own
target's run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, seeds

SECONDS = int(os.environ.get("RELAY_FUZZ_SECONDS", "3"))
IN_WORKER = "PYTEST_XDIST_WORKER" in os.environ
JOBS = int(os.environ.get("RELAY_FUZZ_JOBS") or (1 if IN_WORKER else min(2, len(os.sched_getaffinity(0)))))
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install atheris)"
)


@dataclass(frozen=True)
class FuzzRun:
    result: subprocess.CompletedProcess[str]
    artifacts: Path


def fuzz(name: str, folder: Path) -> FuzzRun:
    """One target under libFuzzer for SECONDS, from its seeds; crashes are written to `folder`."""
    corpus = folder / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed{i}").write_bytes(seed)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz",
            name,
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={folder}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS * 4 + 50,
    )
    return FuzzRun(result, folder)


@pytest.fixture(scope="module")
def fuzz_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[FuzzRun]]]:
    """The selected targets' runs, JOBS at a time, in the order their tests run."""
    names = [
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.function is test_fuzz_target
    ]
    with ThreadPoolExecutor(max_workers=max(1, JOBS), thread_name_prefix="fuzz") as pool:
        runs = {name: pool.submit(fuzz, name, tmp_path_factory.mktemp(f"fuzz-{name}")) for name in names}
        try:
            yield runs
        finally:
            for run in runs.values():
                run.cancel()  # those not started (a failing -x run): the running ones end by themselves


@pytest.mark.timeout(SECONDS * 4 + 60)  # the earlier runs are done: this one started, or starts now
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str, fuzz_runs: dict[str, Future[FuzzRun]]) -> None:
    run = fuzz_runs[name].result()
    result = run.result
    crashes = sorted(run.artifacts.glob("crash-*")) + sorted(run.artifacts.glob("timeout-*"))
    detail = "\n".join(f"{c.name}: {c.read_bytes()[:200]!r}" for c in crashes)
    assert result.returncode == 0 and not crashes, f"{result.stderr[-3000:]}\n{detail}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs, result.stderr[-2000:]
    assert int(runs[-1].split()[1]) > 100  # it did run
