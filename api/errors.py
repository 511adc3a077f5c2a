"""The error envelope (seed 004) and the one table that maps error codes to HTTP statuses.

Every error leaves the API as::

    {"success": false,
     "error": {"code", "message", "status_code", "classification", "suggestion", "details"},
     "status_code", "timestamp", "request_id"}

Domain errors carry their code; ``STATUS`` maps it once. Framework errors (404, 405,
request validation) and unexpected exceptions (500) get the same envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from domain.errors import ConcurrencyError, DomainError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    suggestion: str


_USER_INPUT = "Check the request against the API documentation and try again."

STATUS: dict[str, ErrorKind] = {
    # request and business-rule refusals
    # 400 when a business rule refuses a value; a malformed request is 422 (same code).
    "VALIDATION_ERROR": ErrorKind(400, "Fix the fields listed in details and resend the request."),
    "INVALID_SYMBOL": ErrorKind(400, "Use a tradable BASE/QUOTE pair from GET /api/markets."),
    "INVALID_ORDER": ErrorKind(400, _USER_INPUT),
    "NO_MARKET_PRICE": ErrorKind(400, "No price is known for this pair yet; try again once one is."),
    "INSUFFICIENT_FUNDS": ErrorKind(400, "Deposit funds or reduce the order size."),
    "RISK_LIMIT_EXCEEDED": ErrorKind(400, "Reduce the order, or review the limits at /api/risk-management/limits."),
    "BOT_ALREADY_ACTIVE": ErrorKind(400, "Stop the bot first."),
    "BOT_NOT_ACTIVE": ErrorKind(400, "Start the bot first."),
    "CONFIRMATION_REQUIRED": ErrorKind(400, 'Send {"confirm": true} to confirm this action.'),
    "LIVE_TRADING_DISABLED": ErrorKind(400, "Use paper mode; live trading is not enabled."),
    # state conflicts
    "TRADING_HALTED": ErrorKind(409, "Trading is halted by an emergency stop; resume trading first."),
    "CONFLICT": ErrorKind(409, "The resource changed meanwhile; reload it and retry."),
    "INVALID_TRANSITION": ErrorKind(409, "The resource is not in a state that allows this action."),
    "IDEMPOTENCY_KEY_REUSED": ErrorKind(409, "Use a new Idempotency-Key for a different request."),
    "USER_EXISTS": ErrorKind(409, "Log in, or register with another e-mail address."),
    "USERNAME_TAKEN": ErrorKind(409, "Choose another username."),
    "ACCOUNT_EXISTS": ErrorKind(409, "The account exists already."),
    "BOT_EXISTS": ErrorKind(409, "The bot exists already."),
    "ORDER_EXISTS": ErrorKind(409, "The order exists already; use a new Idempotency-Key."),
    "ORDER_NOT_EXPIRED": ErrorKind(409, "The order has not expired."),
    # lookup
    "NOT_FOUND": ErrorKind(404, "Check the identifier; it may belong to another user or not exist."),
    "METHOD_NOT_ALLOWED": ErrorKind(405, "Use one of the methods in the Allow header."),
    # security
    "AUTHENTICATION_ERROR": ErrorKind(401, "Send a valid bearer token in the Authorization header."),
    "INVALID_CREDENTIALS": ErrorKind(401, "Check the e-mail address and password."),
    "INVALID_TOKEN": ErrorKind(401, "Log in again to get a new token."),
    "TOKEN_EXPIRED": ErrorKind(401, "Refresh the token at /api/auth/refresh or log in again."),
    "INVALID_REFRESH_TOKEN": ErrorKind(401, "Log in again."),
    "AUTHORIZATION_ERROR": ErrorKind(403, "Your role does not allow this action."),
    "ADMIN_ACCESS_REQUIRED": ErrorKind(403, "Ask an administrator."),
    "RATE_LIMIT_EXCEEDED": ErrorKind(429, "Too many requests. Please wait a moment and try again."),
    # the system
    "INTERNAL_ERROR": ErrorKind(500, "Retry later; quote the request_id when reporting the problem."),
    "NOT_AVAILABLE": ErrorKind(503, "This data source is not available in this deployment."),
    "SERVICE_UNAVAILABLE": ErrorKind(503, "Retry in a moment."),
}

_DEFAULT_DOMAIN = ErrorKind(400, _USER_INPUT)
_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_ERROR",
    403: "AUTHORIZATION_ERROR",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


class ApiError(Exception):
    """An error raised by the API layer itself (auth, RBAC, rate limits, missing data)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        self.status = status or STATUS.get(code, _DEFAULT_DOMAIN).status


def classification(status: int) -> str:
    if status >= 500:
        return "system_error"
    if status in (401, 403, 429):
        return "security_error"
    return "user_error"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def envelope(
    code: str,
    message: str,
    status: int,
    request_id: str | None,
    details: Any = None,
    suggestion: str | None = None,
) -> dict[str, Any]:
    if suggestion is None:
        suggestion = STATUS.get(code, _DEFAULT_DOMAIN).suggestion
    return {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "status_code": status,
            "classification": classification(status),
            "suggestion": suggestion,
            "details": details if details is not None else {},
        },
        "status_code": status,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request_id": request_id,
    }


def _default(value: Any) -> Any:
    return str(value)


def error_response(
    code: str,
    message: str,
    status: int,
    request_id: str | None,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = orjson.dumps(envelope(code, message, status, request_id, details), default=_default)
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def domain_status(exc: DomainError) -> int:
    return STATUS.get(exc.code, _DEFAULT_DOMAIN).status


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(exc.code, exc.message, domain_status(exc), request_id_of(request), exc.details)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.status, request_id_of(request), exc.details, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or None,
            "location": str(e.get("loc", ("",))[0]) if e.get("loc") else None,
            "message": e.get("msg"),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {}
    message = f"{first.get('field') or 'request'}: {first.get('message')}" if errors else "invalid request"
    return error_response("VALIDATION_ERROR", message, 422, request_id_of(request), {"errors": errors})


async def _model_error(request: Request, exc: Exception) -> Response:
    # A command or model built from request data refused a value the route did not check.
    assert isinstance(exc, PydanticValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ())) or None, "message": e.get("msg"), "type": e.get("type")}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    message = f"{errors[0]['field'] or 'request'}: {errors[0]['message']}" if errors else "invalid request"
    return error_response("VALIDATION_ERROR", message, 422, request_id_of(request), {"errors": errors})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _BY_STATUS.get(exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "VALIDATION_ERROR")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").capitalize()
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(code, message, exc.status_code, request_id_of(request), None, exc.headers)


async def _concurrency_error(request: Request, exc: Exception) -> Response:
    log.warning("api.concurrency_exhausted", error=str(exc))
    return error_response("CONFLICT", "the resource kept changing; retry", 409, request_id_of(request))


def internal_error_response(request_id: str | None) -> Response:
    return error_response("INTERNAL_ERROR", "internal server error", 500, request_id)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the envelope."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PydanticValidationError, _model_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ConcurrencyError, _concurrency_error)
