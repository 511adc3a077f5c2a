"""Bots that trade in the running app: started over HTTP, fed by ticks, resumed after a restart.

The app runs the embedded system on a SQLite event store; prices go through the admin
simulation endpoint with tick times one minute apart, so one-minute bars close as fast as
the test sends them. ``sma_cross`` 2/3 on the closes below buys at bar 5 (fast crosses
above slow) and sells at bar 7 (it crosses back below); a signal at a bar's close is
executed at the next tick, the next bar's open.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_helpers import BTC, Api, User, api_settings, client_class, eventually, system_settings  # noqa: E402

from adapters.bootstrap import bootstrap  # noqa: E402
from api.app import create_app  # noqa: E402
from commands.messages import EmergencyStop, ResumeTrading  # noqa: E402
from domain.bot import Bot  # noqa: E402
from domain.bot_events import SignalGenerated  # noqa: E402
from domain.user import Role  # noqa: E402

CLOSES = ["100", "99", "98", "97", "105", "106", "80", "79", "78"]
BUY_BAR, SELL_BAR = 4, 6  # indexes in CLOSES


@contextmanager
def app_on(url: str) -> Iterator[Api]:
    system = bootstrap(system_settings(event_store_url=url))
    app = create_app(system.settings, system, api_settings=api_settings())
    try:
        with client_class()(app, raise_server_exceptions=False) as client:
            yield Api(client=client, app=app, system=system)
    finally:
        system.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/events.db"


def minute_after(now: datetime, minutes: int) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=minutes)


def tick(admin: User, price: str, ts: datetime) -> None:
    r = admin.post("/api/simulation/prices", {"symbol": BTC, "price": price, "timestamp": ts.isoformat()})
    assert r.status_code == 200, r.text


def create_strategy(trader: User, name: str = "live SMA") -> str:
    cfg = {"name": name, "strategy": "sma_cross", "parameters": {"fast": 2, "slow": 3},
           "timeframe": "1m", "symbols": [BTC], "risk_per_trade": 50}
    r = trader.post("/api/strategies", {"config": cfg})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def signals(api: Api, bot_id: str) -> list[SignalGenerated]:
    return [r.event for r in api.system.store.read_stream(Bot.stream_id_for(bot_id))
            if isinstance(r.event, SignalGenerated)]


def orders(trader: User) -> list[dict[str, Any]]:
    return list(trader.get("/api/orders", params={"limit": 100}).json())


def open_positions(trader: User) -> list[dict[str, Any]]:
    return list(trader.get("/api/positions", params={"status": "open"}).json())


def setup_users(api: Api) -> tuple[User, User]:
    admin = api.register(Role.ADMIN)
    trader = api.register(Role.TRADER)
    assert trader.post("/api/funds/deposit", {"amount": "10000"}).status_code == 200
    return admin, trader


def test_started_strategy_trades_on_bars_built_from_simulated_prices(store_url: str) -> None:
    with app_on(store_url) as api:
        admin, trader = setup_users(api)
        sid = create_strategy(trader)
        started = trader.post(f"/api/strategies/{sid}/start")
        assert started.json()["message"] == "started with a runner"
        t0 = minute_after(api.system.clock.now(), 2)

        for i, price in enumerate(CLOSES[: BUY_BAR + 2]):  # the tick of bar 6 closes bar 5
            tick(admin, price, t0 + timedelta(minutes=i, seconds=1))

        sigs = eventually(lambda: signals(api, sid), timeout=10)
        assert [(s.action, s.bar_time) for s in sigs] == [("buy", t0 + timedelta(minutes=BUY_BAR))]
        assert {"fast", "slow", "close"} <= set(sigs[0].indicators)
        positions = eventually(lambda: open_positions(trader), timeout=10)
        assert len(positions) == 1
        pos = positions[0]
        assert (pos["symbol"], pos["side"], pos["botId"]) == (BTC, "long", sid)
        assert Decimal(pos["entryPrice"]) == Decimal(CLOSES[BUY_BAR + 1])  # the next bar's open
        (order,) = eventually(lambda: orders(trader), timeout=10)
        assert (order["side"], order["status"], order["botId"]) == ("buy", "filled", sid)
        assert trader.get(f"/api/strategies/{sid}").json()["runner"] == "running"


def test_restarted_app_resumes_the_running_bot_without_a_second_order_for_a_handled_bar(store_url: str) -> None:
    with app_on(store_url) as api:
        admin, trader = setup_users(api)
        sid = create_strategy(trader)
        assert trader.post(f"/api/bots/{sid}/start").status_code == 200
        t0 = minute_after(api.system.clock.now(), 2)
        ticks = [(p, t0 + timedelta(minutes=i, seconds=1)) for i, p in enumerate(CLOSES)]
        for price, ts in ticks[: BUY_BAR + 2]:
            tick(admin, price, ts)
        eventually(lambda: open_positions(trader), timeout=10)

    with app_on(store_url) as api:  # the same event store: a restart of `tradecore serve`
        admin, trader = replace(admin, api=api), replace(trader, api=api)  # the same users and tokens
        sup = api.ctx.bots
        assert sup.running() == [sid]
        # The feed delivers the handled bars again (at-least-once), then new ones.
        for price, ts in ticks:
            tick(admin, price, ts)

        def closed() -> bool:
            return not open_positions(trader) and len(orders(trader)) == 2

        eventually(closed, timeout=10)
        sigs = signals(api, sid)
        assert [(s.action, s.bar_time) for s in sigs] == [
            ("buy", t0 + timedelta(minutes=BUY_BAR)),
            ("sell", t0 + timedelta(minutes=SELL_BAR)),
        ]
        sides = sorted(o["side"] for o in orders(trader))
        assert sides == ["buy", "sell"]  # one order per signal bar, across both processes
        runner = sup.runner(sid)
        assert runner is not None and runner.stats.orders == 1


def test_emergency_stop_stops_the_runners_of_the_account(store_url: str) -> None:
    with app_on(store_url) as api:
        admin, trader = setup_users(api)
        r = trader.post("/api/bots/", {"name": "bot", "tradingPair": BTC, "strategy": "sma_cross",
                                       "timeframe": "1m", "parameters": {"fast": 2, "slow": 3}})
        assert r.status_code == 201, r.text
        bot_id = r.json()["id"]
        assert trader.post(f"/api/bots/{bot_id}/start").status_code == 200
        sup = api.ctx.bots
        assert sup.running() == [bot_id]

        # A halt recorded without stopping the bot (as `tradecore` commands may): the halt stops the runner
        api.ctx.send(EmergencyStop(account_id=trader.account_id, reason="test", user_id=trader.id))
        eventually(lambda: sup.running() == [], timeout=5)
        assert trader.get(f"/api/bots/{bot_id}").json()["status"] == "running"
        api.ctx.send(ResumeTrading(account_id=trader.account_id, user_id=trader.id))
        eventually(lambda: sup.running() == [bot_id], timeout=5)

        # The emergency-stop endpoint: the halt and the bots' stops
        r = trader.post("/api/trading/emergency-stop", {"reason": "panic"})
        assert r.status_code == 200 and r.json()["stoppedBots"] == [bot_id]
        eventually(lambda: sup.running() == [], timeout=5)
        assert sup.runner_state(bot_id) is None
        t0 = minute_after(api.system.clock.now(), 2)
        for i, price in enumerate(CLOSES):
            tick(admin, price, t0 + timedelta(minutes=i))
        assert signals(api, bot_id) == [] and orders(trader) == []
