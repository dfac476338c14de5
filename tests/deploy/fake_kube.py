"""A fake Kubernetes API server with Agones installed: the few endpoints the control plane's Agones
provisioner uses, on 127.0.0.1, served as the Kubernetes API and the Agones reference
(tests/data/agones/agones-gameserverallocation-reference.md) document them. No cluster runs here.

    POST   /apis/allocation.agones.dev/v1/namespaces/{ns}/gameserverallocations
           201 with the GameServerAllocation and its status: Allocated (gameServerName, ports,
           address, addresses, nodeName, source, metadata) or, with no Ready GameServer matching,
           UnAllocated (Agones answers a failed allocation as a created one, not as an error);
           422 (a metav1 Status, reason Invalid) for a body Agones would reject
    GET    /apis/agones.dev/v1/namespaces/{ns}/gameservers?labelSelector=   a GameServerList
    PATCH  /apis/agones.dev/v1/namespaces/{ns}/gameservers/{name}   merge-patch+json only
    DELETE /apis/agones.dev/v1/namespaces/{ns}/gameservers/{name}   the object, deletionTimestamp set

Every request needs the kubeconfig's bearer token (401 Status otherwise). A GameServer may be
backed by a FakeSidecar (tests/agent/test_agones.py): it is Ready once its relay called /ready;
an allocation, an annotation patch and a delete reach the relay through that sidecar, as Agones'
controller would; a relay's /shutdown makes its GameServer go, as Agones deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.agent.test_agones import FakeSidecar, valid_qualified_name

TOKEN = "fake-service-account-token"
ALLOCATION_PATH = "/apis/allocation.agones.dev/v1/namespaces/{namespace}/gameserverallocations"
GAMESERVERS_PATH = "/apis/agones.dev/v1/namespaces/{namespace}/gameservers"
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
# What a GameServerAllocation's spec may hold (allocation.agones.dev/v1 GameServerAllocationSpec).
SPEC_FIELDS = {
    "multiClusterSetting",
    "required",
    "preferred",
    "priorities",
    "selectors",
    "scheduling",
    "metadata",
    "counters",
    "lists",
}
SELECTOR_FIELDS = {"matchLabels", "matchExpressions", "gameServerState", "players", "counters", "lists"}


def status(code: int, reason: str, message: str) -> JSONResponse:
    """A metav1 Status, as the API server answers errors."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return JSONResponse(body, status_code=code)


@dataclass
class FakeGameServer:
    name: str
    port: int
    fleet: str = "gs2-relay"
    sidecar: FakeSidecar | None = None
    state: str = "Ready"  # without a sidecar; with one, the sidecar's state until allocated
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    def current_state(self) -> str:
        if self.sidecar is not None and self.state != "Allocated":
            return self.sidecar.state
        return self.state

    def to_json(self, namespace: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": namespace,
            "uid": f"uid-{self.name}",
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"agones.dev/fleet": self.fleet, **self.labels},
            "annotations": dict(self.annotations),
        }
        if self.deleted:
            meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        return {
            "apiVersion": "agones.dev/v1",
            "kind": "GameServer",
            "metadata": meta,
            "spec": {"ports": [{"name": "default", "portPolicy": "Dynamic", "containerPort": 7777}]},
            "status": {
                "state": self.current_state(),
                "address": "127.0.0.1",
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "ports": [{"name": "default", "port": self.port}],
                "nodeName": "node-1",
            },
        }


