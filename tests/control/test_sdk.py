"""All twelve GS2-Realtime methods through the official `gs2` SDK, errors read back as its exceptions."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import pytest
from gs2 import auth, core, realtime

from relay.control.app import ControlPlane
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET, gs2_client


def create_ns(client: realtime.Gs2RealtimeRestClient, name: str, **extra: object) -> realtime.Namespace:
    req = (
        realtime.CreateNamespaceRequest()
        .with_name(name)
        .with_server_type("relay")
        .with_server_spec("realtime1.nano")
    )
    for key, value in extra.items():
        getattr(req, "with_" + key)(value)
    return client.create_namespace(req).item


def codes(exc: core.Gs2Exception) -> list[str]:
    return [e.code for e in exc.errors]


@pytest.fixture
def sdk(threaded_cp: ControlPlane):
    session, client = gs2_client(threaded_cp.url)
    yield client
    session.disconnect()


def test_namespace_methods(sdk: realtime.Gs2RealtimeRestClient) -> None:
    tx = realtime.TransactionSetting().with_enable_auto_run(True).with_queue_namespace_id("grn:gs2:q")
    tx2 = realtime.TransactionSettingV2().with_enable_parallel_execution(True)
    log = realtime.LogSetting().with_logging_namespace_id("grn:gs2:ap-northeast-1:owner:log:ns")
    ns = create_ns(
        sdk, "ns-1", description="first", transaction_setting=tx, transaction_setting_v2=tx2, log_setting=log
    )
    assert ns.namespace_id == "grn:gs2:ap-northeast-1:owner-0001:realtime:ns-1"
    assert ns.description == "first" and ns.server_type == "relay" and ns.server_spec == "realtime1.nano"
    assert ns.transaction_setting.enable_auto_run is True
    assert ns.transaction_setting.queue_namespace_id == "grn:gs2:q"
    assert ns.transaction_setting_v2.enable_parallel_execution is True
    assert ns.log_setting.logging_namespace_id.endswith(":log:ns")
    assert ns.revision == 0 and ns.created_at == ns.updated_at and ns.created_at > 1_600_000_000_000

    got = sdk.get_namespace(realtime.GetNamespaceRequest().with_namespace_name("ns-1")).item
    assert got.to_dict() == ns.to_dict()
    status = sdk.get_namespace_status(realtime.GetNamespaceStatusRequest().with_namespace_name("ns-1")).status
    assert status == "ACTIVE"

    updated = sdk.update_namespace(
        realtime.UpdateNamespaceRequest()
        .with_namespace_name("ns-1")
        .with_description("second")
        .with_server_type("relay")
        .with_server_spec("realtime1.nano")
        .with_transaction_setting_v2(tx2)
    ).item
    assert updated.description == "second" and updated.revision == 1
    assert updated.updated_at >= ns.updated_at and updated.created_at == ns.created_at
    assert updated.transaction_setting_v2.enable_parallel_execution is True

    deleted = sdk.delete_namespace(realtime.DeleteNamespaceRequest().with_namespace_name("ns-1")).item
    assert deleted.name == "ns-1" and deleted.revision == 2
    status = sdk.get_namespace_status(realtime.GetNamespaceStatusRequest().with_namespace_name("ns-1")).status
    assert status == "DELETED"
    with pytest.raises(core.NotFoundException) as e:
        sdk.get_namespace(realtime.GetNamespaceRequest().with_namespace_name("ns-1"))
    assert codes(e.value) == ["realtime.namespace.namespace.error.notFound"]


def test_describe_namespaces_pagination_and_prefix(sdk: realtime.Gs2RealtimeRestClient) -> None:
    names = [f"page-{i:02d}" for i in range(7)] + ["other-1", "other-2"]
    for name in reversed(names):
        create_ns(sdk, name)
    seen: list[str] = []
    token = None
    for _ in range(10):
        req = (
            realtime.DescribeNamespacesRequest()
            .with_name_prefix("page-")
            .with_limit(3)
            .with_page_token(token)
        )
        result = sdk.describe_namespaces(req)
        assert len(result.items) <= 3
        seen += [n.name for n in result.items]
        token = result.next_page_token
        if token is None:
            break
    assert seen == sorted(n for n in names if n.startswith("page-"))
    everything = sdk.describe_namespaces(realtime.DescribeNamespacesRequest()).items
    assert [n.name for n in everything] == sorted(names)
    with pytest.raises(core.BadRequestException) as e:
        sdk.describe_namespaces(realtime.DescribeNamespacesRequest().with_page_token("garbage!"))
    assert codes(e.value) == ["realtime.pageToken.error.invalid"]


def test_room_methods(sdk: realtime.Gs2RealtimeRestClient) -> None:
    create_ns(sdk, "rooms")
    room = sdk.want_room(
        realtime.WantRoomRequest()
        .with_namespace_name("rooms")
        .with_name("r-1")
        .with_notification_user_ids(["u1", "u2"])
    ).item
    assert room.room_id == "grn:gs2:ap-northeast-1:owner-0001:realtime:rooms:room:r-1"
    assert room.notification_user_ids == ["u1", "u2"]
    assert room.ip_address is None and room.port is None and room.encryption_key is None  # not ready yet
    for i in range(5):
        sdk.want_room(realtime.WantRoomRequest().with_namespace_name("rooms").with_name(f"r-{i + 2}"))
    got = sdk.get_room(realtime.GetRoomRequest().with_namespace_name("rooms").with_room_name("r-1")).item
    assert got.to_dict() == room.to_dict()
    first = sdk.describe_rooms(realtime.DescribeRoomsRequest().with_namespace_name("rooms").with_limit(4))
    assert [r.name for r in first.items] == ["r-1", "r-2", "r-3", "r-4"] and first.next_page_token
    rest = sdk.describe_rooms(
        realtime.DescribeRoomsRequest().with_namespace_name("rooms").with_page_token(first.next_page_token)
    )
    assert [r.name for r in rest.items] == ["r-5", "r-6"] and rest.next_page_token is None

    with pytest.raises(core.ConflictException) as e:
        sdk.want_room(realtime.WantRoomRequest().with_namespace_name("rooms").with_name("r-1"))
    assert codes(e.value) == ["realtime.room.name.error.duplicate"]

    deleted = sdk.delete_room(
        realtime.DeleteRoomRequest().with_namespace_name("rooms").with_room_name("r-1")
    ).item
    assert deleted.name == "r-1"
    with pytest.raises(core.NotFoundException):
        sdk.get_room(realtime.GetRoomRequest().with_namespace_name("rooms").with_room_name("r-1"))
    with pytest.raises(core.NotFoundException):
        sdk.delete_room(realtime.DeleteRoomRequest().with_namespace_name("rooms").with_room_name("r-1"))
    with pytest.raises(core.NotFoundException):
        sdk.want_room(realtime.WantRoomRequest().with_namespace_name("missing").with_name("x"))

    sdk.delete_namespace(realtime.DeleteNamespaceRequest().with_namespace_name("rooms"))
    with pytest.raises(core.NotFoundException):
        sdk.describe_rooms(realtime.DescribeRoomsRequest().with_namespace_name("rooms"))


def test_now_version_and_user_tokens(threaded_cp: ControlPlane, sdk: realtime.Gs2RealtimeRestClient) -> None:
    before = int(time.time() * 1000)
    assert before - 5 <= sdk.now(realtime.NowRequest()).timestamp <= int(time.time() * 1000) + 5
    assert sdk.get_service_version(realtime.GetServiceVersionRequest()).item == "0.1.0"

    # A game backend mints a user token with the project token (GS2-Auth's login call)...
    auth_client = auth.Gs2AuthRestClient(sdk.session)
    login = auth_client.login(auth.LoginRequest().with_user_id("player-1"))
    assert login.user_id == "player-1" and login.expire > time.time() * 1000
    assert threaded_cp.authority.verify_user_token(login.token).sub == "player-1"
    # ...which `now` accepts in X-GS2-ACCESS-TOKEN; a forged one is refused.
    assert sdk.now(realtime.NowRequest().with_access_token(login.token)).timestamp >= before
    with pytest.raises(core.UnauthorizedException) as e:
        sdk.now(realtime.NowRequest().with_access_token(login.token[:-4] + "AAAA"))
    assert codes(e.value) == ["realtime.accessToken.error.invalid"]
    # A project token is not a user token and vice versa.
    assert threaded_cp.authority.verify_user_token(sdk.session.project_token) is None
    assert not threaded_cp.authority.verify_project_token(login.token)


def test_validation_errors(sdk: realtime.Gs2RealtimeRestClient) -> None:
    with pytest.raises(core.BadRequestException) as e:
        sdk.create_namespace(realtime.CreateNamespaceRequest().with_name("bad name!").with_server_type("tcp"))
    assert codes(e.value) == [
        "realtime.namespace.name.error.invalid",
        "realtime.namespace.serverType.error.invalid",
        "realtime.namespace.serverSpec.error.require",
    ]
    assert [err.component for err in e.value.errors] == ["name", "serverType", "serverSpec"]
    with pytest.raises(core.BadRequestException) as e:
        create_ns(sdk, "x" * 129)
    assert codes(e.value) == ["realtime.namespace.name.error.tooLong"]
    create_ns(sdk, "x" * 128)  # the limit itself is fine
    with pytest.raises(core.BadRequestException) as e:
        create_ns(sdk, "d", description="d" * 1025)
    assert codes(e.value) == ["realtime.namespace.description.error.tooLong"]
    with pytest.raises(core.BadRequestException) as e:
        create_ns(sdk, "n", create_notification=realtime.NotificationSetting().with_enable("Maybe"))
    assert codes(e.value) == ["realtime.namespace.createNotification.enable.error.invalid"]
    with pytest.raises(core.BadRequestException) as e:
        create_ns(sdk, "l", log_setting=realtime.LogSetting())
    assert codes(e.value) == ["realtime.namespace.logSetting.loggingNamespaceId.error.require"]
    for limit in (0, 1001):
        with pytest.raises(core.BadRequestException) as e:
            sdk.describe_namespaces(realtime.DescribeNamespacesRequest().with_limit(limit))
        assert codes(e.value) == ["realtime.limit.error.invalid"]
    assert sdk.describe_namespaces(realtime.DescribeNamespacesRequest().with_limit(1000)).items

    create_ns(sdk, "v")
    with pytest.raises(core.BadRequestException) as e:
        sdk.want_room(
            realtime.WantRoomRequest()
            .with_namespace_name("v")
            .with_name("r")
            .with_notification_user_ids([f"u{i}" for i in range(1001)])
        )
    assert codes(e.value) == ["realtime.room.notificationUserIds.error.tooMany"]
    ok = sdk.want_room(
        realtime.WantRoomRequest()
        .with_namespace_name("v")
        .with_name("r")
        .with_notification_user_ids([f"u{i}" for i in range(1000)])
    )
    assert len(ok.item.notification_user_ids) == 1000
    with pytest.raises(core.BadRequestException):
        sdk.want_room(realtime.WantRoomRequest().with_namespace_name("v"))
    with pytest.raises(core.ConflictException) as e:
        create_ns(sdk, "v")
    assert codes(e.value) == ["realtime.namespace.name.error.duplicate"]
    with pytest.raises(core.NotFoundException):
        sdk.update_namespace(
            realtime.UpdateNamespaceRequest()
            .with_namespace_name("nope")
            .with_server_type("relay")
            .with_server_spec("realtime1.nano")
        )


def test_unauthorized(threaded_cp: ControlPlane) -> None:
    session = core.Gs2RestSession(
        core.BasicGs2Credential(CLIENT_ID, "wrong"), "ap-northeast-1", steady_endpoint=threaded_cp.url
    )
    with pytest.raises(core.UnauthorizedException):
        session.connect()
    forged = core.Gs2RestSession(
        core.ProjectTokenGs2Credential(CLIENT_ID, "not-a-token"),
        "ap-northeast-1",
        steady_endpoint=threaded_cp.url,
    )
    forged.connect()
    try:
        with pytest.raises(core.UnauthorizedException):
            realtime.Gs2RealtimeRestClient(forged).describe_namespaces(realtime.DescribeNamespacesRequest())
    finally:
        forged.disconnect()


def test_raw_http_edge_cases(threaded_cp: ControlPlane) -> None:
    """What other SDKs and broken clients send: "null" query values, gzip, garbage bodies."""
    url = threaded_cp.url
    with httpx.Client(base_url=url, timeout=5.0) as http:
        r = http.post(
            "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        )
        body = r.json()
        assert r.status_code == 200 and body["token_type"] == "Bearer" and body["owner_id"] == "owner-0001"
        assert body["expires_in"] == 3600
        h = {"Authorization": "Bearer " + body["access_token"], "X-GS2-CLIENT-ID": CLIENT_ID}
        ns = {"name": "raw", "serverType": "relay", "serverSpec": "realtime1.nano"}
        r = http.post(
            "/realtime/",
            content=gzip.compress(json.dumps(ns).encode()),
            headers={**h, "Content-Encoding": "gzip"},
        )
        assert r.status_code == 200 and r.json()["item"]["name"] == "raw"
        r = http.get(
            "/realtime/", params={"namePrefix": "null", "pageToken": "null", "limit": "null"}, headers=h
        )
        assert r.status_code == 200 and [n["name"] for n in r.json()["items"]] == ["raw"]
        assert r.json()["nextPageToken"] is None
        r = http.get("/realtime/raw/room", params={"pageToken": "null", "limit": "null"}, headers=h)
        assert r.status_code == 200 and r.json() == {"items": [], "nextPageToken": None}

        bad = [
            (b"{not json", {}),
            (b"[1, 2]", {}),
            (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}),
            (json.dumps({"name": 5, "serverType": ["relay"], "serverSpec": None}).encode(), {}),
            (
                json.dumps(
                    {
                        "name": "t",
                        "serverType": "relay",
                        "serverSpec": "realtime1.nano",
                        "transactionSetting": {"enableAutoRun": "yes"},
                    }
                ).encode(),
                {},
            ),
            (
                json.dumps(
                    {
                        "name": "t",
                        "serverType": "relay",
                        "serverSpec": "realtime1.nano",
                        "createNotification": "on",
                    }
                ).encode(),
                {},
            ),
        ]
        for content, extra in bad:
            r = http.post("/realtime/", content=content, headers={**h, **extra})
            assert r.status_code == 400, content
            errors = json.loads(r.json()["message"])
            assert errors and all({"component", "message", "code"} <= set(e) for e in errors)
        r = http.post("/realtime/raw/room", json={"name": "r", "notificationUserIds": "u1"}, headers=h)
        assert r.status_code == 400
        r = http.get("/realtime/raw/room", params={"limit": "ten"}, headers=h)
        assert r.status_code == 400
        r = http.get("/realtime/", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and json.loads(r.json()["message"])[0]["component"] == "authorization"
        r = http.get("/realtime/")
        assert r.status_code == 401
        r = http.post("/identifier/projectToken/login", content=b"\x00\x01")
        assert r.status_code == 400
        r = http.get("/no/such/path")
        assert r.status_code == 404 and "message" in r.json()
