"""RBAC matrix: every protected endpoint, every role (seed 002), and no token at all."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import BTC, Api, User

from domain.user import Role

X = "unknown_id_1"
READ, ANALYTICS, TRADE, BOTS, ADMIN = "read", "analytics", "trade", "bots:write", "admin"

# (method, path, json body, permission needed)
MATRIX: list[tuple[str, str, Any, str]] = [
    ("GET", "/api/auth/me", None, READ),
    ("GET", f"/api/users/{X}", None, ADMIN),
    ("PUT", f"/api/users/{X}/role", {"role": "viewer"}, ADMIN),
    ("GET", "/api/bots", None, READ),
    ("POST", "/api/bots", {"name": "b", "tradingPair": BTC, "strategy": "momentum"}, BOTS),
    ("GET", f"/api/bots/{X}", None, READ),
    ("PUT", f"/api/bots/{X}", {"name": "c"}, BOTS),
    ("PATCH", f"/api/bots/{X}", {"name": "c"}, BOTS),
    ("DELETE", f"/api/bots/{X}", None, BOTS),
    ("POST", f"/api/bots/{X}/start", None, BOTS),
    ("POST", f"/api/bots/{X}/stop", None, BOTS),
    ("POST", "/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.001"}, TRADE),
    ("GET", "/api/orders", None, READ),
    ("GET", f"/api/orders/{X}", None, READ),
    ("POST", f"/api/orders/{X}/cancel", None, TRADE),
    ("GET", "/api/positions", None, READ),
    ("GET", f"/api/positions/{X}", None, READ),
    ("POST", f"/api/positions/{X}/close", None, TRADE),
    ("GET", "/api/trades", None, READ),
    ("GET", "/api/portfolio/{mode}".format(mode="paper"), None, READ),
    ("GET", "/api/risk-management/metrics", None, READ),
    ("GET", "/api/risk-management/limits", None, READ),
    ("POST", "/api/risk-management/limits", {"maxLeverage": 2}, TRADE),
    ("PUT", "/api/risk-management/limits", {"maxLeverage": 2}, TRADE),
    ("GET", "/api/risk-management/alerts", None, READ),
    ("POST", f"/api/risk-management/alerts/{X}/acknowledge", None, TRADE),
    ("GET", "/api/analytics/summary", None, READ),
    ("GET", "/api/analytics/performance", None, READ),
    ("GET", "/api/analytics/risk", None, ANALYTICS),
    ("POST", "/api/trading/emergency-stop", {"reason": "rbac"}, TRADE),
    ("POST", "/api/trading/resume", None, TRADE),
    ("POST", "/api/trading/liquidate-all", {"confirm": True}, TRADE),
    ("GET", "/api/trading/status", None, READ),
    ("GET", "/api/trading/safety-status", None, READ),
    ("GET", "/api/funds", None, READ),
    ("POST", "/api/funds/deposit", {"amount": "10"}, TRADE),
    ("POST", "/api/funds/withdraw", {"amount": "1"}, TRADE),
    ("GET", "/api/markets", None, READ),
    ("GET", "/api/markets/BTC-USDT/price", None, READ),
    ("GET", "/api/markets/BTC-USDT/ohlcv", None, READ),
    ("POST", "/api/simulation/prices", {"symbol": BTC, "price": "50000"}, ADMIN),
    ("GET", "/api/config", None, READ),
    ("PUT", "/api/config", {"risk": {"maxLeverage": 2}}, TRADE),
    ("POST", "/api/config/validate", {"risk": {"maxLeverage": 2}}, READ),
    ("GET", "/api/notifications", None, READ),
    ("PATCH", f"/api/notifications/{X}/read", None, READ),
    ("GET", f"/api/audit/streams/account-{X}/events", None, ANALYTICS),
    ("GET", f"/api/audit/accounts/{X}", None, ANALYTICS),
    ("GET", "/api/health/detailed", None, ADMIN),
    # backtests and strategies (routers of the backtest / bot-runner work)
    ("POST", "/api/backtesting/run", {}, ANALYTICS),
    ("GET", "/api/backtesting/results", None, ANALYTICS),
    ("GET", f"/api/backtesting/results/{X}", None, ANALYTICS),
    ("GET", "/api/strategies/templates", None, READ),
    ("GET", "/api/strategies/categories", None, READ),
    ("GET", "/api/strategies", None, READ),
    ("POST", "/api/strategies", {}, BOTS),
    ("POST", "/api/strategies/ensemble", {}, BOTS),
    ("POST", "/api/strategies/compare", {}, ANALYTICS),
    ("GET", f"/api/strategies/{X}", None, READ),
    ("PUT", f"/api/strategies/{X}", {}, BOTS),
    ("DELETE", f"/api/strategies/{X}", None, BOTS),
    ("POST", f"/api/strategies/{X}/start", None, BOTS),
    ("POST", f"/api/strategies/{X}/stop", None, BOTS),
    ("GET", f"/api/strategies/{X}/signals", None, READ),
    ("GET", f"/api/strategies/{X}/history", None, READ),
    ("GET", f"/api/strategies/{X}/performance", None, READ),
    ("POST", f"/api/strategies/{X}/backtest", {}, ANALYTICS),
]
PUBLIC = {("POST", "/api/auth/register"), ("POST", "/api/auth/login"), ("POST", "/api/auth/refresh"),
          ("GET", "/api/health")}

GRANTS = {
    Role.VIEWER: {READ},
    Role.ANALYST: {READ, ANALYTICS},
    Role.TRADER: {READ, ANALYTICS, TRADE, BOTS},
    Role.ADMIN: {READ, ANALYTICS, TRADE, BOTS, ADMIN},
}


def _template(path: str) -> str:
    parts = []
    for seg in path.split("/"):
        parts.append("{id}" if seg == X or seg.endswith(X) else seg)
    return "/".join(parts).replace("BTC-USDT", "{id}").replace("/paper", "/{id}")


def _call(user: User | None, method: str, path: str, body: Any) -> Any:
    headers = user.headers if user else {}
    return user.api.client.request(method, path, json=body, headers=headers) if user else None


def test_matrix_covers_every_operation(api: Api) -> None:
    spec = api.app.openapi()
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    covered = {(m, _template(p)) for m, p, _, _ in MATRIX}
    normalised = set()
    for m, p in ops:
        segs = ["{id}" if s.startswith("{") else s for s in p.split("/")]
        normalised.add((m, "/".join(segs)))
    missing = normalised - covered - {(m, p) for m, p in PUBLIC}
    assert not missing, f"endpoints without an RBAC row: {sorted(missing)}"


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_each_role_gets_exactly_its_permissions(api: Api, role: Role) -> None:
    user = api.register(role)
    api.price(BTC, "50000")
    for method, path, body, needed in MATRIX:
        r = api.client.request(method, path, json=body, headers=user.headers)
        if needed in GRANTS[role]:
            assert r.status_code not in (401, 403), (role, method, path, r.status_code, r.text)
            assert r.status_code < 500 or r.json()["error"]["code"] == "NOT_AVAILABLE", (role, method, path, r.text)
        else:
            assert r.status_code == 403, (role, method, path, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] in ("AUTHORIZATION_ERROR", "ADMIN_ACCESS_REQUIRED")
            assert err["classification"] == "security_error"


def test_every_protected_endpoint_needs_a_token(api: Api) -> None:
    for method, path, body, _ in MATRIX:
        for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic abc"}):
            r = api.client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] in ("AUTHENTICATION_ERROR", "INVALID_TOKEN")


def test_refresh_token_is_not_an_access_token(api: Api) -> None:
    user = api.register()
    login = api.client.post("/api/auth/login", json={"email": user.email, "password": "correct-horse-battery"})
    refresh = login.json()["refreshToken"]
    r = api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {refresh}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_TOKEN"
    r = api.client.post("/api/auth/refresh", json={"refreshToken": refresh})
    assert r.status_code == 200
    assert api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 200
    bad = api.client.post("/api/auth/refresh", json={"refresh_token": login.json()["token"]})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "INVALID_REFRESH_TOKEN"


def test_role_change_applies_to_the_next_request(api: Api) -> None:
    admin = api.register(Role.ADMIN)
    user = api.register(Role.VIEWER)
    assert user.post("/api/funds/deposit", {"amount": "1"}).status_code == 403
    r = admin.put(f"/api/users/{user.id}/role", {"role": "trader"})
    assert r.status_code == 200 and r.json()["role"] == "trader"
    assert user.post("/api/funds/deposit", {"amount": "1"}).status_code == 200


def test_admin_role_cannot_be_self_granted(api: Api) -> None:
    r = api.client.post("/api/auth/register", json={"email": "sneaky@example.com", "password": "password123",
                                                    "role": "admin"})
    assert r.status_code == 403
