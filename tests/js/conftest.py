"""The TypeScript client's tests need Node (20+), clients/js/node_modules (`npm ci`) and, for the
browser tests, Chromium. Where one is missing they skip and say why; under RELAY_JS_TESTS=required
(set by .ci/run) they fail instead, so CI cannot pass without running them.

`js_build` holds a lock on clients/js/build while tsc writes it: under pytest-xdist each worker
that reaches these tests builds (incrementally: the second finds nothing to do)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

JS = Path(__file__).resolve().parents[2] / "clients" / "js"
REQUIRED = os.environ.get("RELAY_JS_TESTS") == "required"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def unavailable(reason: str) -> NoReturn:
    if REQUIRED:
        pytest.fail(f"{reason} (RELAY_JS_TESTS=required: these tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> list[str]:
    """The node command line, with --experimental-websocket where WebSocket is not global (Node 20)."""
    path = shutil.which("node")
    if path is None:
        unavailable("node not found: install Node.js 20 or newer (README.md, Tests)")
    probe = subprocess.run(
        [path, "-e", "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)"], check=False
    )
    if probe.returncode != 0:
        unavailable("node is older than 20")
    has_ws = subprocess.run(
        [path, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    return [path] if has_ws.returncode == 0 else [path, "--experimental-websocket"]


@pytest.fixture(scope="session")
def js_build(node: list[str]) -> Path:
    """clients/js compiled with its tests (tsc, strict) into clients/js/build, once per session.
    Incrementally: tsc keeps what it learnt in build/.tsbuildinfo and checks and emits again only
    what changed since (its errors are reported every time); without build/, all of it."""
    if not (JS / "node_modules" / ".package-lock.json").exists():
        unavailable("clients/js/node_modules is missing: run `npm ci` in clients/js")
    (JS / "build").mkdir(exist_ok=True)
    with open(JS / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _tsc(node)


def _tsc(node: list[str]) -> Path:
    build_info = JS / "build" / ".tsbuildinfo"
    sources = [
        ts for d in ("src", "test", "demo") for ts in (JS / d).rglob("*.ts") if not ts.name.endswith(".d.ts")
    ]
    if any(not (JS / "build" / ts.relative_to(JS)).with_suffix(".js").exists() for ts in sources):
        build_info.unlink(missing_ok=True)  # an output removed by hand: tsc would not write it again
    incremental = ["--incremental", "--tsBuildInfoFile", str(build_info.relative_to(JS))]
    tsc = subprocess.run(
        [node[0], "node_modules/typescript/bin/tsc", "-p", "tsconfig.test.json", *incremental],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tsc.returncode == 0, f"tsc failed:\n{tsc.stdout}{tsc.stderr}"
    return JS / "build"


@pytest.fixture(scope="session")
def chromium() -> str:
    path = os.environ.get("RELAY_CHROMIUM") or next(
        (p for p in CHROMIUM_CANDIDATES if os.path.exists(p)), shutil.which("chromium")
    )
    if not path or not os.path.exists(path):
        unavailable("chromium not found: `apt-get install chromium` (README.md, Tests) or set RELAY_CHROMIUM")
    return path
