"""HTTP routes: GS2-Realtime's twelve methods under /realtime, login under /identifier, the
GS2-Auth-compatible user token mint under /auth, the agents' /internal API, and /gateway.

Handlers read the raw request (gzip bodies, "null" query values) and answer GS2's JSON; every
failure is an ApiError rendered as GS2's error body, never a 500 for bad input.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import relay
from relay.control import openapi_schemas as S
from relay.control import validation as V
from relay.control.errors import ApiError, bad_request, unauthorized
from relay.control.views import namespace_json, room_json

if TYPE_CHECKING:
    from relay.control.app import ControlPlane

Handler = Callable[[Request], Awaitable[Any]]
SECURED: list[dict[str, list[str]]] = [{"projectToken": []}]


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def build_routes(app: FastAPI, cp: ControlPlane) -> None:
    svc = cp.service
    authority = cp.authority
    metrics = cp.metrics
    region, owner = cp.config.region, cp.config.owner_id

    def require_project(request: Request) -> None:
        token = _bearer(request)
        if token is None or not authority.verify_project_token(token):
            raise unauthorized("a valid project token is required (POST /identifier/projectToken/login)")
        client_id = request.headers.get("x-gs2-client-id")
        if client_id not in (None, "", authority.client_id):
            raise unauthorized("X-GS2-CLIENT-ID does not match the project token")

    async def read_body(request: Request) -> dict[str, Any]:
        return V.decode_body(await request.body(), request.headers.get("content-encoding"))

    def gs2(method: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """Times the call, counts it by GS2 method and status, renders ApiError as GS2's error body."""

        def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(fn)
            async def handler(request: Request) -> Response:
                started = time.perf_counter()
                try:
                    result = await fn(request)
                    response: Response = JSONResponse(result)
                except ApiError as exc:
                    response = exc.response()
                metrics.api_requests.labels(method, str(response.status_code)).inc()
                metrics.api_latency.labels(method).observe(time.perf_counter() - started)
                return response

            return handler

        return wrap

    realtime = APIRouter(prefix="/realtime", tags=["realtime"])

    def ns_param(request: Request) -> str:
        return V.path_name(request.path_params["namespaceName"], "namespaceName", "namespace")

    def room_param(request: Request) -> str:
        return V.path_name(request.path_params["roomName"], "roomName", "room")

    # --- namespaces ------------------------------------------------------------------------
    @gs2("describeNamespaces")
    async def describe_namespaces(request: Request) -> Any:
        require_project(request)
        q = request.query_params
        prefix = V.name_prefix_param(q.get("namePrefix"))
        after = V.decode_page_token(q.get("pageToken"), "namespaces")
        limit = V.limit_param(q.get("limit"))
        items, token = await svc.describe_namespaces(prefix, after, limit)
        return {"items": [namespace_json(n, region, owner) for n in items], "nextPageToken": token}

    @gs2("createNamespace")
    async def create_namespace(request: Request) -> Any:
        require_project(request)
        name, inp = V.namespace_body(await read_body(request), with_name=True)
        assert name is not None
        return {"item": namespace_json(await svc.create_namespace(name, inp), region, owner)}

    @gs2("getNamespaceStatus")
    async def get_namespace_status(request: Request) -> Any:
        require_project(request)
        return {"status": await svc.namespace_status(ns_param(request))}

    @gs2("getNamespace")
    async def get_namespace(request: Request) -> Any:
        require_project(request)
        return {"item": namespace_json(await svc.get_namespace(ns_param(request)), region, owner)}

    @gs2("updateNamespace")
    async def update_namespace(request: Request) -> Any:
        require_project(request)
        name = ns_param(request)
        _, inp = V.namespace_body(await read_body(request), with_name=False)
        return {"item": namespace_json(await svc.update_namespace(name, inp), region, owner)}

    @gs2("deleteNamespace")
    async def delete_namespace(request: Request) -> Any:
        require_project(request)
        return {"item": namespace_json(await svc.delete_namespace(ns_param(request)), region, owner)}

    @gs2("now")
    async def now(request: Request) -> Any:
        user_token = request.headers.get("x-gs2-access-token")
        if user_token:
            if authority.verify_user_token(user_token) is None:
                raise unauthorized("invalid access token", "realtime.accessToken.error.invalid")
        else:
            require_project(request)
        return {"timestamp": int(time.time() * 1000)}

    @gs2("getServiceVersion")
    async def get_service_version(request: Request) -> Any:
        require_project(request)
        return {"item": relay.__version__}

    # --- rooms -----------------------------------------------------------------------------
    @gs2("describeRooms")
    async def describe_rooms(request: Request) -> Any:
        require_project(request)
        ns = ns_param(request)
        q = request.query_params
        after = V.decode_page_token(q.get("pageToken"), "rooms:" + ns)
        limit = V.limit_param(q.get("limit"))
        items, token = await svc.describe_rooms(ns, after, limit)
        return {"items": [room_json(r, region, owner) for r in items], "nextPageToken": token}

    @gs2("wantRoom")
    async def want_room(request: Request) -> Any:
        require_project(request)
        ns = ns_param(request)
        name, users = V.room_body(await read_body(request))
        return {"item": room_json(await svc.want_room(ns, name, users), region, owner)}

    @gs2("getRoom")
    async def get_room(request: Request) -> Any:
        require_project(request)
        return {"item": room_json(await svc.get_room(ns_param(request), room_param(request)), region, owner)}

    @gs2("deleteRoom")
    async def delete_room(request: Request) -> Any:
        require_project(request)
        return {
            "item": room_json(await svc.delete_room(ns_param(request), room_param(request)), region, owner)
        }

    list_q = S.query_params(("pageToken", S.PAGE_TOKEN), ("limit", S.LIMIT))
    ns_p = S.path_params("namespaceName")
    room_p = S.path_params("namespaceName", "roomName")

    def add(
        path: str, method: str, fn: Any, op: str, ok: dict[str, Any], errors: tuple[int, ...], **extra: Any
    ) -> None:
        openapi_extra: dict[str, Any] = {"security": SECURED}
        params = extra.pop("params", None)
        if params:
            openapi_extra["parameters"] = params
        if "request_body" in extra:
            openapi_extra.update(S.body(extra.pop("request_body")))
        realtime.add_api_route(
            path,
            fn,
            methods=[method],
            operation_id=op,
            name=op,
            responses=S.responses(ok, *errors),
            openapi_extra=openapi_extra,
            response_class=JSONResponse,
            **extra,
        )

    page_ns = S.page_of(S.NAMESPACE)
    add(
        "/",
        "GET",
        describe_namespaces,
        "describeNamespaces",
        page_ns,
        (400, 401),
        params=S.query_params(("namePrefix", S.NAME_PREFIX), ("pageToken", S.PAGE_TOKEN), ("limit", S.LIMIT)),
    )
    add(
        "/",
        "POST",
        create_namespace,
        "createNamespace",
        S.item_of(S.NAMESPACE),
        (400, 401, 409),
        request_body=S.CREATE_NAMESPACE_BODY,
    )
    # The same two without the trailing slash (not documented twice).
    realtime.add_api_route("", describe_namespaces, methods=["GET"], include_in_schema=False)
    realtime.add_api_route("", create_namespace, methods=["POST"], include_in_schema=False)
    add(
        "/now",
        "GET",
        now,
        "now",
        S.NOW_RESULT,
        (401,),
        params=[
            {"name": "X-GS2-ACCESS-TOKEN", "in": "header", "required": False, "schema": {"type": "string"}}
        ],
    )
    add("/system/version", "GET", get_service_version, "getServiceVersion", S.VERSION_RESULT, (401,))
    add(
        "/{namespaceName}/status",
        "GET",
        get_namespace_status,
        "getNamespaceStatus",
        S.STATUS_RESULT,
        (400, 401, 404),
        params=ns_p,
    )
    add(
        "/{namespaceName}",
        "GET",
        get_namespace,
        "getNamespace",
        S.item_of(S.NAMESPACE),
        (400, 401, 404),
        params=ns_p,
    )
    add(
        "/{namespaceName}",
        "PUT",
        update_namespace,
        "updateNamespace",
        S.item_of(S.NAMESPACE),
        (400, 401, 404),
        params=ns_p,
        request_body=S.UPDATE_NAMESPACE_BODY,
    )
    add(
        "/{namespaceName}",
        "DELETE",
        delete_namespace,
        "deleteNamespace",
        S.item_of(S.NAMESPACE),
        (400, 401, 404),
        params=ns_p,
    )
    add(
        "/{namespaceName}/room",
        "GET",
        describe_rooms,
        "describeRooms",
        S.page_of(S.ROOM),
        (400, 401, 404),
        params=ns_p + list_q,
    )
    add(
        "/{namespaceName}/room",
        "POST",
        want_room,
        "wantRoom",
        S.item_of(S.ROOM),
        (400, 401, 404, 409),
        params=ns_p,
        request_body=S.WANT_ROOM_BODY,
    )
    add(
        "/{namespaceName}/room/{roomName}",
        "GET",
        get_room,
        "getRoom",
        S.item_of(S.ROOM),
        (400, 401, 404),
        params=room_p,
    )
    add(
        "/{namespaceName}/room/{roomName}",
        "DELETE",
        delete_room,
        "deleteRoom",
        S.item_of(S.ROOM),
        (400, 401, 404),
        params=room_p,
    )
    app.include_router(realtime)

    # --- identifier / auth -----------------------------------------------------------------
    @gs2("login")
    async def login(request: Request) -> Any:
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
        if not authority.check_credentials(client_id, client_secret):
            raise unauthorized(
                "invalid client_id or client_secret", "identifier.projectToken.error.unauthorized"
            )
        return {
            "access_token": authority.mint_project_token(),
            "token_type": "Bearer",
            "expires_in": authority.project_token_ttl,
            "owner_id": owner,
        }

    app.add_api_route(
        "/identifier/projectToken/login",
        login,
        methods=["POST"],
        operation_id="login",
        tags=["identifier"],
        responses=S.responses(S.LOGIN_RESULT, 400, 401),
        openapi_extra=S.body(S.LOGIN_BODY),
        response_class=JSONResponse,
    )

    @gs2("mintUserToken")
    async def mint_user_token(request: Request) -> Any:
        require_project(request)
        user_id, ttl = V.user_token_body(await read_body(request))
        ttl = ttl or authority.user_token_ttl
        token = authority.mint_user_token(user_id, ttl)
        return {"token": token, "userId": user_id, "expire": int((time.time() + ttl) * 1000)}

    app.add_api_route(
        "/auth/login",
        mint_user_token,
        methods=["POST"],
        operation_id="mintUserToken",
        tags=["auth"],
        summary="Mint a user access token (GS2-Auth login shape) for a game backend",
        responses=S.responses(S.USER_TOKEN_RESULT, 400, 401),
        openapi_extra={"security": SECURED, **S.body(S.USER_TOKEN_BODY)},
        response_class=JSONResponse,
    )

    # --- internal (agents) -----------------------------------------------------------------
    def agent_route(kind: str, call: Callable[..., Awaitable[Any]]) -> None:
        @gs2("internal." + kind)
        async def handler(request: Request) -> Any:
            ns = request.path_params["ns"]
            room = request.path_params["room"]
            body = await read_body(request)
            result = await call(ns, room, _bearer(request), body)
            return result if result is not None else {}

        app.add_api_route(
            f"/internal/rooms/{{ns}}/{{room}}/{kind}", handler, methods=["POST"], include_in_schema=False
        )

    agent_route("register", svc.register)
    agent_route("heartbeat", svc.heartbeat)
    agent_route("closed", svc.closed)

    # --- gateway, health, metrics ----------------------------------------------------------
    @app.websocket("/gateway")
    async def gateway(ws: WebSocket) -> None:
        await cp.gateway.handle(ws)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "rooms": cp.service.room_counts()})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")
