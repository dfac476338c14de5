"""deploy/k8s/: every manifest valid against Kubernetes' OpenAPI schemas and Agones' CRD schemas
(tests/deploy/manifests.py says how and why), and consistent with the code that relies on it:
the tier's caps, the port the relay serves, the RBAC the Agones provisioner's calls need, the
settings the control plane reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import relay
from relay.agent.tiers import NANO
from relay.control.agones_provisioner import ALLOCATION, GAMESERVERS
from relay.control.config import SURFACE as CONTROL_SURFACE
from relay.control.config import ControlConfig
from tests.deploy.manifests import ROOT, errors, load_all

K8S = ROOT / "deploy" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for path in FILES for d in load_all(path)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_manifest_is_valid(path: Path) -> None:
    docs = load_all(path)
    assert docs
    for doc in docs:
        assert errors(doc) == [], f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"


def test_the_validator_refuses_what_the_api_server_would() -> None:
    fleet = objects()[("Fleet", "gs2-relay")]
    deployment = objects()[("Deployment", "gs2-relay-control")]
    broken: list[tuple[dict[str, Any], str]] = []
    bad = copy.deepcopy(fleet)
    bad["spec"]["template"]["spec"]["ports"][0]["protocol"] = "QUIC"
    broken.append((bad, "protocol"))
    bad = copy.deepcopy(fleet)
    bad["spec"]["template"]["spec"]["healthCheck"] = {}  # a misspelt field: pruned, so refused here
    broken.append((bad, "healthCheck"))
    bad = copy.deepcopy(fleet)
    bad["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [1]
    broken.append((bad, "limits.cpu"))
    bad = copy.deepcopy(fleet)
    bad["metadata"]["labels"] = {"tier": 1}
    broken.append((bad, "metadata.labels"))
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["envFrom"] = "gs2"
    broken.append((bad, "envFrom"))
    bad = copy.deepcopy(deployment)
    bad["kind"] = "Deploymnet"
    broken.append((bad, "no schema"))
    for doc, what in broken:
        found = errors(doc)
        assert found and any(what in e for e in found), (what, found)


def relay_pod(fleet: dict[str, Any]) -> dict[str, Any]:
    return fleet["spec"]["template"]["spec"]["template"]


def test_fleet_is_one_tcpudp_port_at_the_nano_tier_with_health_and_a_buffer() -> None:
    found = objects()
    fleet = found[("Fleet", "gs2-relay")]
    gameserver = fleet["spec"]["template"]["spec"]
    assert [(p["containerPort"], p["protocol"]) for p in gameserver["ports"]] == [(7777, "TCPUDP")]
    assert gameserver["ports"][0]["name"] == "default"  # the port relay/agent/agones.py advertises
    assert gameserver["health"]["disabled"] is False
    (container,) = relay_pod(fleet)["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve" and args[args.index("--port") + 1] == "7777"
    assert args[args.index("--tier") + 1] == NANO.name
    caps = {"cpu": f"{round(NANO.cpu * 1000)}m", "memory": f"{NANO.memory_bytes >> 20}Mi"}
    assert container["resources"] == {"requests": caps, "limits": caps}
    for labels in (fleet["metadata"]["labels"], relay_pod(fleet)["metadata"]["labels"]):
        assert labels["realtime.gs2.io/tier"] == NANO.name
        assert labels["app.kubernetes.io/version"] == relay.__version__
    notes = relay_pod(fleet)["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == args[args.index("--admin-port") + 1]
    autoscaler = found[("FleetAutoscaler", "gs2-relay")]
    assert autoscaler["spec"]["fleetName"] == fleet["metadata"]["name"]
    assert autoscaler["spec"]["policy"]["type"] == "Buffer"
    assert autoscaler["spec"]["policy"]["buffer"]["bufferSize"] > 0


def test_control_plane_allocates_from_that_fleet_with_the_rbac_it_needs() -> None:
    found = objects()
    fleet = found[("Fleet", "gs2-relay")]
    deployment = found[("Deployment", "gs2-relay-control")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "control" and args[args.index("--provisioner") + 1] == "agones"
    env = {e["name"]: e for e in container["env"]}
    assert env["RELAY_AGONES_FLEET"]["value"] == fleet["metadata"]["name"]
    assert env["RELAY_AGONES_NAMESPACE"]["value"] == fleet["metadata"]["namespace"]
    assert set(env) <= set(CONTROL_SURFACE.env_names())  # every variable is one the control plane reads
    secret = found[("Secret", "gs2-relay-control")]

    def value(e: dict[str, Any]) -> str:  # a secret's variable has the Secret's value (checked below)
        return e["value"] if "value" in e else secret["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]

    config = ControlConfig.from_env(environ={k: value(e) for k, e in env.items()})
    assert config.agones_fleet == fleet["metadata"]["name"] and config.store_url is not None

    for e in env.values():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert secret["stringData"]["store-url"].startswith("postgresql://")

    account = pod["serviceAccountName"]
    binding = found[("RoleBinding", "gs2-relay-control")]
    assert {"kind": "ServiceAccount", "name": account, "namespace": "gs2-relay"} in binding["subjects"]
    role = found[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {(ALLOCATION[0], ALLOCATION[2], "create")} | {
        (GAMESERVERS[0], GAMESERVERS[2], verb) for verb in ("list", "patch", "delete")
    }
    assert granted == needed  # what agones_provisioner.py calls, nothing more

    service = found[("Service", "gs2-relay-control")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    public = env["RELAY_PUBLIC_URL"]["value"]
    assert (
        public
        == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}"
    )


def test_everything_is_in_the_relay_namespace() -> None:
    for (kind, name), doc in objects().items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "gs2-relay", (kind, name)


def test_each_container_runs_a_command_line_its_command_reads() -> None:
    """The containers' args and variables through the real parsers: a misspelt flag is refused
    there, and a variable the command does not read (the control plane's port is
    RELAY_CONTROL_PORT, not relay serve's RELAY_PORT) would be ignored in the cluster."""
    from relay.agent.launch import ENV_AGONES, LAUNCH_ENV, LaunchError, RelayLaunch
    from relay.control.cli import _parser, build_config

    found = objects()
    fleet = found[("Fleet", "gs2-relay")]
    (relay_container,) = relay_pod(fleet)["spec"]["containers"]
    assert relay_container["args"][0] == "serve"
    assert {e["name"] for e in relay_container.get("env", [])} <= set(LAUNCH_ENV)
    launch = RelayLaunch.parse(relay_container["args"][1:], {ENV_AGONES: "9358"})  # set by Agones
    (game_port,) = fleet["spec"]["template"]["spec"]["ports"]
    assert launch.relay.port == game_port["containerPort"] and launch.relay.host == "0.0.0.0"
    notes = relay_pod(fleet)["metadata"]["annotations"]
    assert launch.relay.admin_host == "0.0.0.0"  # Prometheus reaches it at the pod's address
    assert launch.relay.admin_port == int(notes["prometheus.io/port"])
    assert {
        "name": "metrics",
        "containerPort": launch.relay.admin_port,
        "protocol": "TCP",
    } in relay_container["ports"]
    assert (launch.tier, launch.caps) == (NANO.name, "cgroup")  # the pod's limits are the caps
    with pytest.raises(LaunchError):
        RelayLaunch.parse(["--admin-hots", "0.0.0.0"], {ENV_AGONES: "9358"})

    deployment = found[("Deployment", "gs2-relay-control")]
    (control,) = deployment["spec"]["template"]["spec"]["containers"]
    assert control["args"][0] == "control"
    env = {e["name"]: e.get("value", "from-a-secret") for e in control["env"]}
    assert set(env) <= set(CONTROL_SURFACE.env_names())
    assert "RELAY_PORT" not in CONTROL_SURFACE.env_names()  # the check can fail: relay serve's variable
    env["RELAY_STORE_URL"] = "postgresql://u:p@db:5432/gs2relay"
    config = build_config(_parser("relay control", False).parse_args(control["args"][1:]), False, env)
    (http,) = control["ports"]
    assert (config.host, config.port, config.provisioner) == ("0.0.0.0", http["containerPort"], "agones")
    assert int(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]) == config.port
    for probe in (control["readinessProbe"], control["livenessProbe"]):
        assert probe["httpGet"]["port"] == http["name"]
        assert probe["httpGet"]["path"] in ("/readyz", "/healthz")
