"""WebSockets: snapshot on connect, then the caller's read-model changes as they happen."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import BTC, Api
from starlette.websockets import WebSocketDisconnect

from domain.user import Role


def _until(ws: Any, match: Any, limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        msg = ws.receive_json()
        if match(msg):
            return msg  # type: ignore[no-any-return]
    raise AssertionError("no matching message")


def test_positions_socket_receives_the_position_opened_by_an_http_order(api: Api) -> None:
    trader = api.register()
    other = api.register()
    trader.post("/api/funds/deposit", {"amount": "10000"})
    other.post("/api/funds/deposit", {"amount": "10000"})
    api.price(BTC, "50000")
    with api.client.websocket_connect(f"/ws/positions?token={trader.token}") as ws:
        first = ws.receive_json()
        assert first["type"] == "snapshot" and first["channel"] == "positions" and first["data"] == []
        # someone else's position is not pushed to this socket
        assert other.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.02"}).status_code == 201
        r = trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01", "takeProfit": "60000"})
        assert r.status_code == 201
        msg = _until(ws, lambda m: m["type"] == "update")
        data = msg["data"]
        assert msg["channel"] == "positions" and msg["kind"] == "position"
        assert (data["accountId"], data["symbol"], data["quantity"], data["tpPrice"], data["status"]) == (
            trader.account_id, BTC, "0.01", "60000", "OPEN")


def test_snapshot_on_connect_and_other_channels(api: Api) -> None:
    trader = api.register()
    trader.post("/api/funds/deposit", {"amount": "10000"})
    api.price(BTC, "50000")
    trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01"})
    api.settle()
    with api.client.websocket_connect(f"/ws/positions?token={trader.token}") as ws:
        snap = ws.receive_json()
        assert snap["type"] == "snapshot" and len(snap["data"]) == 1
    with api.client.websocket_connect(f"/ws/portfolio?token={trader.token}") as ws:
        snap = ws.receive_json()
        assert snap["channel"] == "portfolio" and len(snap["data"]["positions"]) == 1
        trader.post("/api/funds/deposit", {"amount": "5"})
        upd = _until(ws, lambda m: m["type"] == "update")
        assert upd["data"]["cashBalance"] != snap["data"]["cashBalance"]
    with api.client.websocket_connect(f"/ws/bot-status?token={trader.token}") as ws:
        assert ws.receive_json()["data"] == []
        trader.post("/api/bots", {"name": "b", "tradingPair": BTC, "strategy": "momentum"})
        upd = _until(ws, lambda m: m["type"] == "update")
        assert upd["data"]["name"] == "b"
    with api.client.websocket_connect(f"/ws/trades?token={trader.token}") as ws:
        assert len(ws.receive_json()["data"]) == 1
    with api.client.websocket_connect(f"/ws/notifications?token={trader.token}") as ws:
        assert ws.receive_json()["channel"] == "notifications"
    with api.client.websocket_connect(f"/ws/performance-metrics?token={trader.token}&period=7d") as ws:
        assert ws.receive_json()["data"]["period"] == "7d"


def test_market_data_subscribe_message(api: Api) -> None:
    user = api.register()
    api.price(BTC, "50000")
    with api.client.websocket_connect(f"/ws/market-data?token={user.token}") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        ws.send_json({"type": "subscribe", "symbols": [BTC, "NOPE/USDT"]})
        ack = ws.receive_json()
        assert ack["type"] == "subscribed" and ack["symbols"] == [BTC] and ack["invalid"] == ["NOPE/USDT"]
        tick = _until(ws, lambda m: m["type"] == "price_update")
        assert (tick["symbol"], tick["price"]) == (BTC, "50000")
        api.price(BTC, "50100")
        tick = _until(ws, lambda m: m["type"] == "price_update")
        assert tick["price"] == "50100"


@pytest.mark.parametrize("query", ["", "?token=garbage"])
def test_invalid_token_closes_with_1008(api: Api, query: str) -> None:
    with pytest.raises(WebSocketDisconnect) as exc, api.client.websocket_connect(f"/ws/positions{query}") as ws:
        ws.receive_json()
    assert exc.value.code == 1008


def test_a_change_without_keys_resends_the_snapshot_of_the_channels_showing_it(api: Api) -> None:
    from api.updates import ApiUpdates
    from projections.positions import POSITIONS

    trader = api.register()
    trader.post("/api/funds/deposit", {"amount": "10000"})
    api.price(BTC, "50000")
    trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01"})
    api.settle()
    updates = ApiUpdates(api.ctx.extras["hub"], api.ctx.portfolio_cache)
    with api.client.websocket_connect(f"/ws/positions?token={trader.token}") as ws:
        assert len(ws.receive_json()["data"]) == 1
        updates.on_truncated("positions", frozenset({POSITIONS}))
        again = ws.receive_json()
        assert again["type"] == "snapshot" and again["channel"] == "positions" and len(again["data"]) == 1


def test_the_updates_follower_is_on_exactly_when_the_projections_run_elsewhere() -> None:
    from pydantic import ValidationError

    from api.settings import ApiSettings

    assert not ApiSettings(environment="test").following_updates
    assert ApiSettings(environment="test", run_projections=False).following_updates
    assert not ApiSettings(environment="test", run_projections=False, follow_updates=False).following_updates
    with pytest.raises(ValidationError, match="RUN_PROJECTIONS=false"):
        ApiSettings(environment="test", follow_updates=True)


def test_without_a_runner_or_a_follower_there_is_no_cache_and_health_says_so() -> None:
    from api_helpers import make_api

    for api in make_api(run_projections=False, follow_updates=False):
        assert api.ctx.portfolio_cache is None and "updates" not in api.ctx.extras
        admin = api.register(Role.ADMIN)
        detailed = admin.get("/api/health/detailed").json()
        broker = next(s for s in detailed["services"] if s["service"] == "broker")
        assert broker["status"] == "not_configured" and detailed["updates"] is None