class FakeKube:
    def __init__(self, namespace: str = "gs2") -> None:
        self.namespace = namespace
        self.gameservers: dict[str, FakeGameServer] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path with query, body)
        self.app = self._build()
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, gameserver: FakeGameServer) -> FakeGameServer:
        self.gameservers[gameserver.name] = gameserver
        return gameserver

    def allocations(self) -> list[dict[str, Any]]:
        return [b for m, p, b in self.requests if m == "POST" and "gameserverallocations" in p]

    def kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig naming this server and the token it wants (JSON is YAML)."""
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "relay-control", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "relay-control"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    # --- what Agones does -------------------------------------------------------------------------

    def _live(self) -> list[FakeGameServer]:
        """GameServers whose relay called /shutdown are gone, as Agones deletes them."""
        for name, gs in list(self.gameservers.items()):
            if gs.current_state() == "Shutdown" or (
                gs.sidecar is not None and gs.sidecar.state == "Shutdown"
            ):
                del self.gameservers[name]
        return list(self.gameservers.values())

    async def _allocate(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body["spec"]
        meta = spec.get("metadata") or {}
        chosen = None
        for selector in spec.get("selectors") or [spec.get("required") or {}]:
            want = selector.get("gameServerState", "Ready")
            for gs in self._live():
                labels = {"agones.dev/fleet": gs.fleet, **gs.labels}
                matches = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
                if matches and not gs.deleted and gs.current_state() == want:
                    chosen = gs
                    break
            if chosen is not None:
                break
        answer = {
            "kind": "GameServerAllocation",
            "apiVersion": "allocation.agones.dev/v1",
            "metadata": {"namespace": self.namespace, "creationTimestamp": None},
            "spec": {**copy.deepcopy(spec), "scheduling": spec.get("scheduling", "Packed")},
            "status": {"state": "UnAllocated", "gameServerName": ""},
        }
        if chosen is None:
            return answer
        chosen.state = "Allocated"
        chosen.labels.update(meta.get("labels") or {})
        chosen.annotations.update(meta.get("annotations") or {})
        if chosen.sidecar is not None:
            await chosen.sidecar.allocate(dict(meta.get("annotations") or {}))
        gs = chosen.to_json(self.namespace)
        answer["metadata"]["name"] = chosen.name
        answer["status"] = {
            "state": "Allocated",
            "gameServerName": chosen.name,
            "ports": gs["status"]["ports"],
            "address": gs["status"]["address"],
            "addresses": gs["status"]["addresses"],
            "nodeName": gs["status"]["nodeName"],
            "source": "local",
            "metadata": {"labels": gs["metadata"]["labels"], "annotations": gs["metadata"]["annotations"]},
        }
        return answer

    # --- HTTP ------------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def record_and_authenticate(request: Request, call_next: Any) -> Any:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return status(400, "BadRequest", "the body is not JSON")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            self.requests.append((request.method, target, body))
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return status(401, "Unauthorized", "Unauthorized")
            return await call_next(request)

        @app.post(ALLOCATION_PATH)
        async def allocate(namespace: str, request: Request) -> JSONResponse:
            body = await request.json()
            problem = invalid_allocation(body)
            if problem is not None:
                return status(422, "Invalid", f"GameServerAllocation is invalid: {problem}")
            if namespace != self.namespace:
                return JSONResponse({**body, "status": {"state": "UnAllocated"}}, status_code=201)
            return JSONResponse(await self._allocate(body), status_code=201)

        @app.get(GAMESERVERS_PATH)
        async def list_gameservers(namespace: str, labelSelector: str = "") -> JSONResponse:
            items = [gs.to_json(namespace) for gs in self._live()] if namespace == self.namespace else []
            for term in filter(None, labelSelector.split(",")):
                key, _, value = term.partition("=")
                items = [i for i in items if key in i["metadata"]["labels"]]
                if value:
                    items = [i for i in items if i["metadata"]["labels"][key] == value]
            body = {"apiVersion": "agones.dev/v1", "kind": "GameServerList", "metadata": {}, "items": items}
            return JSONResponse(body)

        @app.patch(GAMESERVERS_PATH + "/{name}")
        async def patch_gameserver(namespace: str, name: str, request: Request) -> JSONResponse:
            gs = self.gameservers.get(name) if namespace == self.namespace else None
            if request.headers.get("content-type") != "application/merge-patch+json":
                return status(415, "UnsupportedMediaType", "this test wants a merge patch")
            if gs is None:
                return status(404, "NotFound", f'gameservers.agones.dev "{name}" not found')
            patch = await request.json()
            notes = (patch.get("metadata") or {}).get("annotations") or {}
            if set(patch) - {"metadata"} or set(patch.get("metadata") or {}) - {"annotations"}:
                return status(422, "Invalid", "only metadata.annotations may be patched here")
            if not all(valid_qualified_name(k) and isinstance(v, str) for k, v in notes.items()):
                return status(422, "Invalid", "metadata.annotations: Invalid value")
            gs.annotations.update(notes)
            if gs.sidecar is not None:
                await gs.sidecar.update(lambda g: g["object_meta"]["annotations"].update(notes))
            return JSONResponse(gs.to_json(namespace))

        @app.delete(GAMESERVERS_PATH + "/{name}")
        async def delete_gameserver(namespace: str, name: str) -> JSONResponse:
            gs = self.gameservers.get(name) if namespace == self.namespace else None
            if gs is None:
                return status(404, "NotFound", f'gameservers.agones.dev "{name}" not found')
            gs.deleted = True
            body = gs.to_json(namespace)
            del self.gameservers[name]
            if gs.sidecar is not None:
                await gs.sidecar.delete()
            return JSONResponse(body)

        return app


def invalid_allocation(body: Any) -> str | None:
    """Why Agones would refuse this GameServerAllocation (422), or None."""
    if not isinstance(body, dict):
        return "not an object"
    if body.get("apiVersion") != "allocation.agones.dev/v1" or body.get("kind") != "GameServerAllocation":
        return "apiVersion/kind"
    spec = body.get("spec")
    if not isinstance(spec, dict) or set(spec) - SPEC_FIELDS:
        return f"spec: unknown fields {sorted(set(spec or {}) - SPEC_FIELDS)}"
    if spec.get("scheduling", "Packed") not in ("Packed", "Distributed"):
        return "spec.scheduling"
    for selector in spec.get("selectors") or []:
        if not isinstance(selector, dict) or set(selector) - SELECTOR_FIELDS:
            return "spec.selectors: unknown fields"
        if selector.get("gameServerState", "Ready") not in ("Ready", "Allocated"):
            return "spec.selectors.gameServerState"
    meta = spec.get("metadata") or {}
    if set(meta) - {"labels", "annotations"}:
        return "spec.metadata: unknown fields"
    for key, value in (meta.get("labels") or {}).items():
        if not (valid_qualified_name(key) and isinstance(value, str) and _LABEL_VALUE.match(value)):
            return f"spec.metadata.labels: {key}"
    for key, value in (meta.get("annotations") or {}).items():
        if not (valid_qualified_name(key) and isinstance(value, str)):
            return f"spec.metadata.annotations: {key}"
    return None
