"""RelayLaunch: the one type that writes a relay's command line and environment and reads them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from relay.agent.launch import LAUNCH_ENV, LaunchError, RelayLaunch, room_of
from relay.control.provisioner import LocalProvisioner, RelayRequest
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig


def a_launch() -> RelayLaunch:
    return RelayLaunch(
        relay=RelayConfig(
            room_key=generate_room_key(),
            host="0.0.0.0",
            port=7801,
            admin_port=0,
            max_players=8,
            idle_timeout=30.5,
            token_public_key="-" + "A" * 42,
            tls_cert="/etc/relay tls/cert.pem",  # a text setting goes as it is, spaces and all
            tls_key="/etc/relay tls/key.pem",
        ),
        control_url="http://127.0.0.1:7700/internal",
        namespace="ns",
        room="Lobby 1",
        agent_secret="-s3cret",
        advertise_host="203.0.113.7",
        heartbeat_interval=0.5,
        idle_heartbeat_interval=12.0,
        tier="realtime1.nano",
        caps="cgroup",
        log_level="warning",
    )


def test_what_is_written_reads_back_the_same() -> None:
    launch = a_launch()
    assert RelayLaunch.parse(launch.argv(), launch.env()) == launch
    minimal = RelayLaunch(RelayConfig(room_key=generate_room_key()))
    assert RelayLaunch.parse(minimal.argv(), minimal.env()) == minimal
    assert "--admin-host" not in minimal.argv()  # defaults are not written
    elsewhere = RelayLaunch(RelayConfig(room_key=generate_room_key(), admin_host="0.0.0.0"))
    assert RelayLaunch.parse(elsewhere.argv(), elsewhere.env()).relay.admin_host == "0.0.0.0"


def test_secrets_travel_in_the_environment_only() -> None:
    launch = a_launch()
    argv = " ".join(launch.argv())
    assert launch.relay.room_key not in argv and "-s3cret" not in argv
    assert set(launch.env()) == {"RELAY_ROOM_KEY", "RELAY_AGENT_SECRET"}
    assert set(launch.env()) <= set(LAUNCH_ENV)


def test_secret_values_that_begin_with_a_dash() -> None:
    """base64url begins with "-" one time in 64; argparse alone would read such a key as a flag."""
    key = "-" + generate_room_key()[1:]
    launch = RelayLaunch.parse(
        ["--room-key", key, "--agent-secret", "-s3cret", "--port", "0", "--tier", "realtime1.nano"], {}
    )
    assert (launch.relay.room_key, launch.agent_secret, launch.relay.port, launch.tier) == (
        key,
        "-s3cret",
        0,
        "realtime1.nano",
    )
    assert RelayLaunch.parse([f"--room-key={key}"], {}).relay.room_key == key


def test_the_environment_is_read_at_each_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser is built once (in the zygote template) and used by every relay forked from it:
    what comes from the environment must be the relay's own, read when it parses."""
    first, second = generate_room_key(), generate_room_key()
    monkeypatch.setenv("RELAY_ROOM_KEY", first)
    monkeypatch.setenv("RELAY_TIER", "realtime1.nano")
    monkeypatch.setenv("RELAY_CAPS", "cgroup")
    monkeypatch.setenv("RELAY_CONTROL_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("RELAY_HEARTBEAT_INTERVAL", "0.25")
    before = RelayLaunch.parse(["--namespace", "n", "--room", "r"])
    monkeypatch.setenv("RELAY_ROOM_KEY", second)
    for name in ("RELAY_TIER", "RELAY_CAPS", "RELAY_CONTROL_URL", "RELAY_HEARTBEAT_INTERVAL"):
        monkeypatch.delenv(name)
    after = RelayLaunch.parse([])
    assert (before.relay.room_key, before.tier, before.caps, before.control_url) == (
        first,
        "realtime1.nano",
        "cgroup",
        "http://127.0.0.1:1",
    )
    assert before.heartbeat_interval == 0.25
    assert (after.relay.room_key, after.tier, after.caps, after.control_url) == (second, None, "soft", None)
    assert after.heartbeat_interval == 2.0
    assert RelayLaunch.parse(["--room-key", first]).relay.room_key == first  # a flag wins


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        ([], {}, "--room-key"),
        (["--room-key", "short"], {}, "--room-key"),
        (["--tier", "huge"], None, "--tier"),
        (["--caps", "kernel"], None, "--caps"),
        (["--port", "http"], None, "--port"),
        (["--max-players", "many"], None, "--max-players"),
        (
            ["--room-key", generate_room_key()],
            {"RELAY_HEARTBEAT_INTERVAL": "fast"},
            "RELAY_HEARTBEAT_INTERVAL",
        ),
        (["--control-url", "http://x/internal"], None, "--control-url"),  # no namespace and room
        # a URL the agent cannot use fails here, before the relay binds its port
        (["--control-url", "ftp://x/internal", "--namespace", "n", "--room", "r"], None, "--control-url"),
        (["--control-url", "http://x:port/", "--namespace", "n", "--room", "r"], None, "--control-url"),
        (["--control-url", "x/internal", "--namespace", "n", "--room", "r"], None, "--control-url"),
        (["--bogus"], None, "--bogus"),
    ],
)
def test_a_bad_launch_names_what_is_wrong(argv: list[str], env: dict[str, str] | None, names: str) -> None:
    environ = {"RELAY_ROOM_KEY": generate_room_key()} if env is None else env
    with pytest.raises(LaunchError, match=names):
        RelayLaunch.parse(argv, environ)


