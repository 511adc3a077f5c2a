"""The whole user journey over HTTP against the app (embedded system, paper venue, projections)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from api_helpers import BTC, Api, eventually

from adapters.marketdata import Bar
from api.routers.markets import ohlcv_store


def test_register_trade_close_twice_then_emergency_stop_blocks_orders(api: Api) -> None:
    # register -> login
    trader = api.register()
    credentials = {"email": trader.email.upper(), "password": "correct-horse-battery"}
    login = api.client.post("/api/auth/login", json=credentials)
    assert login.status_code == 200, login.text
    trader.token = login.json()["token"]
    assert trader.get("/api/auth/me").json()["role"] == "trader"

    # deposit
    r = trader.post("/api/funds/deposit", {"amount": "10000"})
    assert r.status_code == 200 and Decimal(r.json()["available"]) == 10000

    # create bot -> start
    r = trader.post("/api/bots/", {"name": "BTC swing", "tradingPair": BTC, "strategy": "momentum",
                                   "riskPerTrade": 2.0, "stopLoss": 3.0, "takeProfit": 6.0,
                                   "indicators": ["RSI", "MACD"]})
    assert r.status_code == 201, r.text
    bot = r.json()
    assert bot["status"] == "stopped" and bot["tradingPair"] == BTC
    r = trader.post(f"/api/bots/{bot['id']}/start")
    assert r.status_code == 200 and r.json() == {"success": True, "message": "Bot started successfully",
                                                 "botId": bot["id"], "status": "running"}

    # place an order -> the paper venue fills it at the market price
    api.price(BTC, "50000")
    order = {"symbol": BTC, "side": "buy", "type": "market", "quantity": "0.1", "takeProfit": "60000",
             "stopLoss": "45000", "botId": bot["id"]}
    r = trader.post("/api/orders", order, headers={"Idempotency-Key": "order-1"})
    assert r.status_code == 201, r.text
    order_id = r.json()["id"]
    again = trader.post("/api/orders", order, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 201 and again.json()["id"] == order_id  # a retry places nothing new

    # position with TP/SL
    positions = eventually(lambda: trader.get("/api/positions", params={"status": "open"}).json())
    assert len(positions) == 1
    pos = positions[0]
    assert (pos["symbol"], pos["side"], pos["quantity"], pos["entryPrice"]) == (BTC, "long", "0.1", "50000")
    assert (pos["tpPrice"], pos["slPrice"], pos["botId"]) == ("60000", "45000", bot["id"])
    filled = eventually(lambda: trader.get(f"/api/orders/{order_id}").json()["status"] == "filled")
    assert filled

    # the price moves up; close twice: the same close, never an error
    api.price(BTC, "55000")
    first = trader.post(f"/api/positions/{pos['id']}/close")
    second = trader.post(f"/api/positions/{pos['id']}/close")
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"] == pos["id"]
    api.settle()
    closed = trader.get(f"/api/positions/{pos['id']}").json()
    assert closed["status"] == "CLOSED" and closed["exitPrice"] == "55000"
    third = trader.post(f"/api/positions/{pos['id']}/close")
    assert third.status_code == 200 and third.json()["status"] == "closed"
    assert Decimal(third.json()["realisedPnl"]) == Decimal(500)

    # portfolio and performance reflect it: +500 gross, fees 0.1% on 5000 and on 5500
    fees = Decimal("5.0") + Decimal("5.5")
    pf = trader.get("/api/portfolio/paper").json()
    assert Decimal(pf["totalValue"]) == Decimal(10000) + 500 - fees
    assert Decimal(pf["realisedPnl"]) == 500 and Decimal(pf["fees"]) == fees and pf["positions"] == []
    perf = trader.get("/api/analytics/performance", params={"period": "7d"}).json()
    assert perf["totalTrades"] == 1 and perf["winningTrades"] == 1 and perf["winRate"] == 1.0
    assert Decimal(perf["netPnl"]) == 500 - fees and perf["totalReturn"] > 0
    bot_perf = trader.get("/api/analytics/performance", params={"period": "7d", "botId": bot["id"]}).json()
    assert bot_perf["totalTrades"] == 1
    trades = trader.get("/api/trades", params={"botId": bot["id"]}).json()
    assert [t["side"] for t in trades] == ["sell", "buy"] and Decimal(trades[0]["pnl"]) == 500
    summary = eventually(lambda: (s := trader.get("/api/analytics/summary").json())["totalTrades"] == 2 and s)
    assert summary["activeBots"] == 1 and Decimal(summary["totalPnL"]) == 500 - fees

    # emergency stop: halts the account and stops the bot; the next order is refused
    r = trader.post("/api/trading/emergency-stop", {"reason": "test"})
    assert r.status_code == 200 and r.json()["halted"] is True and r.json()["stoppedBots"] == [bot["id"]]
    assert trader.get(f"/api/bots/{bot['id']}").json()["status"] == "stopped"
    r = trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "TRADING_HALTED"
    assert r.json()["success"] is False and r.headers["X-Request-ID"] == r.json()["request_id"]
    status = trader.get("/api/trading/status").json()
    assert status["halted"] is True and status["runningBots"] == 0
    assert trader.post(f"/api/bots/{bot['id']}/start").json()["error"]["code"] == "TRADING_HALTED"

    # resume: orders go through again
    assert trader.post("/api/trading/resume").json()["halted"] is False
    r = trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01"})
    assert r.status_code == 201, r.text


def test_rejected_order_is_an_error_with_its_reason(api: Api) -> None:
    trader = api.register()
    api.price(BTC, "50000")
    r = trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "1"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "INSUFFICIENT_FUNDS" and err["classification"] == "user_error"
    assert err["details"]["order_id"].startswith("ord_")
    # the rejection is recorded for audit and listed with its reason
    rows = eventually(lambda: trader.get("/api/orders", params={"status": "rejected"}).json())
    assert rows[0]["reasonCode"] == "INSUFFICIENT_FUNDS"


def test_liquidate_all_needs_confirmation_and_closes_everything(api: Api) -> None:
    trader = api.register()
    trader.post("/api/funds/deposit", {"amount": "10000"})
    api.price(BTC, "50000")
    assert trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.01"}).status_code == 201
    eventually(lambda: trader.get("/api/positions", params={"status": "open"}).json())
    r = trader.post("/api/trading/liquidate-all", {"confirm": False})
    assert r.status_code == 400 and r.json()["error"]["code"] == "CONFIRMATION_REQUIRED"
    r = trader.post("/api/trading/liquidate-all", {"confirm": True})
    assert r.status_code == 200 and len(r.json()["closeOrderIds"]) == 1
    api.settle()
    assert trader.get("/api/positions", params={"status": "open"}).json() == []


def test_risk_limits_validation_ranges_and_update(api: Api) -> None:
    trader = api.register()
    assert trader.get("/api/risk-management/limits").json()["maxLeverage"] == "3"
    bad = trader.post("/api/risk-management/limits", {"maxLeverage": 11})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert trader.post("/api/risk-management/limits", {"maxDrawdown": 101}).status_code == 422
    ok = trader.post("/api/risk-management/limits", {"maxPositionSize": 60, "maxDailyLoss": 7.5,
                                                      "maxDrawdown": 20, "maxLeverage": 2.5})
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    assert ok.json()["limits"]["maxLeverage"] == "2.5"
    assert trader.get("/api/risk-management/limits").json()["maxDailyLoss"] == "7.5"
    report = trader.post("/api/config/validate", {"risk": {"maxLeverage": 20}}).json()
    assert report == {"valid": False, "errors": [{"field": "risk.maxLeverage",
                                                  "error": "Value exceeds maximum allowed (10)"}]}
    r = trader.put("/api/config", {"risk": {"maxOpenPositions": 5}})
    assert r.status_code == 200 and r.json()["risk"]["maxOpenPositions"] == 5


def test_alerts_are_raised_listed_and_acknowledged(api: Api) -> None:
    trader = api.register()
    trader.post("/api/funds/deposit", {"amount": "1000"})
    api.price(BTC, "50000")
    # 45% of equity in one position: near the 50% limit
    assert trader.post("/api/orders", {"symbol": BTC, "side": "buy", "quantity": "0.009"}).status_code == 201
    alerts = eventually(lambda: trader.get("/api/risk-management/alerts").json())
    alert = alerts[0]
    assert alert["type"] == "POSITION_SIZE" and alert["acknowledged"] is False
    r = trader.post(f"/api/risk-management/alerts/{alert['id']}/acknowledge")
    assert r.status_code == 200 and r.json()["acknowledged"] is True
    assert trader.post(f"/api/risk-management/alerts/{alert['id']}/acknowledge").status_code == 200
    eventually(lambda: trader.get("/api/risk-management/alerts").json() == [])
    notes = eventually(lambda: trader.get("/api/notifications", params={"category": "trade"}).json())
    r = trader.patch(f"/api/notifications/{notes[0]['id']}/read")
    assert r.status_code == 200 and r.json()["read"] is True
    eventually(lambda: all(n["read"] for n in trader.get("/api/notifications",
                                                          params={"category": "trade"}).json()
                           if n["id"] == notes[0]["id"]))


def test_audit_replays_account_state_at_a_moment(api: Api) -> None:
    trader = api.register()
    trader.post("/api/funds/deposit", {"amount": "100"})
    events = trader.get(f"/api/audit/streams/account-{trader.account_id}/events").json()
    assert [e["type"] for e in events] == ["AccountOpened", "FundsDeposited"]
    middle = events[1]["metadata"]["ts_recorded"]
    trader.post("/api/funds/deposit", {"amount": "50"})
    then = trader.get(f"/api/audit/accounts/{trader.account_id}", params={"at": middle}).json()
    now = trader.get(f"/api/audit/accounts/{trader.account_id}").json()
    assert (then["cash"], now["cash"]) == ("100", "150")
    user_events = trader.get(f"/api/audit/streams/user-{trader.id}/events").json()
    assert user_events[0]["data"]["password_hash"] == "***"


def test_markets_prices_and_ohlcv(api: Api) -> None:
    user = api.register()
    assert any(m["symbol"] == BTC for m in user.get("/api/markets").json())
    r = user.get("/api/markets/BTC-USDT/price")
    assert r.status_code == 503 and r.json()["error"]["code"] == "NOT_AVAILABLE"
    api.price(BTC, "42000")
    assert user.get("/api/markets/BTC/USDT/price").json()["price"] == "42000"
    assert user.get("/api/markets/BTC%2FUSDT/price").json()["price"] == "42000"
    assert user.get("/api/markets/BTC-USDT/ohlcv").json() == []
    store = ohlcv_store(api.ctx)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.upsert(BTC, "1h", [Bar(time=t0 + timedelta(hours=i), open=Decimal(100 + i), high=Decimal(110 + i),
                                 low=Decimal(90 + i), close=Decimal(105 + i), volume=Decimal(1)) for i in range(5)])
    candles = user.get("/api/markets/BTC-USDT/ohlcv", params={"timeframe": "1h", "limit": 2}).json()
    assert [c["close"] for c in candles] == ["108", "109"]
    later = user.get("/api/markets/BTC-USDT/ohlcv", params={"startTime": "2026-01-01T01:00:00Z", "limit": 2}).json()
    assert [c["open"] for c in later] == ["101", "102"]
    assert user.get("/api/markets/NOPE-USDT/price").status_code == 404
