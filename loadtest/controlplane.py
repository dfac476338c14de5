"""Driving the control plane over its GS2 REST API (what a game backend does), for fleet and chaos.

`ControlPlane.start()` runs `relay dev` on a free port with a throw-away data folder and dev
credentials; `ControlPlane.attach(url)` uses one already running. Calls follow GS2's wire
format: login at /identifier/projectToken/login, then X-GS2-CLIENT-ID + Bearer token on
/realtime/... (see /work/shared/design/gs2-compat.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from relay.server.app import bind_pair

DEV_CLIENT_ID = "loadtest"
DEV_CLIENT_SECRET = "loadtest-secret"


def free_port() -> int:
    """A loopback port free for both TCP and UDP (a relay binds both on one port number)."""
    tcp, udp = bind_pair("127.0.0.1", 0)
    with tcp, udp:
        return int(tcp.getsockname()[1])


def available() -> str | None:
    """Why the control plane cannot be started here, or None."""
    try:
        import relay.control.cli  # noqa: F401
    except ImportError as exc:
        return f"relay.control.cli not importable ({exc})"
    return None


class ControlPlane:
    def __init__(
        self, url: str, proc: subprocess.Popen[bytes] | None = None, workdir: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.proc = proc
        self.workdir = workdir
        self.client_id = os.environ.get("RELAY_CLIENT_ID", DEV_CLIENT_ID)
        self.client_secret = os.environ.get("RELAY_CLIENT_SECRET", DEV_CLIENT_SECRET)
        self.token: str | None = None
        self.log_path: Path | None = None

    @classmethod
    def start(cls, timeout: float = 30.0, extra_args: list[str] | None = None) -> ControlPlane:
        """`relay dev` on 127.0.0.1:<free port>, data in a temporary folder; waits for /healthz.

        Settings go through the environment (RELAY_CONTROL_HOST/PORT, RELAY_DATA_DIR,
        RELAY_CLIENT_ID/SECRET: relay/control/config.py), which every control plane command reads.
        """
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="loadtest-control-")
        env = {
            **os.environ,
            "RELAY_CLIENT_ID": DEV_CLIENT_ID,
            "RELAY_CLIENT_SECRET": DEV_CLIENT_SECRET,
            "RELAY_CONTROL_HOST": "127.0.0.1",
            "RELAY_CONTROL_PORT": str(port),
            "RELAY_DATA_DIR": str(Path(workdir) / "data"),
        }
        log = open(Path(workdir) / "control.log", "wb")  # noqa: SIM115  (lives as long as the process)
        cmd = [sys.executable, "-m", "relay.cli", "dev", *(extra_args or [])]
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        cp = cls(f"http://127.0.0.1:{port}", proc, workdir)
        cp.client_id, cp.client_secret = DEV_CLIENT_ID, DEV_CLIENT_SECRET
        cp.log_path = Path(workdir) / "control.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = cp.log_tail()
                cp.stop()
                raise RuntimeError(f"control plane exited ({proc.returncode}): {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(cp.url + "/healthz", timeout=1.0).status_code == 200:
                    return cp
            time.sleep(0.2)
        tail = cp.log_tail()
        cp.stop()
        raise TimeoutError(f"control plane did not answer /healthz: {tail}")

    def log_tail(self, chars: int = 1500) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def headers(self) -> dict[str, str]:
        h = {"X-GS2-CLIENT-ID": self.client_id, "Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def login(self, http: httpx.AsyncClient) -> None:
        r = await http.post(
            self.url + "/identifier/projectToken/login",
            json={"client_id": self.client_id, "client_secret": self.client_secret},
        )
        r.raise_for_status()
        self.token = r.json()["access_token"]

    async def create_namespace(
        self, http: httpx.AsyncClient, name: str, notify: bool = False
    ) -> dict[str, Any]:
        """`notify`: room-ready pushes go to each room's notificationUserIds (GS2's createNotification)."""
        body: dict[str, Any] = {
            "name": name,
            "description": "loadtest",
            "serverType": "relay",
            "serverSpec": "realtime1.nano",
        }
        if notify:
            body["createNotification"] = {}
        r = await http.post(self.url + "/realtime/", headers=self.headers(), json=body)
        r.raise_for_status()
        return r.json()["item"]

    async def delete_namespace(self, http: httpx.AsyncClient, name: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(f"{self.url}/realtime/{name}", headers=self.headers())

    async def want_room(
        self, http: httpx.AsyncClient, ns: str, room: str, notify: list[str] | None = None
    ) -> dict[str, Any]:
        r = await http.post(
            f"{self.url}/realtime/{ns}/room",
            headers=self.headers(),
            json={"name": room, "notificationUserIds": notify or []},
        )
        r.raise_for_status()
        return r.json()["item"]

    async def user_token(self, http: httpx.AsyncClient, user_id: str) -> str:
        """A user access token (what a game client holds), e.g. for the /gateway push socket."""
        r = await http.post(f"{self.url}/auth/login", headers=self.headers(), json={"userId": user_id})
        r.raise_for_status()
        return str(r.json()["token"])

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/gateway"

    async def get_room(self, http: httpx.AsyncClient, ns: str, room: str) -> dict[str, Any] | None:
        r = await http.get(f"{self.url}/realtime/{ns}/room/{room}", headers=self.headers())
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()["item"]

    async def delete_room(self, http: httpx.AsyncClient, ns: str, room: str) -> None:
        r = await http.delete(f"{self.url}/realtime/{ns}/room/{room}", headers=self.headers())
        if r.status_code != 404:
            r.raise_for_status()

    def kill(self) -> None:
        """SIGKILL the control plane process only (its relays are left to show they survive)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        """SIGTERM the whole session (control plane and whatever relays it spawned), then remove
        the temporary folder `start` made (its data and log: up to some megabytes a run, and
        every scenario and test that starts one would otherwise leave one behind)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(2)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def provision_seconds(self, namespace: str) -> dict[str, float]:
        """room -> the control plane's own wantRoom-to-registered time (operation log `room.ready`
        provisionSeconds), for a control plane this object started."""
        if not self.workdir:
            return {}
        path = Path(self.workdir) / "data" / "operations.log"
        found: dict[str, float] = {}
        with contextlib.suppress(OSError), path.open() as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == "room.ready" and entry.get("namespaceName") == namespace:
                        found.setdefault(entry["roomName"], float(entry["provisionSeconds"]))
        return found

    def relay_pids(self, namespace: str) -> list[int]:
        """Relay processes serving this namespace (their command line names it), found in /proc."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and namespace.encode() in cmdline:
                pids.append(int(entry))
        return pids
