"""`relay token` and `relay dev` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from relay.control.app import ControlPlane
from relay.control.config import ControlConfig
from tests.control.helpers import make_config


def relay_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


async def test_token_command_mints_what_the_control_plane_accepts(tmp_path: Path) -> None:
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp, httpx.AsyncClient() as http:
        token = relay_cli("token", "--user", "player-7", "--data-dir", str(tmp_path), cwd=tmp_path)
        token = token.splitlines()[-1]
        assert cp.authority.verify_user_token(token).sub == "player-7"
        r = await http.get(cp.url + "/realtime/now", headers={"X-GS2-ACCESS-TOKEN": token})
        assert r.status_code == 200 and r.json()["timestamp"] > 0
    # From the same directory with the default data dir (./.relay), too.
    config = ControlConfig(port=0, data_dir=tmp_path / ".relay", provisioner="none")
    async with ControlPlane(config) as cp:
        token2 = relay_cli("token", "--user", "p8", cwd=tmp_path).splitlines()[-1]
        assert cp.authority.verify_user_token(token2).sub == "p8"


@pytest.mark.slow
def test_dev_prints_stable_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_CLIENT_ID", "RELAY_CLIENT_SECRET")}

    def run_dev() -> list[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "dev", "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(6)]
        url = lines[0].split(" on ", 1)[1].split()[0]
        assert httpx.get(url + "/healthz", timeout=5).json()["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(10) == 0
        return [line for line in lines + rest.splitlines() if "RELAY_CLIENT" in line]

    first, second = run_dev(), run_dev()
    assert first == second and len(first) == 2
    assert (tmp_path / ".relay" / "control.db").exists() and (
        tmp_path / ".relay" / "credentials.json"
    ).exists()


def test_gs2_clients_setting_from_flags_environment_and_file(tmp_path: Path) -> None:
    """relay_gs2_clients (on by default) is turned off by a flag, RELAY_RELAY_GS2_CLIENTS or a
    config file, and a flag wins over the environment."""
    from relay.control.cli import _parser, build_config

    def config(argv: list[str], environ: dict[str, str]) -> ControlConfig:
        return build_config(_parser("relay control", False).parse_args(argv), False, environ)

    assert config([], {}).relay_gs2_clients is True
    assert config(["--no-gs2-clients"], {}).relay_gs2_clients is False
    assert config([], {"RELAY_RELAY_GS2_CLIENTS": "false"}).relay_gs2_clients is False
    assert config(["--gs2-clients"], {"RELAY_RELAY_GS2_CLIENTS": "false"}).relay_gs2_clients is True
    (tmp_path / "c.json").write_text('{"relay_gs2_clients": false}')
    assert config(["--config", str(tmp_path / "c.json")], {}).relay_gs2_clients is False
