"""WebSockets: snapshot on connect, then the caller's read-model changes as they happen."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import BTC, Api
from starlette.websockets import WebSocketDisconnect


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
