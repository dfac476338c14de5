"""README.md's quick start, run as written against a real `relay dev`, so it cannot rot.

Every fenced block whose info string is `sh quickstart` is run by bash in a fresh folder (with
`.venv` there pointing at this interpreter's environment), and every `python FILE` block is saved
as FILE first, in the order the README gives them. The one liberty taken: the port (7700 in the
README) is a free one, so this runs beside anything else on the machine; `relay dev` and the
example both read it from RELAY_CONTROL_PORT. The credentials are in the environment, as the
README asks the reader to paste them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loadtest.controlplane import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = Path(sys.prefix)
FENCE = re.compile(r"^```(\w+)[ \t]*([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    label: str
    text: str


def blocks() -> list[Block]:
    """The quick start's fenced blocks, in order (those of the Quick start section only)."""
    text = README.read_text()
    section = text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start") + 1)]
    return [Block(m[1], m[2].strip(), m[3]) for m in FENCE.finditer(section)]


def _clean_env() -> dict[str, str]:
    """This process's environment less every RELAY_* setting (a fresh shell's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


@contextmanager
def relay_dev(folder: Path, *flags: str) -> Iterator[int]:
    """`.venv/bin/relay dev` in `folder` on a free port, as `make run` starts it; yields the port."""
    (folder / ".venv").symlink_to(VENV)
    port = free_port()
    log = (folder / "dev.log").open("w")
    proc = subprocess.Popen(
        [".venv/bin/relay", "dev", *flags],
        cwd=folder,
        env=_clean_env() | {"RELAY_CONTROL_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "dev.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (folder / "dev.log").read_text()
            time.sleep(0.1)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a reader stops it
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def run_block(block: Block, folder: Path, port: int) -> str:
    text = block.text.replace("7700", str(port))
    if block.language == "python":
        (folder / block.label).write_text(text)
        return ""
    credentials = json.loads((folder / ".relay" / "credentials.json").read_text())
    env = _clean_env() | {
        "RELAY_CONTROL_PORT": str(port),
        "RELAY_CLIENT_ID": credentials["client_id"],
        "RELAY_CLIENT_SECRET": credentials["client_secret"],
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a process that does not exit (an SDK session left open) fails here
    )
    assert done.returncode == 0, f"{block.text}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    found = blocks()
    runnable = [b for b in found if b.label == "quickstart" or b.language == "python"]
    assert [b.label for b in runnable if b.language == "python"] == ["sdk_example.py", "join.py"]
    assert found[0].text.split()[:2] == ["make", "run"], "the first two commands are make run, make test"
    with relay_dev(tmp_path) as port:
        outputs = [run_block(block, tmp_path, port) for block in runnable]
    said = "\n".join(outputs)
    assert "namespace ns1: created" in said and "joined as user-1" in said, said
    assert "joined as alice" in said, said  # with the token `relay token` printed
    assert "alice joined as connection" in said, said  # join.py, in the room sdk_example.py made


@dataclass(frozen=True)
class TokenStep:
    said: str
    """What the token block printed, under --require-user-tokens."""
    refused: subprocess.CompletedProcess[str]
    """The example run without a token."""


def token_step(folder: Path) -> TokenStep:
    """The token block against `relay dev --require-user-tokens`, then the example without one."""
    (token_block,) = [b for b in blocks() if b.label == "quickstart" and "relay token" in b.text]
    with relay_dev(folder, "--require-user-tokens") as port:
        said = run_block(token_block, folder, port)
        refused = subprocess.run(
            [".venv/bin/python", "-m", "relay.control.example"],
            cwd=folder,
            env=_clean_env() | {"RELAY_CONTROL_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    return TokenStep(said, refused)


@pytest.fixture(scope="module", autouse=True)
def token_step_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[TokenStep] | None]:
    """The token step, where its test is selected, started with the module's first test on a thread
    of its own: it and the quick start each mostly wait (the example stays 5 s in its room), each
    against its own `relay dev`, so they run side by side. Its test asserts on what it got."""
    test = test_the_token_step_passes_relays_that_require_tokens
    if not any(getattr(item, "function", None) is test for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-step") as pool:
        yield pool.submit(token_step, tmp_path_factory.mktemp("token-step"))


def test_the_token_step_passes_relays_that_require_tokens(token_step_run: Future[TokenStep] | None) -> None:
    """`relay token`'s token is the one relays check: under --require-user-tokens the example
    joins with it (and is refused without it)."""
    assert token_step_run is not None
    step = token_step_run.result()
    said, refused = step.said, step.refused
    assert "joined as alice" in said, said
    assert refused.returncode == 1
    assert "relay token --user user-1" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
