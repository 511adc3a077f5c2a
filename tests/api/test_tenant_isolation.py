"""Tenant isolation: another user's ids answer 404 on every endpoint that takes one, and change nothing."""

from __future__ import annotations

from api_helpers import BTC, Api, eventually


def test_other_users_ids_are_not_found_anywhere(api: Api) -> None:
    alice = api.register()
    mallory = api.register()
    alice.post("/api/funds/deposit", {"amount": "1000"})
    mallory.post("/api/funds/deposit", {"amount": "1000"})
    bot = alice.post("/api/bots", {"name": "a", "tradingPair": BTC, "strategy": "momentum"}).json()["id"]
    alice.post(f"/api/bots/{bot}/start")
    api.price(BTC, "50000")
    filled = alice.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.009"}).json()["id"]
    working = alice.post("/api/orders", {"symbol": BTC, "side": "buy", "type": "limit", "quantity": "0.001",
                                         "price": "40000"}).json()["id"]
    pos = eventually(lambda: alice.get("/api/positions").json())[0]["id"]
    alert = eventually(lambda: alice.get("/api/risk-management/alerts").json())[0]["id"]
    note = eventually(lambda: alice.get("/api/notifications", params={"category": "trade"}).json())[0]["id"]

    attempts = [
        ("GET", f"/api/bots/{bot}", None),
        ("PUT", f"/api/bots/{bot}", {"name": "pwned"}),
        ("PATCH", f"/api/bots/{bot}", {"name": "pwned"}),
        ("POST", f"/api/bots/{bot}/stop", None),
        ("POST", f"/api/bots/{bot}/start", None),
        ("DELETE", f"/api/bots/{bot}", None),
        ("GET", f"/api/orders/{filled}", None),
        ("GET", f"/api/orders/{working}", None),
        ("POST", f"/api/orders/{working}/cancel", None),
        ("GET", f"/api/positions/{pos}", None),
        ("POST", f"/api/positions/{pos}/close", None),
        ("POST", f"/api/risk-management/alerts/{alert}/acknowledge", None),
        ("PATCH", f"/api/notifications/{note}/read", None),
        ("PATCH", f"/api/notifications/{alert}/read", None),
        ("GET", f"/api/audit/streams/account-{alice.account_id}/events", None),
        ("GET", f"/api/audit/streams/bot-{bot}/events", None),
        ("GET", f"/api/audit/streams/user-{alice.id}/events", None),
        ("GET", f"/api/audit/accounts/{alice.account_id}", None),
        ("GET", f"/api/trades?botId={bot}", None),
        ("GET", f"/api/orders?botId={bot}", None),
        ("GET", f"/api/positions?botId={bot}", None),
        ("GET", f"/api/analytics/performance?botId={bot}", None),
        ("POST", "/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.001", "botId": bot}),
    ]
    for method, path, body in attempts:
        r = api.client.request(method, path, json=body, headers=mallory.headers)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "NOT_FOUND"

    # nothing of alice's changed, and mallory's own lists do not show it
    assert alice.get(f"/api/bots/{bot}").json()["status"] == "running"
    assert alice.get(f"/api/bots/{bot}").json()["name"] == "a"
    assert alice.get(f"/api/orders/{working}").json()["status"] == "accepted"
    assert alice.get(f"/api/positions/{pos}").json()["status"] == "OPEN"
    assert alice.get("/api/risk-management/alerts").json()[0]["acknowledged"] is False
    for path in ("/api/bots", "/api/orders", "/api/positions", "/api/trades", "/api/risk-management/alerts"):
        assert mallory.get(path).json() == [], path
    assert mallory.get("/api/portfolio/paper").json()["positions"] == []
    assert all(n["id"] != note for n in mallory.get("/api/notifications").json())
