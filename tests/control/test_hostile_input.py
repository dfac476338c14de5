"""Unauthenticated and malformed input: values that could be stored but not answered, nesting,
gzip bombs, control characters in paths, login guessing, and the gateway's refusal. Each is
refused with GS2's error and changes nothing; the API stays answerable for everyone else."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from gs2 import realtime

from relay.control.app import ControlPlane
from tests.control.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    gs2_client,
    login,
    make_config,
    threaded_control_plane,
)
from tests.control.test_durability import start_control

NAMESPACE = {"name": "ok", "serverType": "relay", "serverSpec": "realtime1.nano"}
CREDENTIALS = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
LOGIN = "/identifier/projectToken/login"


def bearer(http: httpx.Client) -> dict[str, str]:
    return {"Authorization": "Bearer " + http.post(LOGIN, json=CREDENTIALS).json()["access_token"]}


def errors_of(r: httpx.Response) -> list[dict[str, str]]:
    return json.loads(r.json()["message"])


def raw_json(value: Any) -> bytes:
    """JSON text as a client may send it: lone surrogates escaped, NaN and Infinity as words."""
    return json.dumps(value).encode()


def test_values_that_could_not_be_answered_are_refused_and_listings_stay_readable(tmp_path: Path) -> None:
    """Issue 19, defect 3: a lone surrogate or a NaN was stored, answered 500, and from then on
    every listing of it answered 500 too (also after a restart, also through the SDK)."""
    config = make_config(tmp_path, provisioner="none")
    with threaded_control_plane(config) as cp, httpx.Client(base_url=cp.url, timeout=5) as http:
        h = bearer(http)
        assert http.post("/realtime/", json=NAMESPACE, headers=h).status_code == 200
        assert http.post("/realtime/ok/room", json={"name": "r"}, headers=h).status_code == 200
        bad_namespaces = [
            {**NAMESPACE, "name": "s1", "description": "\ud800"},
            {**NAMESPACE, "name": "s2", "transactionSetting": {"x": float("nan")}},
            {**NAMESPACE, "name": "s3", "transactionSetting": {"x": float("inf")}},
            {**NAMESPACE, "name": "s4", "createNotification": {"\udfff": 1}},
            {**NAMESPACE, "name": "s5", "logSetting": {"loggingNamespaceId": "grn:\ud800"}},
        ]
        for body in bad_namespaces:
            r = http.post("/realtime/", content=raw_json(body), headers=h)
            assert r.status_code == 400, (body, r.text)
            assert errors_of(r)[0]["code"] == "core.body.error.invalidJson"
            assert http.get(f"/realtime/{body['name']}", headers=h).status_code == 404  # nothing stored
        r = http.post("/realtime/", content=b'{"name": "s6", "description": 1e999}', headers=h)
        assert r.status_code == 400  # a number JSON cannot give back
        r = http.put("/realtime/ok", content=raw_json({**NAMESPACE, "description": "\ud800"}), headers=h)
        assert r.status_code == 400
        r = http.post(
            "/realtime/ok/room", content=raw_json({"name": "u", "notificationUserIds": ["\ud800"]}), headers=h
        )
        assert r.status_code == 400
        for path in ("/realtime/", "/realtime/ok", "/realtime/ok/room", "/realtime/ok/room/r"):
            assert http.get(path, headers=h).status_code == 200, path
        assert http.get("/realtime/ok/room/u", headers=h).status_code == 404
        session, client = gs2_client(cp.url)
        try:
            names = [n.name for n in client.describe_namespaces(realtime.DescribeNamespacesRequest()).items]
            assert names == ["ok"]
        finally:
            session.disconnect()


def test_deep_nesting_is_a_400_for_anyone(threaded_cp: ControlPlane) -> None:
    """Issue 19, defect 4: `[` * 50000 to the login (no token needed) escaped as a 500."""
    with httpx.Client(base_url=threaded_cp.url, timeout=5) as http:
        deep_but_parsable = b"[" * 40 + b"]" * 40  # within Python's recursion, past what is accepted
        for body in (b"[" * 50000, b'{"a":' * 50000, b'{"client_id": ' + deep_but_parsable + b"}"):
            r = http.post(LOGIN, content=body)
            assert r.status_code == 400, r.text
            assert errors_of(r)[0]["code"] == "core.body.error.invalidJson"
        assert http.post(LOGIN, json=CREDENTIALS).status_code == 200


def test_a_token_sent_under_another_client_id_is_refused(threaded_cp: ControlPlane) -> None:
    """GS2's SDK sends X-GS2-CLIENT-ID beside the bearer token: one naming another client than the
    token's is a 401 in GS2's error format, and creates nothing."""
    with httpx.Client(base_url=threaded_cp.url, timeout=5) as http:
        h = bearer(http)
        r = http.post("/realtime/", json=NAMESPACE, headers={**h, "X-GS2-CLIENT-ID": "someone-else"})
        assert r.status_code == 401
        assert [(e["component"], e["code"]) for e in errors_of(r)] == [
            ("authorization", "core.auth.error.unauthorized")
        ]
        assert http.get("/realtime/ok/status", headers=h).status_code == 404
        same = {**h, "X-GS2-CLIENT-ID": CLIENT_ID}
        assert http.post("/realtime/", json=NAMESPACE, headers=same).status_code == 200


def test_page_tokens_and_limits_are_what_the_api_hands_out(threaded_cp: ControlPlane) -> None:
    """Found in review: a page token naming text no store can encode (JSON's \\ud800) was a 500 on
    both stores, and a limit of "1_0" or other scripts' digits passed as 10."""
    with httpx.Client(base_url=threaded_cp.url, timeout=5) as http:
        h = bearer(http)
        assert http.post("/realtime/", json=NAMESPACE, headers=h).status_code == 200
        for scope, path in (("namespaces", "/realtime/"), ("rooms:ok", "/realtime/ok/room")):
            for after in ("\\ud800", "a\\n", "x" * 200, "a b"):
                raw = ('{"s":"' + scope + '","a":"' + after + '"}').encode()  # JSON escapes as written
                token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
                r = http.get(path, params={"pageToken": token}, headers=h)
                assert r.status_code == 400, (path, after, r.text)
                assert errors_of(r)[0]["code"] == "realtime.pageToken.error.invalid"
        for limit in ("1_0", "\u0661\u0660", " 10", "+10", "10.0", "1" * 4000):
            r = http.get("/realtime/", params={"limit": limit}, headers=h)
            assert r.status_code == 400, (limit, r.text)
            assert errors_of(r)[0]["code"] == "realtime.limit.error.invalid"
        assert http.get("/realtime/", params={"limit": "10"}, headers=h).status_code == 200


def test_a_control_character_in_the_path_is_not_a_route(threaded_cp: ControlPlane) -> None:
    """`$` in Starlette's route patterns matched before a trailing newline: `/realtime/%0A` was the
    namespace listing (found by schemathesis)."""
    with httpx.Client(base_url=threaded_cp.url, timeout=5) as http:
        h = bearer(http)
        paths = ("/realtime/%0A", "/realtime/%0a", "/realtime%0A", "/realtime/now%0A", "/realtime/x/room%0A")
        for path in (*paths, "/realtime/%09", "/healthz%0A"):
            r = http.get(path, headers=h)
            assert r.status_code == 400, (path, r.text)
            assert errors_of(r)[0]["code"] == "core.request.error.invalidPath"
        assert http.get("/realtime/", headers=h).status_code == 200


def gzip_bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros as a gzip body of about a KiB per MiB (members one after another)."""
    return gzip.compress(bytes(1 << 20), 9) * megabytes


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_gzip_bomb_is_refused_without_holding_up_the_api(tmp_path: Path) -> None:
    """Issue 19, defect 5: a 1 MiB gzip body to the login took the process past 2 GiB and froze
    every request for seconds. The body is inflated as it comes, at most 1 MiB of it."""
    proc, url = await start_control(tmp_path / "data", tmp_path / "control.log")
    try:
        bomb = gzip_bomb(384)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await http.get("/healthz")).status_code == 200
            before = peak_rss_mib(proc.pid)
            waits: list[float] = []
            sending = True

            async def health() -> None:
                while sending:
                    t0 = time.perf_counter()
                    assert (await http.get("/healthz")).status_code == 200
                    waits.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(health())
            await asyncio.sleep(0.05)
            for _ in range(3):
                r = await http.post(LOGIN, content=bomb, headers={"Content-Encoding": "gzip"})
                assert r.status_code == 400 and errors_of(r)[0]["code"] == "core.body.error.tooLarge"
            sending = False
            await watcher
            grew = peak_rss_mib(proc.pid) - before
            assert grew < 64, f"peak RSS grew {grew:.0f} MiB"
            assert max(waits) < 1.0, f"/healthz waited {max(waits):.2f} s"
            # Within the limit, gzip (several members too) still works.
            body = gzip.compress(json.dumps(CREDENTIALS).encode())
            r = await http.post(LOGIN, content=body, headers={"Content-Encoding": "gzip"})
            assert r.status_code == 200
            r = await http.post(
                LOGIN, content=bytes(1 << 20) + b"{}", headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 400 and errors_of(r)[0]["code"] == "core.body.error.tooLarge"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def test_failed_logins_are_limited_per_source_and_per_client(tmp_path: Path) -> None:
    """Issue 19, defect 7: 300 wrong secrets in 0.2 s were all answered 401 and the right one
    worked at once. Now a source, or a client id, out of tries waits for them to come back."""
    config = make_config(
        tmp_path,
        provisioner="none",
        login_failures_per_source=5,
        login_failures_per_client=8,
        login_failure_window=2.0,
    )
    wrong = {"client_id": CLIENT_ID, "client_secret": "guess"}
    async with ControlPlane(config) as cp:
        a = httpx.AsyncClient(base_url=cp.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1"))
        b = httpx.AsyncClient(base_url=cp.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"))
        c = httpx.AsyncClient(base_url=cp.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3"))
        async with a, b, c:
            statuses = [(await a.post(LOGIN, json=wrong)).status_code for _ in range(7)]
            assert statuses == [401] * 5 + [429] * 2
            r = await a.post(LOGIN, json=CREDENTIALS)
            assert r.status_code == 429 and float(r.headers["Retry-After"]) > 0  # not even the right one
            assert errors_of(r)[0]["code"] == "identifier.projectToken.error.tooManyRequests"
            r = await a.post(LOGIN, json={**wrong, "client_id": "someone-else"})
            assert r.status_code == 429  # the source is out of tries, whatever client it names
            assert (await b.post(LOGIN, json=CREDENTIALS)).status_code == 200
            # The client id has 8 tries from anywhere: 5 spent from a, 3 more from b.
            assert [(await b.post(LOGIN, json=wrong)).status_code for _ in range(4)] == [401] * 3 + [429]
            assert (await c.post(LOGIN, json=CREDENTIALS)).status_code == 429
            assert (await c.post(LOGIN, json={**wrong, "client_id": "x"})).status_code == 401
            await asyncio.sleep(2.0 / 5 + 0.1)  # a's source and the client id have one try back
            assert (await a.post(LOGIN, json=CREDENTIALS)).status_code == 200


async def test_the_gateway_refuses_a_bad_token_with_close_code_4401(cp: ControlPlane) -> None:
    """Issue 19, defect 10: the docs said close code 4401, the gateway answered HTTP 403 (which a
    browser's WebSocket cannot even read)."""
    url = cp.url.replace("http://", "ws://") + "/gateway"
    for suffix in ("?token=forged", ""):
        async with websockets.connect(url + suffix) as ws:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def closed_after(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sends: list[bytes]
) -> float:
    """Sends `sends` 0.2 s apart (stopping once the server has closed) and returns the seconds
    until the server closed the connection."""
    start = time.monotonic()

    async def trickle() -> None:
        for piece in sends:
            writer.write(piece)
            await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
        return time.monotonic() - start
    finally:
        trickling.cancel()
        writer.close()


async def test_a_request_that_does_not_arrive_whole_in_time_is_disconnected(tmp_path: Path) -> None:
    """uvicorn alone kept a silent connection, or one trickling header lines or its body, open
    for as long as its client liked (measured: still open after 12 s), so slow clients could
    hold every file descriptor of the control plane. Each request now has request_deadline
    seconds to arrive; answering it is not timed, kept-alive connections and gateway sockets
    live on."""
    config = make_config(tmp_path, request_deadline=1.0)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        port = cp.port
        headers = [b"GET /healthz HTTP/1.1\r\n"] + [b"x-slow: %d\r\n" % i for i in range(30)]
        body = [b"POST " + LOGIN.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 200\r\n\r\n"]
        body += [b"{"] + [b" "] * 30
        for sends in ([], headers, body):
            seconds = await closed_after(*await asyncio.open_connection("127.0.0.1", port), sends)
            assert 0.9 <= seconds < 3.0, (sends[:1], seconds)
            assert (await http.get("/healthz")).status_code == 200  # everyone else is answered

        # a kept-alive connection asks again and again past the deadline: each request is timed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(4):
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(
                int(v)
                for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:-2])
                if k == b"content-length"
            )
            await reader.readexactly(length)
            await asyncio.sleep(0.5)
        writer.close()

        # a gateway socket outlives the deadline (its upgrade ended the request)
        h = await login(http)
        token = (await http.post("/auth/login", json={"userId": "u"}, headers=h)).json()["token"]
        async with websockets.connect(cp.url.replace("http://", "ws://") + f"/gateway?token={token}") as ws:
            await asyncio.sleep(1.5)
            await asyncio.wait_for(await ws.ping(), 5)
