"""Routes from one declaration per operation: its FastAPI route, its /openapi.json entry and its
metrics label all come from the same `Operation`, so they cannot disagree.

Handlers read the raw request and return GS2's JSON; the endpoint made here times the call,
counts it by operation and status, and renders an ApiError as GS2's error body.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.control import openapi_schemas as S
from relay.control.errors import ApiError, ErrorItem, error_response
from relay.control.metrics import ControlMetrics

Handler = Callable[[Request], Awaitable[Any]]
Endpoint = Callable[[Request], Awaitable[Response]]
SECURED: list[dict[str, list[str]]] = [{"projectToken": []}]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    """Also the metrics label (relay_control_api_requests{method=...})."""
    handler: Handler
    ok: dict[str, Any] | None
    """The 200 body's schema; None keeps the route out of /openapi.json (the agents' API)."""
    errors: tuple[int, ...] = ()
    params: Sequence[dict[str, Any]] = ()
    request_body: dict[str, Any] | None = None
    tag: str = "realtime"
    secured: bool = True
    """Documented as needing a project token (the handler checks it)."""
    summary: str | None = None
    aliases: tuple[str, ...] = ()
    """Undocumented paths that answer the same (the listing's path without its trailing slash)."""
    links: dict[str, dict[str, Any]] | None = None
    """OpenAPI links from the 200 answer to the calls it allows (openapi_schemas.link)."""

    def openapi_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.secured:
            extra["security"] = SECURED
        if self.params:
            extra["parameters"] = list(self.params)
        if self.request_body is not None:
            extra.update(S.body(self.request_body))
        return extra


def timed(label: str, handler: Handler, metrics: ControlMetrics) -> Endpoint:
    # The endpoint has no docstring on purpose: FastAPI would publish it as the description.
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response: Response = JSONResponse(await handler(request))
        except ApiError as exc:
            response = exc.response()
        metrics.api_requests.labels(label, str(response.status_code)).inc()
        metrics.api_latency.labels(label).observe(time.perf_counter() - started)
        return response

    return endpoint


def mount(app: FastAPI, op: Operation, metrics: ControlMetrics) -> None:
    endpoint = timed(op.operation_id, op.handler, metrics)
    if op.ok is None:
        app.add_api_route(op.path, endpoint, methods=[op.method], include_in_schema=False)
    else:
        app.add_api_route(
            op.path,
            endpoint,
            methods=[op.method],
            operation_id=op.operation_id,
            name=op.operation_id,
            tags=[op.tag],
            summary=op.summary,
            responses=S.responses(op.ok, *op.errors, links=op.links),
            openapi_extra=op.openapi_extra(),
            response_class=JSONResponse,
            # What the handlers' `-> Any` gave before: /openapi.json's 200 schemas keep their
            # "title": "Response <OperationId>" (the endpoint itself returns a Response).
            response_model=Any,
        )
    for alias in op.aliases:
        app.add_api_route(alias, endpoint, methods=[op.method], include_in_schema=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathGuard:
    """Starlette's route patterns end in `$`, which also matches before a trailing newline, so
    `/realtime/%0A` was the namespace listing. A path holding a control character is none of
    ours: GS2's 400 before any route sees it (a WebSocket is closed with 1008)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _CONTROL.search(scope["path"]):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            item = ErrorItem(
                "request", "the path holds a control character", "core.request.error.invalidPath"
            )
            await error_response(400, [item])(scope, receive, send)
            return
        await self.app(scope, receive, send)
