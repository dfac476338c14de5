"""deploy/prometheus and deploy/grafana with the real Prometheus and promtool (Debian's
`prometheus` package): the rules check and their unit tests pass, and a Prometheus of the test's
own (a free loopback port, its own config and data dir) scrapes `relay dev` and two of its relays
through the control plane's file_sd list; after a short load every dashboard panel's query
returns data. Without the binaries these tests fail under CI (.ci/run installs them) and skip,
saying why, elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

import relay.client as rc
from loadtest.controlplane import free_port
from relay.control.config import ControlConfig
from tests.control.helpers import (
    create_namespace,
    login,
    ready_room,
    wait_for,
)
from tests.deploy.conftest import stop_process
from tests.deploy.helpers import wait_until_answering

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gs2-relay.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RATE_WINDOW = "1m"  # what Grafana's $__rate_interval stands for in the queries here


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"no `{name}` binary (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs it, so CI must have it")
        pytest.skip(why)
    return path


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_alert_rules_check_and_their_unit_tests_pass(tmp_path: Path) -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    broken = tmp_path / "broken.yml"
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "up{job=}"  # promtool can fail: a bad expression
    broken.write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_prometheus_configs_check(tmp_path: Path) -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = promtool("check", "config", "prometheus-kubernetes.yml")
    if "kubernetes_sd_configs not found" in checked.stdout + checked.stderr:
        # Debian builds Prometheus without the Kubernetes service discovery: check the rest (the
        # relabelling, the rule files) with the discovery swapped for a static target.
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
        roles = []
        for job in config["scrape_configs"]:
            roles.append(job.pop("kubernetes_sd_configs")[0]["role"])
            job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
            # promtool wants the service account's files (a pod's) to be there
            for section, key in (("tls_config", "ca_file"), ("authorization", "credentials_file")):
                if key in job.get(section, {}):
                    stand_in = tmp_path / Path(job[section][key]).name
                    stand_in.write_text("stand-in\n")
                    job[section][key] = str(stand_in)
        assert roles == ["pod", "node"]  # the pods that ask for it; cAdvisor on every node
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        swapped = tmp_path / "prometheus-kubernetes.yml"
        swapped.write_text(yaml.safe_dump(config))
        checked = promtool("check", "config", str(swapped))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_WINDOW))
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboard_is_provisioned_and_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for subject in ("rooms", "players", "messages in", "messages out", "drops", "authentication",
                    "provisioning", "cpu", "memory", "api requests", "api errors"):  # fmt: skip
        assert subject in titles


def scrape_config(control_url: str, data: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, pointed at this test's control plane and data dir."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config = copy.deepcopy(config)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["gs2-relay-control"]["static_configs"] = [{"targets": [control_url.removeprefix("http://")]}]
    (files,) = jobs["gs2-relays"]["file_sd_configs"]
    # the compose file mounts the control plane's data dir at /relay-data
    targets = ControlConfig(data_dir=Path("/relay-data")).prometheus_targets_path
    assert files["files"] == [str(targets)]
    files["files"] = [str(ControlConfig(data_dir=data).prometheus_targets_path)]
    files["refresh_interval"] = "1s"
    return config


@pytest.fixture
async def prometheus(relay_dev: tuple[str, Path], tmp_path: Path) -> AsyncIterator[str]:
    binary = tool("prometheus")
    url, data = relay_dev
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(url, data)))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_answering(base + "/-/ready")
        yield base
    finally:
        await stop_process(proc)


async def query(http: httpx.AsyncClient, base: str, expr: str) -> list[dict[str, Any]]:
    r = await http.get(base + "/api/v1/query", params={"query": expr})
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


async def up_targets(http: httpx.AsyncClient, base: str, job: str) -> int:
    r = await http.get(base + "/api/v1/targets", params={"state": "active"})
    return sum(
        1 for t in r.json()["data"]["activeTargets"] if t["labels"]["job"] == job and t["health"] == "up"
    )


async def targets_up(http: httpx.AsyncClient, base: str, job: str, count: int) -> None:
    """Waits until exactly `count` targets of the job are up (and no more)."""

    async def reached() -> bool:
        return await up_targets(http, base, job) == count

    await wait_for(reached, timeout=20)


class Scraped(NamedTuple):
    empty: list[tuple[str, str]]
    """The panels whose query returns nothing."""
    in_by_transport: dict[str, float]
    """relay_messages_in_total's increase by transport."""
    drops: list[dict[str, Any]]
    """The short-datagram drops' series."""

    def complete(self) -> bool:
        by_transport, drops = self.in_by_transport, self.drops
        return (
            not self.empty
            and by_transport.get("udp", 0) > 0
            and by_transport.get("ws", 0) > 0
            and bool(drops)
            and float(drops[0]["value"][1]) >= 1
        )


