"""Request validation exactly as the GS2-Realtime reference tables say (required, enums, lengths).

Hand-written instead of pydantic so that every violation becomes GS2's error list
(component = the request field, code = realtime.<model>.<field>.error.<kind>) and so that
GS2's SDK habits (nested objects serialised with explicit nulls, "null" query values,
contextStack in bodies) are accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from relay.control.errors import ApiError, ErrorItem, bad_request

NAME_RE = re.compile(r"^[A-Za-z0-9\-_.]+$")
NAME_MAX = 128
DESCRIPTION_MAX = 1024
GRN_MAX = 1024
NAME_PREFIX_MAX = 64
PAGE_TOKEN_MAX = 1024
LIMIT_DEFAULT = 30
LIMIT_MIN, LIMIT_MAX = 1, 1000
NOTIFICATION_USERS_MAX = 1000
USER_ID_MAX = 128
MAX_BODY_BYTES = 1 << 20
SERVER_TYPES = ("relay",)
SERVER_SPECS = ("realtime1.nano",)
NOTIFICATION_ENABLE = ("Enabled", "Disabled")

TRANSACTION_BOOLS = (
    "enableAutoRun",
    "enableAtomicCommit",
    "transactionUseDistributor",
    "commitScriptResultInUseDistributor",
    "acquireActionUseJobQueue",
    "enableSequentialExecution",
)
TRANSACTION_STRINGS = ("distributorNamespaceId", "queueNamespaceId", "keyId")
TRANSACTION_V2_BOOLS = ("enableParallelExecution",)
TRANSACTION_V2_STRINGS = ("distributorNamespaceId",)


class Errors:
    """Collects every violation of one request, GS2 style."""

    __slots__ = ("items", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.items: list[ErrorItem] = []

    def add(self, component: str, kind: str, message: str) -> None:
        self.items.append(ErrorItem(component, message, f"realtime.{self.model}.{component}.error.{kind}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise ApiError(400, self.items)


# --- bodies ------------------------------------------------------------------------------------
MAX_JSON_DEPTH = 32
"""Nesting a body may have (GS2's bodies nest three deep): deeper is a 400, never a RecursionError."""


def body_too_large() -> ApiError:
    return bad_request("body", f"body too large (at most {MAX_BODY_BYTES} bytes)", "core.body.error.tooLarge")


def _invalid_encoding(what: str) -> ApiError:
    return bad_request("body", f"body is not valid {what}", "core.body.error.invalidEncoding")


def _invalid_json(message: str) -> ApiError:
    return bad_request("body", message, "core.body.error.invalidJson")


class BodyDecoder:
    """A request body decoded as it arrives (`feed` each chunk, then `result`): at most
    MAX_BODY_BYTES are read, and at most MAX_BODY_BYTES come out of gzip or deflate, so a
    compressed body (a gzip bomb) costs the inflating of one MiB at most, chunk by chunk, never
    a pass over all it would inflate to. Every refusal is GS2's 400."""

    __slots__ = ("_inflater", "_out", "_read", "_wbits")

    def __init__(self, content_encoding: str | None) -> None:
        encoding = (content_encoding or "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._wbits: int | None = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            self._wbits = zlib.MAX_WBITS
        elif encoding in ("", "identity"):
            self._wbits = None
        else:
            raise bad_request(
                "body", f"unsupported Content-Encoding {encoding}", "core.body.error.invalidEncoding"
            )
        self._inflater = None if self._wbits is None else zlib.decompressobj(self._wbits)
        self._read = 0
        self._out = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._read += len(chunk)
        if self._read > MAX_BODY_BYTES:
            raise body_too_large()
        if self._inflater is None:
            self._out += chunk
            return
        data = chunk
        try:
            while data:
                if self._inflater.eof:  # a gzip member ended: another may follow
                    assert self._wbits is not None
                    self._inflater = zlib.decompressobj(self._wbits)
                self._append(self._inflater.decompress(data, MAX_BODY_BYTES + 1 - len(self._out)))
                data = self._inflater.unused_data if self._inflater.eof else b""
        except zlib.error:
            raise _invalid_encoding("gzip" if self._wbits != zlib.MAX_WBITS else "deflate") from None

    def _append(self, data: bytes) -> None:
        self._out += data
        if len(self._out) > MAX_BODY_BYTES:
            raise body_too_large()

    def result(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty), every value one that can be answered back."""
        if self._inflater is not None and not self._inflater.eof and (self._read or self._out):
            raise _invalid_encoding("gzip" if self._wbits != zlib.MAX_WBITS else "deflate")
        return decode_json(bytes(self._out))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes) -> dict[str, Any]:
    """A JSON object; what is accepted is what can be answered: no NaN or Infinity (nor a number
    too large for a float), no lone surrogate in a string or a key, at most MAX_JSON_DEPTH deep."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _invalid_json(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid_json("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise _invalid_json("body must be a JSON object")
    _check_answerable(data)
    return data


def _check_answerable(data: Any) -> None:
    """Walks the value (without recursion) for what JSON or UTF-8 could not give back."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    raise _invalid_json("body holds a string that is not Unicode text") from None
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _invalid_json("body holds a number out of range")
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _invalid_json(f"body nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth))
                stack.append((item, depth + 1))


def _string(
    errors: Errors,
    data: dict[str, Any],
    key: str,
    max_len: int,
    required: bool = False,
    pattern: bool = False,
) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            errors.add(key, "require", f"{key} is required")
        return None
    if not isinstance(value, str):
        errors.add(key, "invalid", f"{key} must be a string")
        return None
    if len(value) > max_len:
        errors.add(key, "tooLong", f"{key} must be at most {max_len} characters")
        return None
    if pattern and not NAME_RE.fullmatch(value):
        errors.add(key, "invalid", f"{key} may contain only alphanumerics, '-', '_' and '.'")
        return None
    return value


def _enum(
    errors: Errors, data: dict[str, Any], key: str, allowed: tuple[str, ...], required: bool
) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            errors.add(key, "require", f"{key} is required")
        return None
    if not isinstance(value, str) or value not in allowed:
        errors.add(key, "invalid", f"{key} must be one of {', '.join(allowed)}")
        return None
    return value


def _object(
    errors: Errors,
    data: dict[str, Any],
    key: str,
    bools: tuple[str, ...] = (),
    strings: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """A nested settings object: known fields type-checked, unknown ones kept (echoed back)."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add(key, "invalid", f"{key} must be an object")
        return None
    ok = True
    for name in bools:
        if value.get(name) is not None and not isinstance(value[name], bool):
            errors.add(f"{key}.{name}", "invalid", f"{key}.{name} must be a boolean")
            ok = False
    for name in strings:
        item = value.get(name)
        if item is not None and (not isinstance(item, str) or len(item) > GRN_MAX):
            errors.add(f"{key}.{name}", "invalid", f"{key}.{name} must be a string of at most {GRN_MAX}")
            ok = False
    return dict(value) if ok else None


@dataclass(frozen=True, slots=True)
class NamespaceInput:
    description: str | None
    transaction_setting: dict[str, Any] | None
    transaction_setting_v2: dict[str, Any] | None
    server_type: str
    server_spec: str
    create_notification: dict[str, Any] | None
    log_setting: dict[str, Any] | None


def namespace_body(data: dict[str, Any], with_name: bool) -> tuple[str | None, NamespaceInput]:
    """createNamespace (with_name) / updateNamespace body; raises ApiError(400) listing every violation."""
    errors = Errors("namespace")
    name = _string(errors, data, "name", NAME_MAX, required=True, pattern=True) if with_name else None
    description = _string(errors, data, "description", DESCRIPTION_MAX)
    tx = _object(errors, data, "transactionSetting", TRANSACTION_BOOLS, TRANSACTION_STRINGS)
    tx2 = _object(errors, data, "transactionSettingV2", TRANSACTION_V2_BOOLS, TRANSACTION_V2_STRINGS)
    server_type = _enum(errors, data, "serverType", SERVER_TYPES, required=True)
    server_spec = _enum(errors, data, "serverSpec", SERVER_SPECS, required=True)
    notification = _object(
        errors,
        data,
        "createNotification",
        ("enableTransferMobileNotification",),
        ("gatewayNamespaceId", "sound"),
    )
    if notification is not None:
        enable = notification.get("enable")
        if enable is not None and enable not in NOTIFICATION_ENABLE:
            errors.add(
                "createNotification.enable",
                "invalid",
                "createNotification.enable must be Enabled or Disabled",
            )
        messages = notification.get("mobileNotificationMessages")
        if messages is not None and not isinstance(messages, list):
            errors.add("createNotification.mobileNotificationMessages", "invalid", "must be a list")
    log = _object(errors, data, "logSetting", (), ("loggingNamespaceId",))
    if log is not None:
        ns_id = log.get("loggingNamespaceId")
        if ns_id is None or ns_id == "":
            errors.add(
                "logSetting.loggingNamespaceId", "require", "logSetting.loggingNamespaceId is required"
            )
        elif not ns_id.startswith("grn:"):
            errors.add(
                "logSetting.loggingNamespaceId", "invalid", "loggingNamespaceId must be a GRN (grn:gs2:...)"
            )
    errors.raise_if_any()
    assert server_type is not None and server_spec is not None
    return name, NamespaceInput(description, tx, tx2, server_type, server_spec, notification, log)


def room_body(data: dict[str, Any]) -> tuple[str, list[str]]:
    """wantRoom body: (name, notificationUserIds)."""
    errors = Errors("room")
    name = _string(errors, data, "name", NAME_MAX, required=True, pattern=True)
    users = data.get("notificationUserIds")
    user_ids: list[str] = []
    if users is not None:
        if not isinstance(users, list):
            errors.add("notificationUserIds", "invalid", "notificationUserIds must be a list of strings")
        elif len(users) > NOTIFICATION_USERS_MAX:
            errors.add(
                "notificationUserIds", "tooMany", f"at most {NOTIFICATION_USERS_MAX} notificationUserIds"
            )
        elif not all(isinstance(u, str) and 0 < len(u) <= USER_ID_MAX for u in users):
            errors.add(
                "notificationUserIds",
                "invalid",
                f"every user id must be a string of 1..{USER_ID_MAX} characters",
            )
        else:
            user_ids = list(users)
    errors.raise_if_any()
    assert name is not None
    return name, user_ids


def user_token_body(data: dict[str, Any]) -> tuple[str, int | None]:
    """POST /auth/login body: (userId, ttl seconds or None)."""
    errors = Errors("auth")
    errors.model = "auth"
    user_id = _string(errors, data, "userId", USER_ID_MAX, required=True)
    ttl = data.get("expiresIn")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 86400 * 30):
        errors.add("expiresIn", "invalid", "expiresIn must be an integer number of seconds 1..2592000")
        ttl = None
    offset = data.get("timeOffset")
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
        errors.add("timeOffset", "invalid", "timeOffset must be an integer")
    errors.raise_if_any()
    assert user_id is not None
    return user_id, ttl


# --- path and query ----------------------------------------------------------------------------
def absent(value: str | None) -> bool:
    """GS2's TypeScript SDK sends absent query values as the literal "null"."""
    return value is None or value == "" or value == "null"


def path_name(value: str, component: str, model: str) -> str:
    errors = Errors(model)
    _string(errors, {component: value}, component, NAME_MAX, required=True, pattern=True)
    errors.raise_if_any()
    return value


def limit_param(value: str | None) -> int:
    if absent(value):
        return LIMIT_DEFAULT
    assert value is not None
    # ASCII digits only: int() also takes "1_0", " 10" and the digits of other scripts
    limit = int(value) if value.isascii() and value.isdigit() and len(value) <= 6 else 0
    if not LIMIT_MIN <= limit <= LIMIT_MAX:
        raise bad_request(
            "limit", f"limit must be an integer {LIMIT_MIN}..{LIMIT_MAX}", "realtime.limit.error.invalid"
        )
    return limit


def name_prefix_param(value: str | None) -> str | None:
    if absent(value):
        return None
    assert value is not None
    if len(value) > NAME_PREFIX_MAX:
        raise bad_request(
            "namePrefix",
            f"namePrefix must be at most {NAME_PREFIX_MAX} characters",
            "realtime.namePrefix.error.tooLong",
        )
    return value


def encode_page_token(scope: str, last_name: str) -> str:
    """Opaque to callers: the position (last name returned) and the listing it belongs to."""
    raw = json.dumps({"s": scope, "a": last_name}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Named(Protocol):
    @property
    def name(self) -> str: ...


_Listed = TypeVar("_Listed", bound=Named)


def paginate(items: list[_Listed], limit: int, scope: str) -> tuple[list[_Listed], str | None]:
    """A page from the `limit + 1` items a listing read: the extra one only tells that there is
    a next page, whose token resumes after the last name shown."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_page_token(scope, items[-1].name)


def decode_page_token(value: str | None, scope: str) -> str | None:
    if absent(value):
        return None
    assert value is not None
    invalid = bad_request("pageToken", "pageToken is invalid", "realtime.pageToken.error.invalid")
    if len(value) > PAGE_TOKEN_MAX:
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid from None
    if not isinstance(data, dict) or data.get("s") != scope or not isinstance(data.get("a"), str):
        raise invalid
    after: str = data["a"]
    # a name, as the page's last item had (JSON's \ud800 escapes made text no store could encode:
    # a 500 before)
    if len(after) > NAME_MAX or not NAME_RE.fullmatch(after):
        raise invalid
    return after
