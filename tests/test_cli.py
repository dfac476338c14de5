"""The command line's one error path, as a user meets it: real `relay` processes.

A wrong setting from any source (flag, RELAY_* variable, --config file) is ONE line on stderr
naming the setting and the form it must have, and exit status 2; a port in use is one line and
exit status 1; never a traceback. Help names every flag's default; the settings tables of
docs/operations.md are the settings' own (relay/docs.py).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import relay
from relay.agent.launch import SURFACE as SERVE
from relay.control.config import SURFACE as CONTROL
from relay.docs import OPERATIONS, rewrite, tables
from relay.protocol.keys import generate_room_key

ROOT = Path(__file__).resolve().parent.parent
KEY = generate_room_key()


def clean_env(**extra: str) -> dict[str, str]:
    """A shell's environment without RELAY_* settings, plus `extra`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | extra


def relay_cmd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        cwd=cwd or ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Asserts exit status `code` and a single stderr line holding every needle."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --- wrong settings: exit 2, one line -----------------------------------------------------------

CONTROL_ENV = [
    (
        {"RELAY_CONTROL_PORT": "abc"},
        ("RELAY_CONTROL_PORT='abc'", "port must be a whole number from 0 to 65535"),
    ),
    (
        {"RELAY_HEARTBEAT_INTERVAL": "fast"},
        ("RELAY_HEARTBEAT_INTERVAL", "heartbeat_interval must be a number"),
    ),
    ({"RELAY_HEARTBEAT_INTERVAL": "-5"}, ("RELAY_HEARTBEAT_INTERVAL='-5'", ">= 0.05")),
    ({"RELAY_RELAY_WARM_RELAYS": "-1"}, ("RELAY_RELAY_WARM_RELAYS='-1'", "whole number >= 0")),
    ({"RELAY_RELAY_CAPS": "bogus"}, ("RELAY_RELAY_CAPS='bogus'", "one of auto, cgroup, soft, off")),
    ({"RELAY_PROVISIONER": "k8s"}, ("RELAY_PROVISIONER='k8s'", "one of local, agones, none")),
    ({"RELAY_STORE_URL": "mysql://db/relay"}, ("RELAY_STORE_URL", "store_url: must be sqlite:///")),
    ({"RELAY_DEMO": "maybe"}, ("RELAY_DEMO='maybe'", "true or false")),
    ({"RELAY_RELAY_TIER": "huge"}, ("RELAY_RELAY_TIER='huge'", "realtime1.nano")),
    ({"RELAY_WEBHOOK_URL": "ftp://x"}, ("RELAY_WEBHOOK_URL", "http://")),
    ({"RELAY_RELAY_EXTRA_ARGS": "--idle-timeout soon"}, ("relay_extra_args", "--idle-timeout='soon'")),
    (  # every relay would fail to start: refused once, at the start
        {"RELAY_RELAY_EXTRA_ARGS": "--tls-cert /nonexistent/cert.pem --tls-key /nonexistent/key.pem"},
        ("relay_extra_args", "cannot load the TLS certificate /nonexistent/cert.pem", "No such file"),
    ),
    (
        {"RELAY_API_TLS_CERT": "/nonexistent/api.pem", "RELAY_API_TLS_KEY": "/nonexistent/api-key.pem"},
        ("cannot load the TLS certificate /nonexistent/api.pem", "No such file"),
    ),
]


@pytest.mark.parametrize(("env", "needles"), CONTROL_ENV, ids=[next(iter(e)) for e, _ in CONTROL_ENV])
def test_a_wrong_variable_is_one_line_and_status_2(
    env: dict[str, str], needles: tuple[str, ...], data_dir: Path
) -> None:
    done = relay_cmd("control", "--data-dir", str(data_dir), env=clean_env(**env))
    one_line(done, 2, "relay control: ", *needles)
    assert not data_dir.exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--port", "99999"], ("--port='99999'", "from 0 to 65535")),
        (["--warm-relays", "many"], ("--warm-relays='many'", "whole number")),
        (["--config", "/nonexistent/relay.json"], ("config file /nonexistent/relay.json: not found",)),
        (["--porrt", "1"], ("unrecognized arguments: --porrt", "relay dev --help")),
    ],
)
def test_a_wrong_flag_is_one_line_and_status_2(
    args: list[str], needles: tuple[str, ...], data_dir: Path
) -> None:
    one_line(relay_cmd("dev", "--data-dir", str(data_dir), *args), 2, "relay dev: ", *needles)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (
            '{"heartbeat_intervall": 1}',
            ("'heartbeat_intervall' is not a setting", "did you mean 'heartbeat_interval'"),
        ),
        ('{"port": "x"}', ("key 'port'", "port must be a whole number")),
        ('{"port": ', ("not JSON",)),
        ("[1, 2]", ("must be a JSON object",)),
    ],
)
def test_a_wrong_config_file_is_one_line_and_status_2(
    content: str, needles: tuple[str, ...], tmp_path: Path
) -> None:
    path = tmp_path / "relay.json"
    path.write_text(content)
    done = relay_cmd("control", "--config", str(path), "--data-dir", str(tmp_path / "data"))
    one_line(done, 2, f"config file {path}", *needles)


