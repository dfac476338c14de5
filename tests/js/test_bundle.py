"""The browser bundles /demo serves are committed (so `make run` needs only Python); a fresh
esbuild build of clients/js must reproduce them byte for byte, so they cannot drift from the source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay.control.demo_api import DEMO_DIR, STATIC
from tests.js.conftest import JS, unavailable

pytestmark = pytest.mark.timeout(120)


def test_committed_bundles_are_a_fresh_build(node: list[str], tmp_path: Path) -> None:
    if not (JS / "node_modules" / "esbuild").exists():
        unavailable("clients/js/node_modules is missing: run `npm ci` in clients/js")
    run = subprocess.run(
        [node[0], "scripts/bundle.mjs", str(tmp_path)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in DEMO_DIR.glob("*.js")}
    assert {"relay-client.js", "relay-worker.js", "demo.js"} <= set(fresh)
    assert sorted(committed) == sorted(fresh), "run `npm run bundle` in clients/js"
    for name, data in fresh.items():
        assert committed[name] == data, (
            f"relay/control/demo/{name} is not what clients/js builds: npm run bundle"
        )
    assert set(STATIC) == {p.name for p in DEMO_DIR.iterdir()}, "every file in relay/control/demo is served"
