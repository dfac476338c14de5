"""The demo page `relay dev` serves at /demo, and the dev-only API it uses (docs/security.md).

The page and its scripts are files in relay/control/demo/: index.html, demo.css, and esbuild
bundles of clients/js (demo.js, the page; relay-client.js, the client; relay-worker.js, the
client's transport worker; relay-shared-*.js, the code they share), committed so that
`make run` needs nothing but Python. tests/js/test_bundle.py rebuilds them and compares.

A browser must not hold the project's credentials, so the page gets what a game backend would
hand a game client, and no more, from three calls that exist only here:

    GET  /demo/api/rooms                    the rooms of the `demo` namespace, ready or not
    POST /demo/api/rooms {"name"}           wantRoom in `demo` (the namespace made on first use)
    POST /demo/api/rooms/{room}/ticket {"userId"}
         waits until the room is ready: {url, ipAddress, port, encryptionKey, accessToken}

Only the `demo` namespace is reachable; its room keys and user tokens (when relays require
them) are exactly what the page needs to join. They are served only when the control plane is
bound to a loopback address, only to requests whose Host is a loopback name (a DNS-rebinding
page cannot read them), and the API calls need an `X-Relay-Demo` header, which a cross-site
page cannot send without a CORS preflight this server never grants; a call whose Origin is not
the page's own is refused as well, should a CORS policy ever be added for the GS2 API.

Every answer under /demo/ carries PAGE_HEADERS: the page may run only its own scripts and
cannot be framed by another page (clickjacking), no answer is sniffed into another type, and
the API's answers (room keys, tokens) are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from relay.control import validation as V
from relay.control.api import read_body
from relay.control.auth import Authority
from relay.control.config import ControlConfig
from relay.control.errors import ApiError, ErrorItem, bad_request, not_found
from relay.control.namespaces import Namespaces
from relay.control.records import NAMESPACE_ACTIVE
from relay.control.rooms import Rooms

log = logging.getLogger("relay.control.demo")

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_NAMESPACE = "demo"
DEMO_HEADER = "x-relay-demo"
TICKET_WAIT = 15.0
"""Seconds a ticket call waits for a new room's relay to register."""
MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
STATIC = {
    p.name: MEDIA_TYPES[p.suffix] + "; charset=utf-8" for p in DEMO_DIR.iterdir() if p.suffix in MEDIA_TYPES
}
"""The files served under /demo/: whatever relay/control/demo holds (its bundles' names carry hashes)."""
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",  # demo.js and the bundles it imports: nothing inline, no eval
        "worker-src 'self'",  # relay-worker.js, the client's transport
        "style-src 'self'",
        "img-src data:",  # the empty favicon
        "connect-src 'self' ws: wss:",  # the demo API; the relays, wherever they are advertised
        "base-uri 'none'",
        "form-action 'none'",  # the forms are handled by the script, never submitted
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""Sent with every answer under /demo/ (the page, its files, the API's answers and errors)."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost, with or without a port or brackets."""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(request: Request) -> bool:
    """No Origin (a same-origin GET, a non-browser client), or exactly this server's: a browser
    sends one with every cross-origin request and every POST, and a page cannot forge it."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.lower() == f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def with_page_headers(response: Response) -> Response:
    response.headers.update(PAGE_HEADERS)
    return response


def forbidden(message: str) -> ApiError:
    return ApiError(403, [ErrorItem("demo", message, "demo.error.forbidden")])


class DemoApi:
    def __init__(
        self, namespaces: Namespaces, rooms: Rooms, authority: Authority, config: ControlConfig
    ) -> None:
        self.namespaces = namespaces
        self.rooms = rooms
        self.authority = authority
        self.require_tokens = config.relay_require_user_tokens

    def mount(self, app: FastAPI) -> None:
        for path, method, handler in (
            ("/demo/api/rooms", "GET", self.list_rooms),
            ("/demo/api/rooms", "POST", self.create_room),
            ("/demo/api/rooms/{room}/ticket", "POST", self.ticket),
        ):
            app.add_api_route(path, self.guarded(handler), methods=[method], include_in_schema=False)
        app.add_api_route("/demo", self.root, methods=["GET"], include_in_schema=False)
        app.add_api_route("/demo/", self.static, methods=["GET"], include_in_schema=False)
        app.add_api_route("/demo/{name}", self.static, methods=["GET"], include_in_schema=False)

    async def root(self) -> Response:
        return RedirectResponse("/demo/", status_code=307)

    async def static(self, request: Request, name: str = "index.html") -> Response:
        try:
            self.check_host(request)
            if name not in STATIC:
                raise not_found("demo", f"no {name}", "demo.error.notFound")
        except ApiError as exc:
            return with_page_headers(exc.response())
        headers = {**PAGE_HEADERS, "Cache-Control": "no-cache"}
        return FileResponse(DEMO_DIR / name, media_type=STATIC[name], headers=headers)

    def check_host(self, request: Request) -> None:
        if not is_loopback(request.headers.get("host", "")):
            raise forbidden("the demo answers only to a loopback Host (127.0.0.1, localhost)")

    def guarded(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self.check_host(request)
                if request.headers.get(DEMO_HEADER) is None:
                    raise forbidden(f"demo API calls carry the {DEMO_HEADER} header")
                if not same_origin(request):
                    raise forbidden("demo API calls come from the demo page's own origin")
                response: Response = JSONResponse(await handler(request))
            except ApiError as exc:
                response = exc.response()
            response.headers["Cache-Control"] = "no-store"
            return with_page_headers(response)

        return endpoint

    async def list_rooms(self, request: Request) -> dict[str, Any]:
        rooms = await self.namespaces.all_rooms(DEMO_NAMESPACE) if await self.active() else []
        return {"namespace": DEMO_NAMESPACE, "rooms": [{"name": r.name, "ready": r.ready} for r in rooms]}

    async def active(self) -> bool:
        ns = await self.namespaces.state.store.get_namespace(DEMO_NAMESPACE)
        return ns is not None and ns.status == NAMESPACE_ACTIVE

    async def create_room(self, request: Request) -> dict[str, Any]:
        name, _ = V.room_body(await read_body(request))
        if not await self.active():
            _, inp = V.namespace_body(
                {"serverType": "relay", "serverSpec": "realtime1.nano"}, with_name=False
            )
            with contextlib.suppress(ApiError):  # a concurrent call made it first
                await self.namespaces.create_namespace(DEMO_NAMESPACE, inp)
        try:
            room = await self.rooms.want_room(DEMO_NAMESPACE, name, [])
        except ApiError as exc:
            if exc.status != 409:
                raise
            room = await self.rooms.get_room(DEMO_NAMESPACE, name)  # picking an existing one is fine
        return {"name": room.name, "ready": room.ready}

    async def ticket(self, request: Request) -> dict[str, Any]:
        room_name = V.path_name(request.path_params["room"], "room", "room")
        user_id, _ = V.user_token_body(await read_body(request))
        deadline = time.monotonic() + TICKET_WAIT
        while not (room := await self.rooms.get_room(DEMO_NAMESPACE, room_name)).ready:
            if time.monotonic() > deadline:
                raise bad_request("room", f"room {room_name} is not ready", "demo.room.error.notReady")
            await asyncio.sleep(0.05)
        assert room.ip_address is not None and room.port is not None
        host = f"[{room.ip_address}]" if ":" in room.ip_address else room.ip_address
        token = self.authority.mint_user_token(user_id) if self.require_tokens else None
        return {
            "url": f"ws://{host}:{room.port}/",
            "ipAddress": room.ip_address,
            "port": room.port,
            "encryptionKey": room.encryption_key,
            "accessToken": token,
        }


def mount_demo(
    app: FastAPI, namespaces: Namespaces, rooms: Rooms, authority: Authority, config: ControlConfig
) -> bool:
    """Mounts /demo when the config asks for it (`relay dev`) and the bind address is loopback."""
    if not config.demo:
        return False
    if not is_loopback(config.host):
        log.warning("demo page off: the control plane is bound to %s, not a loopback address", config.host)
        return False
    DemoApi(namespaces, rooms, authority, config).mount(app)
    return True
