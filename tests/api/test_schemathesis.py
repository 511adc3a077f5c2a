"""Property-based tests of the app against its own OpenAPI document (schemathesis).

Bounded for CI: a handful of generated cases per operation, several hundred in all, as an
admin (every endpoint reachable) with a funded account. Checks: no 5xx (bar the
documented 503 NOT_AVAILABLE of the OHLCV port), status codes, content types, headers and
bodies as documented, and every error in the seed 004 envelope with the request id.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import schemathesis
from api_helpers import api_settings, system_settings
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.bootstrap import bootstrap
from adapters.readstore import open_read_store
from api.app import create_app
from commands.messages import Deposit
from commands.user_handlers import RegisterUser
from domain.user import Role, user_id_for_email

_system = bootstrap(system_settings())
# System and read store are handed in (so not closed): schemathesis starts and stops the
# app's lifespan around each operation's test.
app = create_app(_system.settings, _system, api_settings=api_settings(), read_store=open_read_store("memory://"))
_ctx = app.state.ctx
_email = "fuzz-admin@example.com"
_ctx.send(RegisterUser(email=_email, role=Role.ADMIN, password_hash=_ctx.passwords.hash("fuzz-password-1")))
_user = user_id_for_email(_email)
_ctx.send(Deposit(account_id=_ctx.ensure_paper_account(_user), amount=Decimal(100000)))
TOKEN = _ctx.tokens.issue(_user, Role.ADMIN)

schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
CASES: list[str] = []


def no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    if response.status_code >= 500:
        body = response.json()
        allowed = response.status_code == 503 and body["error"]["code"] == "NOT_AVAILABLE"
        assert allowed, f"server error {response.status_code}: {response.text[:500]}"
    return True


def errors_use_the_envelope(ctx: Any, response: Any, case: Any) -> bool:
    CASES.append(case.operation.label)
    request_id = response.headers.get("x-request-id") or response.headers.get("X-Request-ID")
    assert request_id, "no X-Request-ID"
    if response.status_code >= 400:
        body = response.json()
        assert body["success"] is False and body["status_code"] == response.status_code, body
        err = body["error"]
        assert {"code", "message", "status_code", "classification", "suggestion", "details"} <= set(err), body
        assert err["classification"] in ("user_error", "system_error", "security_error")
        assert body["request_id"] == (request_id[0] if isinstance(request_id, list) else request_id)
    return True


CHECKS = [
    no_server_error,
    errors_use_the_envelope,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_against_its_own_openapi(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)



def test_zz_enough_generated_cases_ran() -> None:
    """Runs after the generated tests (file order): the run was not trivially small."""
    if len(set(CASES)) < 40:  # run alone (-k): nothing to count
        return
    print("generated cases:", len(CASES))
    assert len(CASES) >= 300, len(CASES)
