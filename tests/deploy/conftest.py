"""Fixtures of several deploy tests: a real `relay dev` on a free port."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest.controlplane import free_port
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET
from tests.deploy.helpers import wait_until_answering

ROOT = Path(__file__).resolve().parents[2]


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def relay_dev(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """`relay dev` on a free port, with one warm relay (its metrics are on the dashboard): its URL and
    data dir."""
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "RELAY_CLIENT_ID": CLIENT_ID, "RELAY_CLIENT_SECRET": CLIENT_SECRET}
    command = [sys.executable, "-m", "relay.cli", "dev", "--port", str(port), "--data-dir", str(data)]
    proc = await asyncio.create_subprocess_exec(
        *command, "--warm-relays", "1", "--log-level", "warning", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_answering(url + "/healthz")
        yield url, data
    finally:
        await stop_process(proc)
