"""Acknowledged writes survive SIGKILL: a real `relay control` process killed mid-burst and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.control.helpers import CLIENT_ID, CLIENT_SECRET, login

pytestmark = pytest.mark.slow


async def start_control(
    data_dir: Path, log: Path, port: int = 0, provisioner: str = "none", *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A real `relay control` process; returns it and its URL once it listens."""
    env = {**os.environ, "RELAY_CLIENT_ID": CLIENT_ID, "RELAY_CLIENT_SECRET": CLIENT_SECRET}
    cmd = [
        sys.executable,
        "-m",
        "relay.cli",
        "control",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--provisioner",
        provisioner,
        "--log-level",
        "warning",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(log, "ab"))  # noqa: SIM115
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    assert b" on http://" in line, line
    return proc, line.split(b" on ", 1)[1].split()[0].decode()


async def test_sigkill_mid_burst_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "control.log"
    proc, url = await start_control(data, log)
    acked_ns: list[str] = []
    acked_rooms: list[tuple[str, str]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)
            await http.post(
                "/realtime/",
                json={"name": "base", "serverType": "relay", "serverSpec": "realtime1.nano"},
                headers=h,
            )
            acked_ns.append("base")

            async def writer(worker: int) -> None:
                for i in range(10_000):
                    try:
                        if i % 2:
                            name = f"w{worker}-ns{i:05d}"
                            body = {"name": name, "serverType": "relay", "serverSpec": "realtime1.nano"}
                            r = await http.post("/realtime/", json=body, headers=h)
                            if r.status_code == 200:
                                acked_ns.append(name)
                        else:
                            room = f"w{worker}-r{i:05d}"
                            r = await http.post("/realtime/base/room", json={"name": room}, headers=h)
                            if r.status_code == 200:
                                acked_rooms.append(("base", room))
                    except httpx.HTTPError:
                        return

            tasks = [asyncio.create_task(writer(w)) for w in range(4)]
            while len(acked_ns) + len(acked_rooms) < 60:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)  # mid-burst: requests are in flight right now
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    proc, url = await start_control(data, log)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)  # same signing key and credentials after restart
            names: list[str] = []
            token = None
            while True:
                params = {"limit": 1000, **({"pageToken": token} if token else {})}
                body = (await http.get("/realtime/", params=params, headers=h)).json()
                names += [n["name"] for n in body["items"]]
                token = body["nextPageToken"]
                if not token:
                    break
            rooms = [
                r["name"]
                for r in (await http.get("/realtime/base/room?limit=1000", headers=h)).json()["items"]
            ]
        assert set(acked_ns) <= set(names)
        assert {r for _, r in acked_rooms} <= set(rooms)
        assert len(acked_ns) + len(acked_rooms) >= 60
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