def test_the_agent_config_comes_from_the_launch() -> None:
    launch = a_launch()
    agent = launch.agent()
    assert agent is not None
    assert (agent.namespace, agent.room, agent.agent_secret, agent.heartbeat_interval) == (
        "ns",
        "Lobby 1",
        "-s3cret",
        0.5,
    )
    assert replace(launch, control_url=None).agent() is None


def test_switches_are_written_and_read_as_flag_pairs() -> None:
    """A bool setting (gs2_clients) is --name / --no-name: the default is not written, the other
    value is, and both read back; the control plane's setting reaches every local relay."""
    off = RelayLaunch(RelayConfig(room_key=generate_room_key(), gs2_clients=False))
    assert "--no-gs2-clients" in off.argv()
    assert RelayLaunch.parse(off.argv(), off.env()) == off
    on = replace(off, relay=replace(off.relay, gs2_clients=True))
    assert not [a for a in on.argv() if "gs2" in a]
    assert RelayLaunch.parse(["--gs2-clients"], on.env()) == on
    for gs2_clients, extra, expected in (
        (True, (), True),
        (False, (), False),
        (True, ("--no-gs2-clients",), False),
    ):
        request = RelayRequest(
            "ns",
            "r",
            "i1",
            generate_room_key(),
            "secret",
            "http://127.0.0.1:1/internal",
            1.0,
            30.0,
            gs2_clients=gs2_clients,
        )
        provisioner = LocalProvisioner(("relay",), extra_args=extra)
        assert provisioner.launch(request).relay.gs2_clients is expected
        assert ("--no-gs2-clients" in provisioner.argv(request)) is not expected


def test_room_of_a_command_line() -> None:
    assert room_of(a_launch().argv()) == ("ns", "Lobby 1")
    assert room_of(["serve", "--room=r", "--namespace=n"]) == ("n", "r")
    assert room_of(["serve", "--standby"]) == (None, None)


def test_relay_serve_refuses_a_bad_launch_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--tier", "huge"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"RELAY_ROOM_KEY": generate_room_key(), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "--tier" in result.stderr


@pytest.mark.parametrize("name", ["-x", "-h", "--port", "-"])
def test_names_that_begin_with_a_dash(name: str) -> None:
    """GS2 names may begin with "-": a room named "-x" never got a relay (`--room -x` was a flag
    without a value: exit 2), and one named "-h" got `relay serve`'s help (exit 0)."""
    launch = replace(a_launch(), namespace=name, room=name)
    assert RelayLaunch.parse(launch.argv(), launch.env()) == launch
    if name == "-h":  # a setting error after it (the port) shows the name was read as a name
        run = subprocess.run(
            [sys.executable, "-m", "relay.cli", "serve", "--room", "-h", "--port", "99999"],
            env={"RELAY_ROOM_KEY": generate_room_key(), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (run.returncode, run.stdout) == (2, ""), run.stdout + run.stderr
        assert "port" in run.stderr


def test_an_empty_name_reads_back_as_given() -> None:
    """Found by the relay_launch fuzz target: `--room ""` was read as an empty name, written back
    as none at all, and read again as unset."""
    launch = replace(a_launch(), control_url=None, room="", namespace="")  # names without a control plane
    assert RelayLaunch.parse(launch.argv(), launch.env()) == launch


def test_a_relay_with_a_tier_paces_within_the_tiers_cpu_unless_told_otherwise() -> None:
    key = ["--room-key", generate_room_key()]
    assert RelayLaunch.parse([*key, "--tier", "realtime1.nano"]).room_config().cpu_budget == 0.125
    assert (
        RelayLaunch.parse([*key, "--tier", "realtime1.nano", "--cpu-budget", "0"]).room_config().cpu_budget
        == 0
    )
    assert RelayLaunch.parse(key).room_config().cpu_budget is None  # no tier: no pacing
    from_env = RelayLaunch.parse(key, {"RELAY_TIER": "realtime1.nano"})  # as a capped spawner says it
    assert from_env.room_config().cpu_budget == 0.125
