"""HTTP routes: GS2-Realtime's twelve methods under /realtime, login under /identifier, the
GS2-Auth-compatible user token mint under /auth, the agents' /internal API, and /gateway.

Handlers read the raw request (gzip bodies, "null" query values) and answer GS2's JSON; every
failure is an ApiError rendered as GS2's error body, never a 500 for bad input. Each operation
is declared once, in `Handlers.operations`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import relay
from relay.control import openapi_schemas as S
from relay.control import validation as V
from relay.control.agent_api import AgentApi
from relay.control.auth import Authority, LoginThrottle
from relay.control.config import ControlConfig
from relay.control.errors import bad_request, too_many_requests, unauthorized
from relay.control.gateway import Gateway
from relay.control.namespaces import Namespaces
from relay.control.records import NamespaceRecord, RoomRecord
from relay.control.rooms import Rooms
from relay.control.routing import Handler, Operation, mount
from relay.control.state import ControlState
from relay.control.views import namespace_json, room_json

AgentCall = Callable[[str, str, str | None, dict[str, Any]], Awaitable[dict[str, Any] | None]]

NS_PATH = S.path_params("namespaceName")
ROOM_PATH = S.path_params("namespaceName", "roomName")
PAGE_QUERY = S.query_params(("pageToken", S.PAGE_TOKEN), ("limit", S.LIMIT))
ACCESS_TOKEN_HEADER = [
    {"name": "X-GS2-ACCESS-TOKEN", "in": "header", "required": False, "schema": {"type": "string"}}
]


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


async def read_body(request: Request) -> dict[str, Any]:
    """The body as it arrives, chunk by chunk (validation.BodyDecoder: bounded before and after
    gzip), so no body holds up the event loop or the memory of the process."""
    decoder = V.BodyDecoder(request.headers.get("content-encoding"))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > V.MAX_BODY_BYTES:
        raise V.body_too_large()
    async for chunk in request.stream():
        decoder.feed(chunk)
    return decoder.result()


def ns_param(request: Request) -> str:
    return V.path_name(request.path_params["namespaceName"], "namespaceName", "namespace")


def room_param(request: Request) -> str:
    return V.path_name(request.path_params["roomName"], "roomName", "room")


def agent_handler(call: AgentCall) -> Handler:
    """The agents' calls share one shape: (namespace, room, the room's secret, body)."""

    async def handle(request: Request) -> dict[str, Any]:
        ns, room = request.path_params["ns"], request.path_params["room"]
        result = await call(ns, room, bearer(request), await read_body(request))
        return {} if result is None else result

    return handle


class Handlers:
    """Handlers read the raw request themselves, with no FastAPI parameters or dependencies: so
    /openapi.json says only what `operations` declares, and every failure (a missing token too)
    happens inside the timed endpoint, counted under its operation."""

    def __init__(
        self,
        state: ControlState,
        namespaces: Namespaces,
        rooms: Rooms,
        agents: AgentApi,
        authority: Authority,
        config: ControlConfig,
    ) -> None:
        self.state = state
        self.namespaces = namespaces
        self.rooms = rooms
        self.agents = agents
        self.authority = authority
        self.region, self.owner = config.region, config.owner_id
        self.login_throttle = LoginThrottle(
            config.login_failures_per_source, config.login_failures_per_client, config.login_failure_window
        )

    def operations(self) -> list[Operation]:
        ns_item, room_item = S.item_of(S.NAMESPACE), S.item_of(S.ROOM)
        return [
            Operation(
                "GET",
                "/realtime/",
                "describeNamespaces",
                self.describe_namespaces,
                S.page_of(S.NAMESPACE),
                (400, 401, 503),
                params=S.query_params(("namePrefix", S.NAME_PREFIX)) + PAGE_QUERY,
                aliases=("/realtime",),
            ),
            Operation(
                "POST",
                "/realtime/",
                "createNamespace",
                self.create_namespace,
                ns_item,
                (400, 401, 409, 503),
                request_body=S.CREATE_NAMESPACE_BODY,
                aliases=("/realtime",),
                links=S.NAMESPACE_LINKS,
            ),
            Operation(
                "GET", "/realtime/now", "now", self.now, S.NOW_RESULT, (401,), params=ACCESS_TOKEN_HEADER
            ),
            Operation(
                "GET",
                "/realtime/system/version",
                "getServiceVersion",
                self.get_service_version,
                S.VERSION_RESULT,
                (401,),
            ),
            Operation(
                "GET",
                "/realtime/{namespaceName}/status",
                "getNamespaceStatus",
                self.get_namespace_status,
                S.STATUS_RESULT,
                (400, 401, 404, 503),
                params=NS_PATH,
            ),
            Operation(
                "GET",
                "/realtime/{namespaceName}",
                "getNamespace",
                self.get_namespace,
                ns_item,
                (400, 401, 404, 503),
                params=NS_PATH,
                links=S.NAMESPACE_LINKS,
            ),
            Operation(
                "PUT",
                "/realtime/{namespaceName}",
                "updateNamespace",
                self.update_namespace,
                ns_item,
                (400, 401, 404, 503),
                params=NS_PATH,
                request_body=S.UPDATE_NAMESPACE_BODY,
                links=S.NAMESPACE_LINKS,
            ),
            Operation(
                "DELETE",
                "/realtime/{namespaceName}",
                "deleteNamespace",
                self.delete_namespace,
                ns_item,
                (400, 401, 404, 503),
                params=NS_PATH,
            ),
            Operation(
                "GET",
                "/realtime/{namespaceName}/room",
                "describeRooms",
                self.describe_rooms,
                S.page_of(S.ROOM),
                (400, 401, 404, 503),
                params=NS_PATH + PAGE_QUERY,
            ),
            Operation(
                "POST",
                "/realtime/{namespaceName}/room",
                "wantRoom",
                self.want_room,
                room_item,
                (400, 401, 404, 409, 503),
                params=NS_PATH,
                request_body=S.WANT_ROOM_BODY,
                links=S.ROOM_LINKS,
            ),
            Operation(
                "GET",
                "/realtime/{namespaceName}/room/{roomName}",
                "getRoom",
                self.get_room,
                room_item,
                (400, 401, 404, 503),
                params=ROOM_PATH,
                links=S.ROOM_LINKS,
            ),
            Operation(
                "DELETE",
                "/realtime/{namespaceName}/room/{roomName}",
                "deleteRoom",
                self.delete_room,
                room_item,
                (400, 401, 404, 503),
                params=ROOM_PATH,
                links=S.DELETED_ROOM_LINKS,
            ),
            Operation(
                "POST",
                "/identifier/projectToken/login",
                "login",
                self.login,
                S.LOGIN_RESULT,
                (400, 401, 429),
                request_body=S.LOGIN_BODY,
                tag="identifier",
                secured=False,
            ),
            Operation(
                "POST",
                "/auth/login",
                "mintUserToken",
                self.mint_user_token,
                S.USER_TOKEN_RESULT,
                (400, 401),
                request_body=S.USER_TOKEN_BODY,
                tag="auth",
                summary="Mint a user access token (GS2-Auth login shape) for a game backend",
            ),
            *(
                Operation(
                    "POST", f"/internal/rooms/{{ns}}/{{room}}/{kind}", f"internal.{kind}", handler, None
                )
                for kind, handler in (
                    ("register", agent_handler(self.agents.register)),
                    ("heartbeat", agent_handler(self.agents.heartbeat)),
                    ("closed", agent_handler(self.agents.closed)),
                )
            ),
        ]

    def require_project(self, request: Request) -> None:
        token = bearer(request)
        if token is None or not self.authority.verify_project_token(token):
            raise unauthorized("a valid project token is required (POST /identifier/projectToken/login)")
        client_id = request.headers.get("x-gs2-client-id")
        if client_id not in (None, "", self.authority.client_id):
            raise unauthorized("X-GS2-CLIENT-ID does not match the project token")

    def namespace_item(self, rec: NamespaceRecord) -> dict[str, Any]:
        return {"item": namespace_json(rec, self.region, self.owner)}

    def room_item(self, rec: RoomRecord) -> dict[str, Any]:
        return {"item": room_json(rec, self.region, self.owner)}

    # --- namespaces ----------------------------------------------------------------------------
    async def describe_namespaces(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        q = request.query_params
        prefix = V.name_prefix_param(q.get("namePrefix"))
        after = V.decode_page_token(q.get("pageToken"), "namespaces")
        limit = V.limit_param(q.get("limit"))
        items, token = await self.namespaces.describe_namespaces(prefix, after, limit)
        return {"items": [namespace_json(n, self.region, self.owner) for n in items], "nextPageToken": token}

    async def create_namespace(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        name, inp = V.namespace_body(await read_body(request), with_name=True)
        assert name is not None
        return self.namespace_item(await self.namespaces.create_namespace(name, inp))

    async def get_namespace_status(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return {"status": await self.namespaces.namespace_status(ns_param(request))}

    async def get_namespace(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return self.namespace_item(await self.namespaces.get_namespace(ns_param(request)))

    async def update_namespace(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        name = ns_param(request)
        _, inp = V.namespace_body(await read_body(request), with_name=False)
        return self.namespace_item(await self.namespaces.update_namespace(name, inp))

    async def delete_namespace(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return self.namespace_item(await self.namespaces.delete_namespace(ns_param(request)))

    async def now(self, request: Request) -> dict[str, Any]:
        user_token = request.headers.get("x-gs2-access-token")
        if user_token:
            if self.authority.verify_user_token(user_token) is None:
                raise unauthorized("invalid access token", "realtime.accessToken.error.invalid")
        else:
            self.require_project(request)
        return {"timestamp": int(time.time() * 1000)}

    async def get_service_version(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return {"item": relay.__version__}

    # --- rooms ---------------------------------------------------------------------------------
    async def describe_rooms(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        ns = ns_param(request)
        q = request.query_params
        after = V.decode_page_token(q.get("pageToken"), "rooms:" + ns)
        limit = V.limit_param(q.get("limit"))
        items, token = await self.rooms.describe_rooms(ns, after, limit)
        return {"items": [room_json(r, self.region, self.owner) for r in items], "nextPageToken": token}

    async def want_room(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        ns = ns_param(request)
        name, users = V.room_body(await read_body(request))
        return self.room_item(await self.rooms.want_room(ns, name, users))

    async def get_room(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return self.room_item(await self.rooms.get_room(ns_param(request), room_param(request)))

    async def delete_room(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        return self.room_item(await self.rooms.delete_room(ns_param(request), room_param(request)))

    # --- identifier / auth ---------------------------------------------------------------------
    async def login(self, request: Request) -> dict[str, Any]:
        data = await read_body(request)
        if not data:  # some clients post the credentials as a form
            form = dict(request.query_params)
            data = {k: form[k] for k in ("client_id", "client_secret") if k in form}
        client_id, client_secret = data.get("client_id"), data.get("client_secret")
        if not isinstance(client_id, str) or not client_id:
            raise bad_request(
                "client_id", "client_id is required", "identifier.projectToken.clientId.error.require"
            )
        if not isinstance(client_secret, str) or not client_secret:
            raise bad_request(
                "client_secret",
                "client_secret is required",
                "identifier.projectToken.clientSecret.error.require",
            )
        source, now = request.client.host if request.client else "", time.monotonic()
        wait = self.login_throttle.retry_after(source, client_id, now)
        if wait:
            raise too_many_requests(
                "client_secret",
                "too many failed logins: try again later",
                "identifier.projectToken.error.tooManyRequests",
                wait,
            )
        if not self.authority.check_credentials(client_id, client_secret):
            self.login_throttle.failed(source, client_id, now)
            raise unauthorized(
                "invalid client_id or client_secret", "identifier.projectToken.error.unauthorized"
            )
        return {
            "access_token": self.authority.mint_project_token(),
            "token_type": "Bearer",
            "expires_in": self.authority.project_token_ttl,
            "owner_id": self.owner,
        }

    async def mint_user_token(self, request: Request) -> dict[str, Any]:
        self.require_project(request)
        user_id, ttl = V.user_token_body(await read_body(request))
        ttl = ttl or self.authority.user_token_ttl
        token = self.authority.mint_user_token(user_id, ttl)
        return {"token": token, "userId": user_id, "expire": int((time.time() + ttl) * 1000)}

    # --- health and metrics (neither timed nor documented) -------------------------------------
    async def healthz(self) -> Response:
        """Alive: the process answers (a store that cannot be written does not make it dead)."""
        return JSONResponse({"status": "ok", "component": "control-plane", "rooms": self.state.room_counts()})

    async def readyz(self) -> Response:
        """Ready to take rooms: started, not stopping, and the store answers a read. A host at
        max_rooms is still ready (getRoom and the rest must keep being routed to it)."""
        reason = None if self.state.serving else "starting or stopping"
        if reason is None:
            try:
                await self.state.store.get_namespace("readyz")
            except Exception:  # the store's own 503 or anything else: not ready, say why below
                reason = "the store cannot be read"
        body: dict[str, Any] = {
            "status": "ready" if reason is None else "unavailable",
            "component": "control-plane",
        }
        if reason is not None:
            body["reason"] = reason
        body["rooms"] = self.state.room_counts()
        return JSONResponse(body, status_code=200 if reason is None else 503)

    async def metrics(self) -> Response:
        return PlainTextResponse(self.state.metrics.render(), media_type="text/plain; version=0.0.4")


def build_routes(
    app: FastAPI,
    *,
    state: ControlState,
    namespaces: Namespaces,
    rooms: Rooms,
    agents: AgentApi,
    authority: Authority,
    gateway: Gateway,
    config: ControlConfig,
) -> None:
    handlers = Handlers(state, namespaces, rooms, agents, authority, config)
    for op in handlers.operations():
        mount(app, op, state.metrics)
    app.add_api_websocket_route("/gateway", gateway.handle, name="gateway")
    app.add_api_route("/healthz", handlers.healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", handlers.readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", handlers.metrics, methods=["GET"], include_in_schema=False)
