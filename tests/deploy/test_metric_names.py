"""Every metric and label that deploy/'s alert rules, their unit tests and the Grafana dashboard
name is one that the code exports, checked against a real `relay dev`'s control plane and one of
its relays scraped here, on both deployments deploy/prometheus configures:

- one machine (prometheus.yml): the control plane's job, and the relays' job labelled by the
  control plane's file_sd list;
- Kubernetes (prometheus-kubernetes.yml): the pods' job renamed by their component label (the
  manifests' own labels), each relay labelling its series with its room, and cAdvisor's job for
  the containers' CFS figures, whose metric_relabel_configs must keep what the alerts ask.

A misspelt metric or label returns nothing: the live dashboard test (test_prometheus.py) cannot see
it behind `or vector(0)`, an alert with it never fires, and a promtool unit test with invented
series passes. Only `up` (Prometheus') and cAdvisor's container_* come from elsewhere.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay.control.config import ControlConfig
from relay.protocol.constants import CloseReason
from tests.control.helpers import create_namespace, login, ready_room, wait_for
from tests.deploy.helpers import players_talk
from tests.deploy.manifests import load_all
from tests.deploy.promql import Selector, output_labels, read, series

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gs2-relay.json"
K8S = ROOT / "deploy" / "k8s"

TARGET_LABELS = {"job", "instance"}
"""What Prometheus puts on every series it scrapes."""
AGONES_RELAY_LABELS = {"gs2_namespace", "gs2_room"}
"""What a relay under Agones adds to its own series (relay/agent/agones.py: metrics.labels), since
Prometheus cannot learn its room from the pod (docs/agones.md)."""
CADVISOR = {
    name: {"namespace", "pod", "container", "id", "image", "name"}
    for name in ("container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total")
}
"""cAdvisor's series (the kubelet's /metrics/cadvisor) the alerts may use, with their labels."""
FREE_VALUES = {"job", "instance", "pod", "status", "namespace", "container", "gs2_namespace", "gs2_room"}
"""Labels whose values are checked otherwise (job, namespace, container) or not at all (rooms)."""


def exported(text: str) -> dict[str, set[str]]:
    """Series names in a /metrics answer, each with the labels its samples carry. A family with
    no sample yet (a labelled counter before its first count) still names its series."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count"),
    }
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            found.setdefault(family.name + suffix, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@dataclass
class Job:
    """One scrape job of a deployment: the series it brings, each with every label it has there."""

    series: dict[str, set[str]]
    keep: list[dict[str, Any]] = field(default_factory=list)
    """Its metric_relabel_configs: a selector they drop finds nothing."""

    def labels(self, selector: Selector) -> set[str] | None:
        """The labels of the series the selector reads from this job; None: it has none such."""
        if selector.name == "up":
            return set(TARGET_LABELS)
        if selector.name not in self.series or not passes(self.keep, selector):
            return None
        return self.series[selector.name]


def passes(rules: list[dict[str, Any]], selector: Selector) -> bool:
    """Whether metric_relabel_configs' keep/drop rules let the selected series through (labels
    it does not pin by `=` read as empty)."""
    labels = {"__name__": selector.name}
    labels.update({label: value for label, op, value in selector.matchers if op == "="})
    for rule in rules:
        action = rule.get("action", "replace")
        if action not in ("keep", "drop"):
            continue
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
        if matched != (action == "keep"):
            return False
    return True


@dataclass
class Use:
    """A query of the alerts or the dashboard, and the labels its text shows."""

    where: str
    expr: str
    shown: set[str] = field(default_factory=set)


def uses() -> list[Use]:
    found = []
    for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            text = " ".join((rule.get("annotations") or {}).values())
            shown = set(re.findall(r"\$labels\.(\w+)", text))
            found.append(Use(f"alerts.yml {rule['alert']}", rule["expr"], shown))
    for test in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]:
        for given in test["input_series"]:
            found.append(Use("alerts_test.yml input", given["series"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            expr = target["expr"].replace("$__rate_interval", "1m")
            found.append(Use(f"dashboard {panel['title']!r}", expr, shown))
    return found


def words_in_the_code() -> set[str]:
    """The string literals of relay/ (and its close reasons' names): where a label value the
    queries name must come from."""
    words = {reason.name.lower() for reason in CloseReason}
    for path in (ROOT / "relay").rglob("*.py"):
        words.update(re.findall(r"""["']([\w.-]+)["']""", path.read_text()))
    return words


def problems(
    queries: Iterable[Use], deployments: dict[str, dict[str, Job]], fleet: dict[str, str]
) -> list[str]:
    """What names a series or label that no deployment's jobs bring (empty: all is there)."""
    words = words_in_the_code()
    found: list[str] = []
    anywhere = {name for jobs in deployments.values() for job in jobs.values() for name in job.series}
    for use in queries:
        query = read(use.expr)
        if use.where.startswith("alerts_test"):
            query.selectors = [series(use.expr)]
        for selector in query.selectors:
            if selector.name not in anywhere | {"up"}:
                found.append(f"{use.where}: no deployment exports {selector.name!r}")
            for label, op, value in selector.matchers:
                alternatives = value.split("|") if op == "=~" else [value]
                if label == "namespace" or label == "container":
                    if op in ("=", "=~") and fleet[label] not in alternatives:
                        found.append(f"{use.where}: {label}={value!r}, the relays' is {fleet[label]!r}")
                elif label not in FREE_VALUES and op in ("=", "=~"):
                    for word in alternatives:
                        if re.fullmatch(r"[\w.-]+", word) and word not in words:
                            found.append(f"{use.where}: {label}={word!r} is nothing the code says")
        selected = [False] * len(query.selectors)  # by a job of some deployment
        for name, jobs in deployments.items():
            readable: set[str] = set()
            complete = True  # every selector has series here: the query means something here
            for index, selector in enumerate(query.selectors):
                wanted = selector.equal("job")
                if wanted is not None and wanted not in jobs:
                    found.append(f"{use.where}: {name} has no job {wanted!r} (its jobs: {sorted(jobs)})")
                    continue
                chosen = [job for job_name, job in jobs.items() if wanted in (None, job_name)]
                sets = [labels for job in chosen if (labels := job.labels(selector)) is not None]
                if not sets:
                    complete = False
                    if selector.name in anywhere and wanted is not None:
                        found.append(
                            f"{use.where}: job {wanted!r} does not export {selector.name!r} ({name})"
                        )
                    continue
                selected[index] = True
                labels = set().union(*sets)
                readable |= labels
                for label, _, _ in selector.matchers:
                    if label not in labels:
                        found.append(f"{use.where}: {selector.name} has no label {label!r} ({name})")
            if not complete and any(
                any(job.labels(s) is not None for job in jobs.values()) for s in query.selectors
            ):
                found.append(f"{use.where}: only part of it has series on {name}")
            if not complete:
                continue  # e.g. cAdvisor's on one machine: the alert is Kubernetes'
            for label in sorted(query.grouping - readable):
                found.append(f"{use.where}: groups by {label!r}, which its series lack ({name})")
            for label in sorted(use.shown - readable):
                found.append(f"{use.where}: shows {label!r}, which its series lack ({name})")
        for selector, has in zip(query.selectors, selected, strict=True):
            if not has and selector.name in anywhere:
                found.append(f"{use.where}: no job keeps {selector.name!r} as it selects it")
        out = output_labels(use.expr)
        for label in sorted(use.shown - out if out is not None else set()):
            found.append(f"{use.where}: shows {label!r}, which its aggregation drops")
    return found


def one_machine(
    control: dict[str, set[str]], relay: dict[str, set[str]], listed: list[dict[str, Any]]
) -> dict[str, Job]:
    """prometheus.yml's jobs: the control plane's static target, the relays' file_sd list."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {}
    room_labels = {label for group in listed for label in group["labels"]}
    for job in config["scrape_configs"]:
        if "static_configs" in job:
            jobs[job["job_name"]] = Job(with_labels(control, TARGET_LABELS))
        else:
            assert "file_sd_configs" in job, job
            jobs[job["job_name"]] = Job(with_labels(relay, TARGET_LABELS | room_labels))
    return jobs


def kubernetes(control: dict[str, set[str]], relay: dict[str, set[str]]) -> dict[str, Job]:
    """prometheus-kubernetes.yml's jobs: the pods' job, named by each pod's component label as
    deploy/k8s labels the control plane and the relays, and cAdvisor's."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    manifests = {(d["kind"], d["metadata"]["name"]): d for p in K8S.glob("*.yaml") for d in load_all(p)}
    component = "app.kubernetes.io/component"
    control_pod = manifests[("Deployment", "gs2-relay-control")]["spec"]["template"]["metadata"]["labels"]
    relay_pod = manifests[("Fleet", "gs2-relay")]["spec"]["template"]["spec"]["template"]["metadata"][
        "labels"
    ]
    jobs: dict[str, Job] = {}
    for job in config["scrape_configs"]:
        (sd,) = job["kubernetes_sd_configs"]
        relabel = job.get("relabel_configs") or []
        added = {r.get("target_label", "__") for r in relabel} - {"job"}
        added = {label for label in added if not label.startswith("__")}
        if sd["role"] == "pod":
            names = {}
            for rule in relabel:
                if rule.get("target_label") == "job":
                    assert rule["source_labels"] == [
                        "__meta_kubernetes_pod_label_app_kubernetes_io_component"
                    ]
                    names[rule["regex"]] = rule["replacement"]
            jobs[names[control_pod[component]]] = Job(with_labels(control, TARGET_LABELS | added))
            jobs[names[relay_pod[component]]] = Job(
                with_labels(relay, TARGET_LABELS | added | AGONES_RELAY_LABELS)
            )
        elif sd["role"] == "node" and "/metrics/cadvisor" in cadvisor_path(job):
            jobs[job["job_name"]] = Job(
                with_labels(CADVISOR, TARGET_LABELS | added), job.get("metric_relabel_configs") or []
            )
    return jobs


def cadvisor_path(job: dict[str, Any]) -> str:
    """The path a node job scrapes: its metrics_path, or what its relabelling makes of it."""
    paths = [job.get("metrics_path", "/metrics")]
    paths += [
        r.get("replacement", "")
        for r in job.get("relabel_configs") or []
        if r.get("target_label") == "__metrics_path__"
    ]
    return " ".join(paths)


def with_labels(series: dict[str, set[str]], labels: set[str]) -> dict[str, set[str]]:
    return {name: own | labels for name, own in series.items()}


def fleet_container() -> dict[str, str]:
    (fleet,) = [d for d in load_all(K8S / "fleet.yaml") if d["kind"] == "Fleet"]
    (container,) = fleet["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    return {"namespace": fleet["metadata"]["namespace"], "container": container["name"]}


async def scrape(
    url: str, data: Path
) -> tuple[dict[str, set[str]], dict[str, set[str]], list[dict[str, Any]]]:
    """What `relay dev` at url exports once it has served a room: a member of each transport,
    a datagram it drops, an API error, the room deleted (so its labelled counters have samples).
    The control plane's series, the relay's, and the control plane's file_sd list."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        h = await login(http)
        await create_namespace(http, h, "ns1")
        assert (await http.post("/realtime/ns1/room", json={"name": "room1"}, headers=h)).status_code == 200
        room = await ready_room(http, h, "ns1", "room1")
        assert (await http.get("/realtime/ns1/room/missing", headers=h)).status_code == 404
        listing = ControlConfig(data_dir=data).prometheus_targets_path

        def targets() -> list[dict[str, Any]]:
            return json.loads(listing.read_text()) if listing.exists() else []

        await wait_for(targets, timeout=5)
        listed = targets()
        (group,) = listed
        alice, bob = await players_talk(room["ipAddress"], room["port"], room["encryptionKey"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
            garbage.sendto(b"\x01", (room["ipAddress"], room["port"]))  # too short: a drop

        async def relay_metrics() -> str | None:
            text = (await http.get(f"http://{group['targets'][0]}/metrics")).text
            return text if "relay_dropped_total{" in text else None

        relay_text = await wait_for(relay_metrics, timeout=5)
        await alice.close()
        await bob.close()
        assert (await http.delete("/realtime/ns1/room/room1", headers=h)).status_code == 200

        async def control_metrics() -> str | None:
            text = (await http.get("/metrics")).text
            return text if "relay_control_rooms_closed_total{" in text else None

        control_text = await wait_for(control_metrics, timeout=10)
    return exported(control_text), exported(relay_text), listed


async def test_alerts_and_dashboard_name_only_what_the_code_exports(relay_dev: tuple[str, Path]) -> None:
    control, relay, listed = await scrape(*relay_dev)
    assert "relay_control_api_requests_total" in control and "relay_messages_in_total" in relay
    deployments = {
        "one machine": one_machine(control, relay, listed),
        "Kubernetes": kubernetes(control, relay),
    }
    queries = uses()
    assert len(queries) > 40
    fleet = fleet_container()
    found = problems(queries, deployments, fleet)
    assert not found, "\n".join(found)

    # ... and it does complain: each of these breaks one name
    def broken(where: str, old: str, new: str) -> list[str]:
        changed = copy.deepcopy(queries)
        use = next(u for u in changed if u.where == where and old in u.expr + " ".join(u.shown))
        use.expr = use.expr.replace(old, new)
        use.shown = {new if s == old else s for s in use.shown}
        return problems(changed, deployments, fleet)

    assert any("'relay_member'" in p for p in broken("dashboard 'Players'", "relay_members", "relay_member"))
    assert any(
        "'transprot'" in p for p in broken("dashboard 'Messages in per transport'", "transport", "transprot")
    )
    assert any("'lots'" in p for p in broken("alerts.yml RelaysLost", '"lost"', '"lots"'))
    assert any("no job" in p for p in broken("dashboard 'Players'", "gs2-relays", "gs2-relay"))
    assert any(
        "does not export" in p
        for p in broken("dashboard 'Players'", 'job="gs2-relays"', 'job="gs2-relay-control"')
    )
    assert any(
        "gs2_incarnation" in p and "Kubernetes" in p
        for p in broken("alerts.yml RelayShedding", "gs2_room", "gs2_incarnation")
    )
    assert any(
        "aggregation drops" in p for p in broken("alerts.yml RelayDropsRising", "sum by (reason)", "sum")
    )
    assert any(
        "shows 'room'" in p for p in broken("dashboard 'Relay CPU against its cap'", "gs2_room", "room")
    )
    assert any(
        "the relays' is 'relay'" in p
        for p in broken("alerts.yml RelayContainerThrottled", '"relay"', '"relays"')
    )
    cadvisor = deployments["Kubernetes"]["gs2-relay-cadvisor"]
    (keep,) = cadvisor.keep
    cadvisor.keep = [{**keep, "regex": keep["regex"].replace("gs2-relay", "default")}]
    assert any("no job keeps" in p for p in problems(queries, deployments, fleet))
