"""Every coverage-guided fuzz target (tests/fuzz/targets.py) for a few seconds: a crash (an
exception the contract does not allow, a broken invariant) fails the test with its input.
RELAY_FUZZ_SECONDS sets the time per target (a long run: RELAY_FUZZ_SECONDS=3600)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, seeds

SECONDS = int(os.environ.get("RELAY_FUZZ_SECONDS", "3"))
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install atheris)"
)


@pytest.mark.timeout(SECONDS * 4 + 60)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
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
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS * 4 + 50,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    detail = "\n".join(f"{c.name}: {c.read_bytes()[:200]!r}" for c in crashes)
    assert result.returncode == 0 and not crashes, f"{result.stderr[-3000:]}\n{detail}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs, result.stderr[-2000:]
    assert int(runs[-1].split()[1]) > 100  # it did run
