"""The error envelope for every kind of error, request ids, rate limits, settings, metrics, health."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import BTC, Api, make_api
from pydantic import ValidationError

from api.settings import ApiSettings
from domain.user import Role

ENVELOPE_KEYS = {"success", "error", "status_code", "timestamp", "request_id"}
ERROR_KEYS = {"code", "message", "status_code", "classification", "suggestion", "details"}


def assert_envelope(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == ENVELOPE_KEYS and set(body["error"]) == ERROR_KEYS
    assert body["success"] is False and body["status_code"] == body["error"]["status_code"] == status
    assert body["error"]["code"] == code
    assert body["request_id"] == r.headers["X-Request-ID"]
    return body  # type: ignore[no-any-return]


def test_framework_errors_use_the_envelope(api: Api) -> None:
    user = api.register()
    assert_envelope(user.get("/api/nowhere"), 404, "NOT_FOUND")
    body = assert_envelope(user.delete("/api/funds"), 405, "METHOD_NOT_ALLOWED")
    assert body["error"]["classification"] == "user_error"
    body = assert_envelope(user.post("/api/funds/deposit", {"amount": "-1"}), 422, "VALIDATION_ERROR")
    assert body["error"]["details"]["errors"][0]["field"] == "amount"
    assert_envelope(user.post("/api/funds/deposit", {"amount": "1", "extra": 1}), 422, "VALIDATION_ERROR")
    bad_json = api.client.post("/api/funds/deposit", content=b"{nope", headers={**user.headers,
                                                                                  "Content-Type": "application/json"})
    assert_envelope(bad_json, 422, "VALIDATION_ERROR")
    assert_envelope(user.get("/api/positions/bad%20id"), 422, "VALIDATION_ERROR")
    assert_envelope(user.post("/api/funds/withdraw", {"amount": "5"}), 400, "INSUFFICIENT_FUNDS")
    assert_envelope(api.client.get("/api/auth/me"), 401, "AUTHENTICATION_ERROR")


def test_unexpected_exception_is_a_500_envelope_with_the_request_id(api: Api, monkeypatch: Any) -> None:
    user = api.register()

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api.ctx.read_store, "query", boom)
    r = user.get("/api/trades", headers={"X-Request-ID": "req-123"})
    body = assert_envelope(r, 500, "INTERNAL_ERROR")
    assert body["request_id"] == "req-123" and body["error"]["classification"] == "system_error"
    assert "disk" not in r.text


def test_request_id_is_on_every_response(api: Api) -> None:
    r = api.client.get("/api/health")
    assert len(r.headers["X-Request-ID"]) == 32
    assert api.client.get("/api/health", headers={"X-Request-ID": "abc-1"}).headers["X-Request-ID"] == "abc-1"
    assert api.client.get("/metrics").headers["X-Request-ID"]


def test_idempotency_key_reused_for_another_request_is_a_conflict(api: Api) -> None:
    user = api.register()
    user.post("/api/funds/deposit", {"amount": "100"}, headers={"Idempotency-Key": "dep-1"})
    again = user.post("/api/funds/deposit", {"amount": "100"}, headers={"Idempotency-Key": "dep-1"})
    assert again.status_code == 200 and again.json()["cash"] == "100"  # the first result, nothing added
    assert_envelope(user.post("/api/funds/deposit", {"amount": "7"}, headers={"Idempotency-Key": "dep-1"}),
                    409, "IDEMPOTENCY_KEY_REUSED")
    other = api.register()  # keys are per user: the same key is a new request for someone else
    assert other.post("/api/funds/deposit", {"amount": "7"}, headers={"Idempotency-Key": "dep-1"}).status_code == 200


def test_duplicate_registration_is_a_conflict_whatever_the_case(api: Api) -> None:
    user = api.register(username="ada_l")
    r = api.client.post("/api/auth/register", json={"email": user.email.upper(), "password": "another-pass"})
    assert_envelope(r, 409, "USER_EXISTS")
    r = api.client.post("/api/auth/register", json={"email": "x" + user.email, "password": "another-pass",
                                                    "username": "ADA_L"})
    assert_envelope(r, 409, "USERNAME_TAKEN")
    assert api.client.post("/api/auth/login", json={"username": "ada_l", "password": "correct-horse-battery"}
                           ).status_code == 200
    assert_envelope(api.client.post("/api/auth/login", json={"email": user.email, "password": "wrong-password"}),
                    401, "INVALID_CREDENTIALS")
    assert_envelope(api.client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "x"}),
                    401, "INVALID_CREDENTIALS")


def test_login_reopens_a_paper_account_lost_by_a_cut_short_registration() -> None:
    from commands.user_handlers import RegisterUser

    for api in make_api():
        ctx = api.ctx
        ctx.send(RegisterUser(email="cut@example.com", password_hash=ctx.passwords.hash("password-123"),
                              user_id="test"))
        r = api.client.post("/api/auth/login", json={"email": "cut@example.com", "password": "password-123"})
        assert r.status_code == 200
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        assert api.client.post("/api/funds/deposit", json={"amount": "5"}, headers=headers).status_code == 200
        # logging in again changes nothing
        assert api.client.post("/api/auth/login", json={"email": "cut@example.com", "password": "password-123"}
                               ).status_code == 200


def test_auth_endpoints_allow_5_per_minute_per_address() -> None:
    for api in make_api(rate_limit_auth="5/minute"):
        body = {"email": "nobody@example.com", "password": "whatever"}
        statuses = [api.client.post("/api/auth/login", json=body) for _ in range(6)]
        assert [r.status_code for r in statuses] == [401] * 5 + [429]
        assert statuses[0].headers["X-RateLimit-Limit"] == "5"
        assert statuses[4].headers["X-RateLimit-Remaining"] == "0"
        r = statuses[5]
        body429 = assert_envelope(r, 429, "RATE_LIMIT_EXCEEDED")
        assert body429["error"]["classification"] == "security_error"
        assert 1 <= int(r.headers["Retry-After"]) <= 60 and int(r.headers["X-RateLimit-Reset"]) > 0
        reg = api.client.post("/api/auth/register", json={"email": "new@example.com", "password": "password123"})
        assert reg.status_code == 429  # register shares the auth limit of this address


def test_authenticated_users_have_their_own_hourly_limit_and_admins_none() -> None:
    for api in make_api(rate_limit_default="3/hour"):
        a, b = api.register(), api.register()
        admin = api.register(Role.ADMIN)
        codes = [a.get("/api/bots").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert b.get("/api/bots").headers["X-RateLimit-Remaining"] == "2"
        assert all(admin.get("/api/bots").status_code == 200 for _ in range(5))
        assert api.client.get("/api/health").status_code == 200  # exempt


def test_default_secret_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ApiSettings(environment="production")
    with pytest.raises(ValidationError, match="32 characters"):
        ApiSettings(environment="production", jwt_secret="short")
    ok = ApiSettings(environment="production", jwt_secret="x" * 40)
    assert not ok.simulation and ok.access_token_ttl.total_seconds() == 24 * 3600
    assert ok.refresh_token_ttl.days == 30
    assert ApiSettings(environment="development").simulation


def test_metrics_expose_requests_commands_events_and_lag(api: Api) -> None:
    user = api.register()
    user.post("/api/funds/deposit", {"amount": "10"})
    api.settle()
    text = api.client.get("/metrics").text
    assert 'tradecore_http_requests_total{method="POST",route="/api/funds/deposit",status="200"} 1.0' in text
    assert 'tradecore_commands_total{command="Deposit",outcome="ok"} 1.0' in text
    assert 'tradecore_events_appended_total{type="FundsDeposited"} 1.0' in text
    assert 'tradecore_projection_lag_events{projection="portfolio"} 0.0' in text
    assert "tradecore_http_request_duration_seconds_bucket" in text


def test_health_and_detailed_health(api: Api) -> None:
    r = api.client.get("/api/health").json()
    assert r["status"] == "healthy" and r["uptime"] >= 0
    admin = api.register(Role.ADMIN)
    api.price(BTC, "1")
    d = admin.get("/api/health/detailed").json()
    assert d["status"] == "healthy"
    services = {s["service"]: s["status"] for s in d["services"]}
    assert services["event_store"] == "healthy" and services["read_store"] == "healthy"
    assert services["broker"] == "not_configured"
    assert {p["name"] for p in d["projections"]} >= {"portfolio", "positions", "orders"}
    assert {t["name"] for t in d["tasks"]} == {"projection-runner", "paper-venue"}


def test_trailing_slash_paths_of_seed_004_work(api: Api) -> None:
    user = api.register()
    assert user.get("/api/bots/").status_code == 200
    assert user.get("/api/markets/").status_code == 200