def test_the_config_file_reaches_every_setting_and_flags_win(tmp_path: Path) -> None:
    from relay.control.cli import _parser, build_config

    path = tmp_path / "relay.json"
    path.write_text(
        json.dumps({"heartbeat_interval": 1, "relay_extra_args": ["--idle-timeout", "30"], "port": 7801})
    )
    args = _parser("relay control", False).parse_args(["--config", str(path), "--port", "7802"])
    config = build_config(
        args, False, environ={"RELAY_CONTROL_PORT": "7803", "RELAY_HEARTBEAT_INTERVAL": "3"}
    )
    assert (config.port, config.heartbeat_interval, config.relay_extra_args) == (
        7802,
        3.0,
        ("--idle-timeout", "30"),
    )


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        ([], {}, ("--room-key (or RELAY_ROOM_KEY) is required",)),
        (["--room-key", "short"], {}, ("--room-key", "base64url of 32 bytes")),
        (["--room-key", KEY, "--port", "99999"], {}, ("--port='99999'", "from 0 to 65535")),
        ([], {"RELAY_ROOM_KEY": KEY, "RELAY_PORT": "abc"}, ("RELAY_PORT='abc'", "whole number")),
        ([], {"RELAY_ROOM_KEY": KEY, "RELAY_CAPS": "bogus"}, ("RELAY_CAPS='bogus'", "one of soft, cgroup")),
        ([], {"RELAY_ROOM_KEY": KEY, "RELAY_IDLE_TIMEOUT": "-1"}, ("RELAY_IDLE_TIMEOUT='-1'", "number > 0")),
        ([], {"RELAY_ROOM_KEY": KEY, "RELAY_HEARTBEAT_INTERVAL": "fast"}, ("RELAY_HEARTBEAT_INTERVAL",)),
        (["--room-key", KEY, "--tier", "huge"], {}, ("--tier='huge'", "realtime1.nano")),
    ],
)
def test_relay_serve_refuses_a_wrong_setting_in_one_line(
    args: list[str], env: dict[str, str], needles: tuple[str, ...]
) -> None:
    line = one_line(relay_cmd("serve", *args, env=clean_env(**env)), 2, "relay serve: ", *needles)
    assert KEY not in line  # a secret is never echoed


