"""The outermost HTTP middleware: request id, rate-limit headers, metrics, the last-resort 500.

Pure ASGI (no per-request task or body buffering). It

- takes ``X-Request-ID`` from the request when it is sane, or makes one, and puts it on
  the request state and on every response;
- serves ``/api/bots/`` like ``/api/bots`` (seed 004 writes collection paths with a
  trailing slash) without a redirect;
- writes the rate-limit window a dependency recorded as ``X-RateLimit-*`` headers;
- counts and times requests by route template;
- turns an unexpected exception into the 500 error envelope (and logs it), so even that
  response carries the request id.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import internal_error_response
from api.metrics import ApiMetrics

log = structlog.get_logger(__name__)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics, route_paths: dict[int, str] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        # Routes of included routers know their path without the prefix; this maps them back.
        self.route_paths = route_paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope)
            scope["path"] = path.rstrip("/") or "/"
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _SANE_ID.match(text):
                    request_id = text
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = False
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                window = state.get("rate_limit")
                if window is not None and not any(h[0].lower() == b"x-ratelimit-limit" for h in headers):
                    headers.extend(window.headers())
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log.error("api.unhandled", request_id=request_id, method=scope["method"], path=path, exc_info=exc)
            if started:
                raise
            status = 500
            await internal_error_response(request_id)(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = self.route_paths.get(id(route)) or getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - t0)
