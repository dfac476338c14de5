"""GS2's error shape: any non-200 answer carries {"message": "<JSON string of [{component, message, code}]>"}.

The SDKs json-decode the inner string and expose it as `exception.errors` (RequestError list).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from fastapi.responses import JSONResponse


@dataclass(frozen=True, slots=True)
class ErrorItem:
    component: str
    message: str
    code: str

    def to_dict(self) -> dict[str, str]:
        return {"component": self.component, "message": self.message, "code": self.code}


class ApiError(Exception):
    """Raised anywhere below a handler; rendered as GS2's error body with `status`."""

    def __init__(self, status: int, errors: list[ErrorItem], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: " + "; ".join(f"{e.component}: {e.code}" for e in errors))
        self.status = status
        self.errors = errors
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.errors, self.headers)


def error_body(errors: list[ErrorItem]) -> dict[str, str]:
    return {"message": json.dumps([e.to_dict() for e in errors], separators=(",", ":"))}


def error_response(
    status: int, errors: list[ErrorItem], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(errors), headers=headers)


def bad_request(component: str, message: str, code: str) -> ApiError:
    return ApiError(400, [ErrorItem(component, message, code)])


def unauthorized(
    message: str = "authentication required", code: str = "core.auth.error.unauthorized"
) -> ApiError:
    return ApiError(401, [ErrorItem("authorization", message, code)])


def not_found(component: str, message: str, code: str) -> ApiError:
    return ApiError(404, [ErrorItem(component, message, code)])


def conflict(component: str, message: str, code: str) -> ApiError:
    return ApiError(409, [ErrorItem(component, message, code)])


def too_many_requests(component: str, message: str, code: str, retry_after: float) -> ApiError:
    """429, with Retry-After in whole seconds (at least 1)."""
    return ApiError(
        429, [ErrorItem(component, message, code)], {"Retry-After": str(max(1, math.ceil(retry_after)))}
    )


def unavailable(component: str, message: str, code: str) -> ApiError:
    """503: GS2's ServiceUnavailable (no capacity, the store cannot be written): try again later."""
    return ApiError(503, [ErrorItem(component, message, code)])


def store_unavailable(detail: str) -> ApiError:
    """503: the store cannot be read or written now (disk full, read-only, I/O error)."""
    return unavailable("store", f"the store is unavailable: {detail}", "core.store.error.unavailable")