def test_the_command_itself() -> None:
    done = relay_cmd("bogus")
    one_line(done, 2, "unknown command 'bogus'", "dev, control, serve, token")
    done = relay_cmd("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"relay {relay.__version__}")
    assert relay_cmd("--help").returncode == 0
    assert relay_cmd().returncode == 2


# --- relay token ---------------------------------------------------------------------------------


def test_relay_token_refuses_a_bad_ttl_and_a_missing_key(tmp_path: Path) -> None:
    one_line(relay_cmd("token", "--user", "a", "--ttl", "-5"), 2, "--ttl='-5'", "whole number >= 1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = one_line(relay_cmd("token", "--user", "a", cwd=elsewhere), 2, "no signing key at")
    assert str(elsewhere / ".relay" / "signing.key") in line and "--data-dir" in line
    assert not (elsewhere / ".relay").exists()  # it made no key of its own (nobody would accept it)


def test_relay_token_finds_the_key_where_the_control_plane_does(tmp_path: Path) -> None:
    """From another folder, RELAY_DATA_DIR or the config file's data_dir lead to the same key."""
    from relay.control.auth import USER_ISSUER, file_setting, load_signing_key
    from relay.protocol import tokens

    data = tmp_path / "cp-data"
    data.mkdir()
    public = tokens.public_key_to_text(load_signing_key(file_setting(data)).public_key())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "relay.json"
    config.write_text(json.dumps({"data_dir": str(data)}))
    for args, env in (
        (["--data-dir", str(data)], clean_env()),
        ([], clean_env(RELAY_DATA_DIR=str(data))),
        (["--config", str(config)], clean_env()),
    ):
        done = relay_cmd("token", "--user", "u", "--ttl", "60", *args, env=env, cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        token = done.stdout.splitlines()[-1]
        claims = tokens.verify(tokens.public_key_from_text(public), token, "u", time.time(), USER_ISSUER)
        assert claims.sub == "u"


# --- OS errors: exit 1, one line ------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port with a TCP listener and a UDP socket on it (the relay binds both)."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        yield port


def test_ports_in_use_are_one_line_and_status_1(taken_port: int, tmp_path: Path) -> None:
    port = str(taken_port)
    one_line(
        relay_cmd("serve", "--room-key", KEY, "--port", port),
        1,
        f"relay serve: cannot listen on 127.0.0.1:{port} (udp and tcp): address already in use",
    )
    one_line(
        relay_cmd("serve", "--room-key", KEY, "--port", "0", "--admin-port", port),
        1,
        f"cannot listen on 127.0.0.1:{port} (the admin port): address already in use",
    )
    one_line(
        relay_cmd("control", "--port", port, "--data-dir", str(tmp_path / "d")),
        1,
        f"relay control: cannot listen on 127.0.0.1:{port}: address already in use",
        "--port",
    )
    one_line(
        relay_cmd("serve", "--room-key", KEY, "--host", "192.0.2.1", "--port", "0"),
        1,
        "cannot listen on 192.0.2.1:0",
        "not one of this machine's",
    )


def test_a_data_dir_that_cannot_be_made_is_one_line_and_status_1() -> None:
    one_line(
        relay_cmd("control", "--port", "0", "--data-dir", "/proc/no/such"), 1, "cannot start", "/proc/no"
    )


# --- logs ------------------------------------------------------------------------------------------


def test_relay_serve_logs_json_lines_and_says_where_it_listens_once() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--admin-port", "0"],
        cwd=ROOT,
        env=clean_env(RELAY_ROOM_KEY=KEY, RELAY_PORT="0", RELAY_IDLE_TIMEOUT="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=20)  # it closes itself after its idle timeout (the variable)
    assert proc.returncode == 0 and out == "", (out, err)
    records = [json.loads(line) for line in err.splitlines()]
    listening = [r for r in records if "listening" in r["message"]]
    assert len(listening) == 1, err
    assert re.fullmatch(
        r"relay listening udp\+ws 127\.0\.0\.1:\d+ admin 127\.0\.0\.1:\d+", listening[0]["message"]
    )
    assert listening[0]["port"] > 0 and listening[0]["admin_port"] > 0
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("idle" in r["message"] for r in records)  # RELAY_IDLE_TIMEOUT was honoured


def test_log_format_text() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--log-format", "text", "--idle-timeout", "0.5"],
        cwd=ROOT,
        env=clean_env(RELAY_ROOM_KEY=KEY),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert "INFO relay.server relay listening udp+ws" in proc.stderr and "{" not in proc.stderr


def test_relay_dev_logs_json_and_serves_healthz_and_readyz(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "dev", "--port", "0", "--warm-relays", "0"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().split(" on ", 1)[1].split()[0]
        health = httpx.get(url + "/healthz", timeout=5)
        ready = httpx.get(url + "/readyz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert health.json()["component"] == ready.json()["component"] == "control-plane"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    records = [json.loads(line) for line in err.splitlines()]
    assert sum("listening" in r["message"] for r in records) == 1, err


# --- help and docs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["dev", "control", "serve", "token"])
def test_help_gives_every_flag_a_default_and_speaks_to_users(command: str) -> None:
    done = relay_cmd(command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for internal in (".py", "dispatches", "dataclass", "ControlConfig", "RelayLaunch", "field"):
        assert internal not in text, internal
    if command == "token":
        for flag in ("--ttl", "--data-dir"):
            assert re.search(rf"{flag} \S+ [^-]*default", text), flag
        return
    from relay.agent.launch import _parser as serve_parser
    from relay.control.cli import _parser as control_parser

    parser = serve_parser() if command == "serve" else control_parser(f"relay {command}", command == "dev")
    surface = SERVE if command == "serve" else CONTROL
    for action in parser._actions:
        if action.dest in surface.fields:
            assert "default:" in (action.help or ""), action.option_strings
            assert action.option_strings[0] in text and surface.env_name(action.dest) in text
    assert {a.dest for a in parser._actions} >= set(surface.fields)


def test_operations_md_holds_the_settings_tables_as_the_code_writes_them() -> None:
    text = OPERATIONS.read_text()
    for name in tables():
        assert f"<!-- settings: {name} -->" in text, name
    assert rewrite(text) == text, "docs/operations.md's settings tables are stale: run `python -m relay.docs`"
    # and so every setting is there, with its default and variable
    for surface in (CONTROL, SERVE):
        for name in surface.fields:
            assert f"`{surface.env_name(name)}`" in text, name


def test_the_postgresql_store_is_a_setting_like_any_other() -> None:
    """--store / RELAY_STORE_URL take a PostgreSQL URL (several nodes), checked with the rest."""
    from relay.control.cli import _parser, build_config

    def config(argv: list[str], environ: dict[str, str]) -> tuple[object, ...]:
        c = build_config(_parser("relay control", False).parse_args(argv), False, environ)
        return c.store_url, c.node_id, c.store_pool_size

    url = "postgresql://relay:secret@db:5432/relay"
    assert config(["--store", url, "--node-id", "a", "--store-pool-size", "4"], {}) == (url, "a", 4)
    assert config([], {"RELAY_STORE_URL": url, "RELAY_NODE_ID": "b"}) == (url, "b", 10)
    line = one_line(
        relay_cmd("control", "--store", url, "--store-pool-size", "0"), 2, "--store-pool-size='0'"
    )
    assert "secret" not in line


def test_a_port_without_the_privilege_is_said_so() -> None:
    """(As root, binding port 80 succeeds, so this checks the wording the command prints.)"""
    import errno

    from relay.settings import ListenError, os_error

    exc = ListenError(PermissionError(errno.EACCES, "Permission denied"), "0.0.0.0:80")
    line = os_error(exc, f"cannot listen on {exc.where}", "choose another with --port")
    assert line == (
        "cannot listen on 0.0.0.0:80: permission denied "
        "(ports below 1024 need privileges; choose another with --port)"
    )