async def scraped_so_far(http: httpx.AsyncClient, base: str, queries: list[tuple[str, str]]) -> Scraped:
    empty = [(title, expr) for title, expr in queries if not await query(http, base, expr)]
    in_by_transport = {
        r["metric"]["transport"]: float(r["value"][1])
        for r in await query(
            http, base, f"sum by (transport) (increase(relay_messages_in_total[{RATE_WINDOW}]))"
        )
    }
    drops = await query(http, base, 'relay_dropped_total{reason="short"}')
    return Scraped(empty, in_by_transport, drops)


async def test_live_prometheus_scrapes_relay_dev_and_every_panel_has_data(
    relay_dev: tuple[str, Path], prometheus: str
) -> None:
    url, data = relay_dev
    async with httpx.AsyncClient(base_url=url, timeout=10) as http, httpx.AsyncClient(timeout=10) as prom:
        # Prometheus applies new targets every 5 s (its discovery's fixed pace): the rooms are made
        # first, so the control plane and the relays come up in one round, not one after the other
        h = await login(http)
        await create_namespace(http, h, "ns1")
        rooms = []
        for name in ("room1", "room2"):
            assert (await http.post("/realtime/ns1/room", json={"name": name}, headers=h)).status_code == 200
        for name in ("room1", "room2"):
            rooms.append(await ready_room(http, h, "ns1", name))
        assert (await http.get("/realtime/ns1/room/missing", headers=h)).status_code == 404  # an API error

        # the relays appear through the file_sd list, not by any configuration of Prometheus
        listing = ControlConfig(data_dir=data).prometheus_targets_path

        def listed() -> list[str]:
            return sorted(g["labels"]["gs2_room"] for g in json.loads(listing.read_text()))

        await wait_for(lambda: listed() == ["room1", "room2"], timeout=5)
        await targets_up(prom, prometheus, "gs2-relay-control", 1)
        await targets_up(prom, prometheus, "gs2-relays", 2)

        # a short load: both transports, and one datagram too short to be a packet (a drop)
        clients = []
        for room, transports in zip(rooms, (("udp", "ws"), ("udp", "udp")), strict=True):
            for i, transport in enumerate(transports):
                clients.append(
                    await rc.connect(
                        room["ipAddress"],
                        room["port"],
                        room["encryptionKey"],
                        f"u{i}",
                        transport=transport,
                        timeout=5,
                    )
                )
        for _ in range(30):
            for client in clients:
                client.send(b"x" * 32)
            await asyncio.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
            garbage.sendto(b"\x01", (rooms[0]["ipAddress"], rooms[0]["port"]))
        queries = panel_queries()
        assert len(queries) >= 18
        seen: list[Scraped] = []

        async def scraped() -> bool:
            seen.append(await scraped_so_far(prom, prometheus, queries))
            return seen[-1].complete()

        # a few scrapes of all that (one a second): what is asserted below, once Prometheus has it
        with contextlib.suppress(TimeoutError):
            await wait_for(scraped, timeout=20, interval=0.25)
        empty, in_by_transport, drops = seen[-1]
        assert empty == [], f"panels without data: {empty}"
        assert in_by_transport["udp"] > 0 and in_by_transport["ws"] > 0
        assert drops and float(drops[0]["value"][1]) >= 1
        caps = await query(prom, prometheus, "relay_tier_memory_bytes")
        assert {float(r["value"][1]) for r in caps} == {64 * 1024 * 1024}

        for client in clients:
            await client.close()
        # a room that ends leaves the list, and Prometheus stops scraping its relay
        assert (await http.delete("/realtime/ns1/room/room2", headers=h)).status_code == 200
        await targets_up(prom, prometheus, "gs2-relays", 1)
