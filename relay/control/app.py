"""The control plane assembled: store, provisioner, the realtime service (namespaces, rooms, the
agents' API over one shared state), gateway, HTTP app and its server.

    cp = ControlPlane(ControlConfig(port=0, data_dir=tmp))
    await cp.start()          # binds, recovers rooms, serves; cp.url, cp.port
    ...
    await cp.stop()

`async with ControlPlane(config) as cp:` does the same. Each instance has its own metrics
registry, so several can run in one process (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import relay
from relay.agent.tiers import Tier, get_tier, group_tier
from relay.control.agent_api import AgentApi
from relay.control.api import build_routes
from relay.control.auth import Authority, Setting, load_or_create_credentials, load_signing_key
from relay.control.config import ControlConfig
from relay.control.demo_api import mount_demo
from relay.control.errors import ApiError, ErrorItem, error_response
from relay.control.gateway import GATEWAY_MAX_MESSAGE, Gateway
from relay.control.http_deadline import with_request_deadline
from relay.control.metrics import ControlMetrics
from relay.control.namespaces import Namespaces
from relay.control.oplog import OperationLog
from relay.control.provisioner import (
    LocalProvisioner,
    NullProvisioner,
    Provisioner,
    Spawner,
    SubprocessSpawner,
)
from relay.control.relay_logs import LogRetention
from relay.control.rooms import Rooms
from relay.control.routing import PathGuard
from relay.control.state import ControlState
from relay.control.store import Store, open_store
from relay.host.capacity import Capacity
from relay.host.capped_spawner import CappedSpawner
from relay.host.group_spawner import GroupSpawner
from relay.host.warm_pool import WarmPool
from relay.host.zygote import ZygoteSpawner, serve_args
from relay.server.tls import RELOAD_CHECK, Certificate
from relay.settings import ListenError, SettingsError

log = logging.getLogger("relay.control")


def resolve_credentials(config: ControlConfig, setting: Setting) -> tuple[str, str]:
    """Flags/env/config file win; otherwise dev credentials generated once and kept where the
    nodes' shared values are (the data dir; a PostgreSQL store)."""
    if config.client_id and config.client_secret:
        return config.client_id, config.client_secret
    return load_or_create_credentials(setting)


def make_provisioner(config: ControlConfig, spawner: Spawner | None = None) -> Provisioner:
    if config.provisioner == "none":
        return NullProvisioner()
    if config.provisioner == "agones":
        # imported only here: the kubernetes client (the `agones` extra) is heavy and optional
        from relay.control.agones_provisioner import AgonesProvisioner

        return AgonesProvisioner(
            namespace=config.agones_namespace,
            fleet=config.agones_fleet,
            kubeconfig=config.agones_kubeconfig,
            allocate_for=config.agones_allocate_for,
        )
    return LocalProvisioner(
        relay_command=config.relay_command,
        relay_host=config.relay_host,
        advertise_host=config.advertise_host,
        extra_args=config.relay_extra_args,
        stop_grace=config.stop_grace,
        log_dir=config.data_dir / "relay-logs",
        spawner=spawner or make_spawner(config),
        log_retention=LogRetention(config.relay_log_keep_seconds, config.relay_log_max_bytes),
        capacity=Capacity(
            max_rooms=config.max_rooms,
            headroom_bytes=int(config.memory_headroom_rooms * get_tier(config.relay_tier).memory_bytes),
        ),
    )


def make_spawner(config: ControlConfig) -> Spawner:
    """How local relays are started (`relay_spawner`), capped per `relay_caps`; several rooms to a
    process with `relay_rooms_per_process` (a group with free seats is the warm relay then)."""
    inner: Spawner = ZygoteSpawner() if config.relay_spawner == "zygote" else SubprocessSpawner()
    rooms = config.relay_rooms_per_process
    tier = get_tier(config.relay_tier)
    capped = _capped(config, inner, group_tier(tier, rooms) if rooms > 1 else tier)
    if rooms > 1:
        return GroupSpawner(capped, rooms, log_path=config.data_dir / "relay-logs" / "groups.log")
    warm = config.relay_spawner == "zygote" and serve_args(config.relay_command) is not None
    if not warm or config.relay_warm_relays == 0:
        return capped  # standbys are this interpreter's `relay serve`; another command gets none
    log_path = config.data_dir / "relay-logs" / "standby.log"
    return WarmPool(capped, config.relay_warm_relays, log_path=log_path)


