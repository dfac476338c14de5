"""The C part under AddressSanitizer and UndefinedBehaviorSanitizer.

relay/server/_lane.c parses what members send (their plaintexts, after authentication, are still
untrusted), and relay/protocol/_aead.c, _ratelimit.c, _pacing.c and _datagrams.c handle every
packet or pass. A read past a buffer there would not fail a test: it would read something, or
crash a room some day. So a copy of the repository is built with `-fsanitize=address,undefined`
and the tests that drive the C part (the lane's scenarios and its fuzzing, AEAD against its Python
twin, the token buckets, the pacer, the datagram batches) run on that build, in a process that
loads the sanitizers' runtimes first; any report ends that process (halt_on_error) and fails this
test with the report.

Needs gcc and its libasan and libubsan (Debian's gcc package brings both); where they are
missing the test skips saying so, and in CI (RELAY_REQUIRE_NATIVE) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]  # a build, then the tests it runs

ROOT = Path(__file__).resolve().parents[2]
TESTS = [
    "tests/server/test_lane.py",
    "tests/protocol/test_aead.py",
    "tests/server/test_ratelimit_native.py",
    "tests/server/test_pacing_native.py",
    "tests/server/test_udp_writer.py",
]
FLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g"


def runtimes() -> list[str] | str:
    """The sanitizers' shared runtimes, or why there are none."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "no gcc on this machine"
    found = []
    for name in ("libasan.so", "libubsan.so"):
        asked = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True)
        path = asked.stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            return f"gcc has no {name} here (Debian: the gcc package's libasan and libubsan)"
        found.append(path)
    return found


def test_the_c_part_is_clean_under_the_sanitizers(tmp_path: Path) -> None:
    found = runtimes()
    if isinstance(found, str):
        if os.environ.get("RELAY_REQUIRE_NATIVE"):
            pytest.fail(found)
        pytest.skip(found)
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("*.so", "__pycache__", ".hypothesis", "node_modules")
    for part in ("relay", "tests", "loadtest"):
        shutil.copytree(ROOT / part, src / part, ignore=skip)
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_PURE_PYTHON", "PYTHONPATH")}
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=src,
        env={**env, "CFLAGS": FLAGS, "LDFLAGS": "-fsanitize=address,undefined"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    sanitized = {
        **env,
        "LD_PRELOAD": " ".join(found),
        "PYTHONMALLOC": "malloc",  # PyMem_Malloc as malloc: each block with its own bounds to check
        # reports to files: the tests' own output capture would swallow them with the process
        "ASAN_OPTIONS": f"detect_leaks=0:log_path={tmp_path / 'asan'}",  # the interpreter's live to its exit
        "UBSAN_OPTIONS": f"halt_on_error=1:print_stacktrace=1:log_path={tmp_path / 'ubsan'}",
        "RELAY_REQUIRE_NATIVE": "1",
        "RELAY_FUZZ_PACKETS": "6000",
        "RELAY_SANITIZED": "1",  # test_lane's scenarios with the lane only (the C part)
    }
    probe = "import relay.protocol._aead, relay.server._lane as lane; print(lane.__file__)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=src, env=sanitized, capture_output=True, text=True
    )
    assert loaded.stdout.strip().startswith(str(src)), loaded.stdout + loaded.stderr  # the build under test
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *TESTS],
        cwd=src,
        env=sanitized,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reports = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("[au]*san.*")))
    assert not reports, reports[:8000]
    out = run.stdout + run.stderr
    assert run.returncode == 0 and " passed" in out, out[-6000:]
    assert "skipped" not in out, out[-3000:]  # each ran on the sanitized build
