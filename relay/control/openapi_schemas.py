"""JSON Schemas of GS2-Realtime's bodies and results, as documented in /openapi.json.

Requests are parsed by hand (gzip bodies, GS2 error lists), so FastAPI cannot derive these;
they are written to say exactly what the handlers accept and answer (schemathesis checks it).
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9\\-_.]+$"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def opt_str(max_len: int) -> dict[str, Any]:
    return nullable({"type": "string", "maxLength": max_len})


OPT_BOOL = nullable({"type": "boolean"})

TRANSACTION_SETTING = {
    "type": "object",
    "description": "Stored and echoed as given (GS2 TransactionSetting).",
    "properties": {
        "enableAutoRun": OPT_BOOL,
        "enableAtomicCommit": OPT_BOOL,
        "transactionUseDistributor": OPT_BOOL,
        "commitScriptResultInUseDistributor": OPT_BOOL,
        "acquireActionUseJobQueue": OPT_BOOL,
        "enableSequentialExecution": OPT_BOOL,
        "distributorNamespaceId": opt_str(1024),
        "queueNamespaceId": opt_str(1024),
        "keyId": opt_str(1024),
    },
    "additionalProperties": True,
}
TRANSACTION_SETTING_V2 = {
    "type": "object",
    "description": "Stored and echoed as given (newer SDKs' TransactionSettingV2).",
    "properties": {"distributorNamespaceId": opt_str(1024), "enableParallelExecution": OPT_BOOL},
    "additionalProperties": True,
}
NOTIFICATION_SETTING = {
    "type": "object",
    "description": "Room-ready push. `enable` defaults to Enabled when the setting is given.",
    "properties": {
        "gatewayNamespaceId": opt_str(1024),
        "enableTransferMobileNotification": OPT_BOOL,
        "sound": opt_str(1024),
        "enable": nullable({"type": "string", "enum": ["Enabled", "Disabled"]}),
        "mobileNotificationMessages": nullable({"type": "array"}),
    },
    "additionalProperties": True,
}
LOG_SETTING = {
    "type": "object",
    "properties": {
        "loggingNamespaceId": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^grn:"}
    },
    "required": ["loggingNamespaceId"],
    "additionalProperties": True,
}

NAMESPACE_FIELDS: dict[str, Any] = {
    "description": opt_str(1024),
    "transactionSetting": nullable(TRANSACTION_SETTING),
    "transactionSettingV2": nullable(TRANSACTION_SETTING_V2),
    "serverType": {"type": "string", "enum": ["relay"]},
    "serverSpec": {"type": "string", "enum": ["realtime1.nano"]},
    "createNotification": nullable(NOTIFICATION_SETTING),
    "logSetting": nullable(LOG_SETTING),
    "contextStack": opt_str(65536),
}
CREATE_NAMESPACE_BODY = {
    "type": "object",
    "properties": {"name": NAME, **NAMESPACE_FIELDS},
    "required": ["name", "serverType", "serverSpec"],
}
UPDATE_NAMESPACE_BODY = {
    "type": "object",
    "properties": dict(NAMESPACE_FIELDS),
    "required": ["serverType", "serverSpec"],
}
WANT_ROOM_BODY = {
    "type": "object",
    "properties": {
        "name": NAME,
        "notificationUserIds": nullable(
            {"type": "array", "maxItems": 1000, "items": {"type": "string", "minLength": 1, "maxLength": 128}}
        ),
        "contextStack": opt_str(65536),
    },
    "required": ["name"],
}
LOGIN_BODY = {
    "type": "object",
    "properties": {"client_id": {"type": "string"}, "client_secret": {"type": "string"}},
    "required": ["client_id", "client_secret"],
}
USER_TOKEN_BODY = {
    "type": "object",
    "properties": {
        "userId": {"type": "string", "minLength": 1, "maxLength": 128},
        "timeOffset": nullable({"type": "integer"}),
        "expiresIn": nullable({"type": "integer", "minimum": 1, "maximum": 2592000}),
        "contextStack": opt_str(65536),
    },
    "required": ["userId"],
}

NAMESPACE = {
    "type": "object",
    "properties": {
        "namespaceId": {"type": "string", "maxLength": 1024},
        "name": NAME,
        **{k: v for k, v in NAMESPACE_FIELDS.items() if k != "contextStack"},
        "createdAt": {"type": "integer"},
        "updatedAt": {"type": "integer"},
        "revision": {"type": "integer", "minimum": 0},
    },
    "required": ["namespaceId", "name", "serverType", "serverSpec", "createdAt", "updatedAt", "revision"],
}
ROOM = {
    "type": "object",
    "properties": {
        "roomId": {"type": "string", "maxLength": 1024},
        "name": NAME,
        "ipAddress": opt_str(128),
        "port": nullable({"type": "integer", "minimum": 0, "maximum": 65535}),
        "encryptionKey": opt_str(256),
        "notificationUserIds": {"type": "array", "items": {"type": "string"}},
        "createdAt": {"type": "integer"},
        "updatedAt": {"type": "integer"},
        "revision": {"type": "integer", "minimum": 0},
    },
    "required": ["roomId", "name", "notificationUserIds", "createdAt", "updatedAt", "revision"],
}
ERROR = {
    "type": "object",
    "description": "GS2 error: `message` is a JSON string holding [{component, message, code}].",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}


def item_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"item": schema}, "required": ["item"]}


def page_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": schema}, "nextPageToken": opt_str(1024)},
        "required": ["items"],
    }


STATUS_RESULT = {
    "type": "object",
    "properties": {"status": {"type": "string", "enum": ["ACTIVE", "DELETED"]}},
    "required": ["status"],
}
NOW_RESULT = {"type": "object", "properties": {"timestamp": {"type": "integer"}}, "required": ["timestamp"]}
VERSION_RESULT = item_of({"type": "string"})
LOGIN_RESULT = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"type": "string"},
        "expires_in": {"type": "integer"},
        "owner_id": {"type": "string"},
    },
    "required": ["access_token", "token_type", "expires_in", "owner_id"],
}
USER_TOKEN_RESULT = {
    "type": "object",
    "properties": {"token": {"type": "string"}, "userId": {"type": "string"}, "expire": {"type": "integer"}},
    "required": ["token", "userId", "expire"],
}

ERROR_TEXT = {
    400: "Bad request: validation failed (GS2 error list)",
    401: "Unauthorized: missing or invalid token",
    404: "Not found",
    409: "Conflict: already exists",
    429: "Too many failed logins from this source or for this client id (Retry-After says when)",
    503: "Service unavailable: no capacity for another room, or the store cannot be written",
}


def responses(
    ok: dict[str, Any], *errors: int, links: dict[str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        200: {"description": "OK", "content": {"application/json": {"schema": ok}}}
    }
    if links:
        out[200]["links"] = links
    for status in errors:
        out[status] = {"description": ERROR_TEXT[status], "content": {"application/json": {"schema": ERROR}}}
    return out


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": NAME} for n in names]


def query_params(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "required": False, "schema": s} for n, s in specs]


LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 30}
PAGE_TOKEN = {"type": "string", "maxLength": 1024}
NAME_PREFIX = {"type": "string", "maxLength": 64}


def link(operation_id: str, body: dict[str, str] | None = None, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link from a 200 answer to the next call it allows (runtime expressions)."""
    out: dict[str, Any] = {"operationId": operation_id, "parameters": parameters}
    if body is not None:
        out["requestBody"] = body
    return out


NS_NAME = "$response.body#/item/name"
ROOM_IN_NS = {"namespaceName": "$request.path.namespaceName", "roomName": "$response.body#/item/name"}
NAMESPACE_LINKS = {
    "GetNamespace": link("getNamespace", namespaceName=NS_NAME),
    "WantRoom": link("wantRoom", namespaceName=NS_NAME),
    "DescribeRooms": link("describeRooms", namespaceName=NS_NAME),
    "DeleteNamespace": link("deleteNamespace", namespaceName=NS_NAME),
}
"""From a namespace answered (created, read, updated): what can be done in it."""
ROOM_LINKS = {
    "GetRoom": link("getRoom", **ROOM_IN_NS),
    "DeleteRoom": link("deleteRoom", **ROOM_IN_NS),
}
"""From a room answered (wanted, read): reading and deleting it."""
DELETED_ROOM_LINKS = {
    "GetRoom": link("getRoom", **ROOM_IN_NS),
    "WantRoomAgain": link(
        "wantRoom", {"name": "$response.body#/item/name"}, namespaceName="$request.path.namespaceName"
    ),
}
"""From a room deleted: its name is free again (and reading it is a 404)."""