def _capped(config: ControlConfig, inner: Spawner, tier: Tier) -> Spawner:
    if config.relay_caps == "off":
        return inner
    from relay.host.cgroups import detect

    backend = None if config.relay_caps == "soft" else detect()
    if backend is None and config.relay_caps == "cgroup":
        raise SettingsError(
            "relay_caps is cgroup, but this host has no writable cgroup hierarchy (use auto or soft)"
        )
    return CappedSpawner(inner, tier, backend)


class ControlPlane:
    def __init__(
        self,
        config: ControlConfig,
        provisioner: Provisioner | None = None,
        spawner: Spawner | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self._sock = self._bind()  # first: a port in use is the only thing said (nothing made yet)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or open_store(config)
        self.provisioner = provisioner or make_provisioner(config, spawner)
        self.port: int = self._sock.getsockname()[1]
        connect_host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
        self.certificate: Certificate | None = None  # HTTPS (api_tls_cert)
        if config.api_tls_cert and config.api_tls_key:
            self.certificate = Certificate(
                str(config.api_tls_cert), str(config.api_tls_key), time.monotonic()
            )
        netloc = f"[{connect_host}]" if ":" in connect_host else connect_host  # an IPv6 address
        self.url = f"{'https' if self.certificate else 'http'}://{netloc}:{self.port}"
        public = (config.public_url or self.url).rstrip("/")
        self.internal_url = public + "/internal"
        self.node_id = config.node_id or f"{socket.gethostname()}:{self.port}"
        self.state: ControlState
        self.metrics = ControlMetrics(lambda: self.state.room_counts())
        self.metrics.watch_certificate(self.certificate)
        pool = getattr(self.provisioner, "spawner", None)
        if isinstance(pool, WarmPool):
            self.metrics.watch_warm_pool(pool)
        self.oplog = OperationLog(config.operation_log_path, config.data_dir / "logs")
        self.state = ControlState(
            config, self.store, self.provisioner, self.oplog, self.metrics, self.node_id
        )
        setting = self.state.cluster.setting  # every node signs with one key
        client_id, client_secret = resolve_credentials(config, setting)
        self.authority = Authority(
            client_id,
            client_secret,
            load_signing_key(setting),
            project_token_ttl=config.project_token_ttl,
            user_token_ttl=config.user_token_ttl,
        )
        self.gateway = Gateway(
            self.authority, self.metrics, config.webhook_url, config.gateway_sockets_per_user
        )
        self.rooms = Rooms(self.state, self.authority, self.internal_url)
        self.namespaces = Namespaces(self.state, self.rooms)
        self.agents = AgentApi(self.state, self.rooms, self.gateway)
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on for accepted connections only when the
        # listener says TCP; without it every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise ListenError(exc, f"{self.config.host}:{self.config.port}") from exc
        sock.set_inheritable(False)
        return sock

    def _build_app(self) -> FastAPI:
        app = FastAPI(
            title="gs2-relay control plane",
            version=relay.__version__,
            description="GS2-Realtime compatible REST API (see docs/operations.md).",
            docs_url="/docs",
            redoc_url=None,
        )
        app.openapi_schema = None
        app.add_middleware(GZipMiddleware, minimum_size=1024)
        app.add_middleware(PathGuard)

        @app.exception_handler(ApiError)
        async def api_error(_: Request, exc: ApiError) -> JSONResponse:
            return exc.response()

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            return error_response(
                exc.status_code, [ErrorItem("request", str(exc.detail), f"core.http.error.{exc.status_code}")]
            )

        @app.exception_handler(RequestValidationError)
        async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
            return error_response(
                400, [ErrorItem("request", "invalid request", "core.request.error.invalid")]
            )

        @app.exception_handler(Exception)
        async def internal_error(_: Request, exc: Exception) -> JSONResponse:
            log.exception("unhandled error")
            return error_response(500, [ErrorItem("server", "internal error", "core.server.error.internal")])

        build_routes(
            app,
            state=self.state,
            namespaces=self.namespaces,
            rooms=self.rooms,
            agents=self.agents,
            authority=self.authority,
            gateway=self.gateway,
            config=self.config,
        )
        self.demo_mounted = mount_demo(app, self.namespaces, self.rooms, self.authority, self.config)
        original_openapi = app.openapi

        def openapi() -> dict[str, Any]:
            schema = original_openapi()
            schema.setdefault("components", {})["securitySchemes"] = {
                "projectToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "from /identifier/projectToken/login",
                }
            }
            return schema

        app.openapi = openapi  # type: ignore[method-assign]
        return app

    async def start(self) -> None:
        await self.store.open()
        await self.state.cluster.start(self.agents.on_event)  # this node's claim, before its rooms
        await self.provisioner.start()  # e.g. the zygote template, before any room is wanted
        await self.rooms.recover()
        self.agents.start_reaper()
        self.state.spawn(self.state.targets.run())
        config = uvicorn.Config(
            self.app,
            log_level="warning" if self.config.log_level == "info" else self.config.log_level,
            log_config=None,  # uvicorn's records go to our handler, in our format (relay/logs.py)
            access_log=False,
            lifespan="off",
            http=with_request_deadline(self.config.request_deadline),
            ws="websockets-sansio",
            timeout_graceful_shutdown=2,
            ws_max_size=GATEWAY_MAX_MESSAGE,  # /gateway reads pings only; uvicorn's default is 16 MiB
            ssl_context_factory=self._tls_context if self.certificate else None,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._serve_task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("control plane HTTP server stopped during start")
            await asyncio.sleep(0.01)
        if self.certificate is not None:
            self.state.spawn(self._watch_certificate(self.certificate))
            if self.config.public_url is None:
                await self._check_own_certificate()
        # Start-up objects (the app, its routes and models) never need collecting: frozen, they
        # leave the collector's full passes short, which every request waits behind.
        gc.freeze()
        self.state.serving = True
        log.info(
            "control plane listening on %s (pid %d, data %s)",
            self.url,
            os.getpid(),
            self.config.data_dir,
            extra={"url": self.url, "port": self.port},
        )

    def _tls_context(self, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's TLS context is the certificate's, which a renewal is loaded into."""
        assert self.certificate is not None
        return self.certificate.context

    async def _watch_certificate(self, certificate: Certificate) -> None:
        while True:
            await asyncio.sleep(RELOAD_CHECK)
            certificate.current(time.monotonic())

    async def _check_own_certificate(self) -> None:
        """This node's relays reach /internal at this node's own address (no public_url): they
        must be able to verify the certificate there, as they will (the default trust, which
        SSL_CERT_FILE extends). If they cannot, every room would fail at its relay's
        registration: the control plane says so now, and stops."""
        host = urlsplit(self.url).hostname or ""
        try:
            trust = ssl.create_default_context()
            connecting = asyncio.open_connection(host, self.port, ssl=trust, server_hostname=host)
            _, writer = await asyncio.wait_for(connecting, 5)
            writer.close()
        except (OSError, TimeoutError) as exc:
            await self.stop()
            raise SettingsError(
                f"api_tls_cert: this node's relays could not verify it at {self.url} ({exc}); set "
                "public_url to a name the certificate holds, or SSL_CERT_FILE to its CA"
            ) from None

    async def serve_forever(self) -> None:
        assert self._serve_task is not None
        await asyncio.shield(self._serve_task)

    async def stop(self) -> None:
        """Stops taking rooms; with stop_relays_on_exit, stops the relays while the agent API
        still answers, so each one's `closed` report lands, it exits at once and its room ends
        as "shutdown" (stopped after the HTTP server, each retried its report for two seconds
        against nothing and was ended as a crash)."""
        self.state.serving = False  # wantRoom answers 503 from here on
        await self.agents.stop_reaper()
        await self.state.cancel_tasks()
        stop_all = self.config.stop_relays_on_exit
        if stop_all:
            for rt in self.state.runtime.values():
                rt.ending = rt.ending or "shutdown"  # the reason an exit without a report gets
            await self.provisioner.close(stop_all=True)
            self.state.targets.clear()
        await self.gateway.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._serve_task, 5.0)
        await self.state.cancel_tasks()  # what requests answered during the stop started
        if not stop_all:
            await self.provisioner.close(stop_all=False)
        await self.state.cluster.close()
        await self.store.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
