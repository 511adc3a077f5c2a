"""HTTP: strategies (templates, categories, CRUD, start/stop, signals, ensemble, compare) and backtesting."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from bot_factories import random_walk  # noqa: E402

from adapters.marketdata import replay  # noqa: E402

SERIES = random_walk(3000, seed=13, vol=0.004, decimals=2, step_ns=3600 * 10**9)


@pytest.fixture
def api():
    from api_helpers import Api, api_settings, system_settings  # type: ignore[import-not-found]
    from starlette.testclient import TestClient

    from adapters.bootstrap import bootstrap
    from api.app import create_app
    from api.routers import backtesting, strategies
    from api.routers.backtesting import market_data

    settings = system_settings()
    system = bootstrap(settings)
    app = create_app(settings, system, api_settings=api_settings())
    if not any(getattr(r, "path", "").startswith("/api/strategies") for r in app.routes):
        app.include_router(strategies.router, prefix="/api")
        app.include_router(backtesting.router, prefix="/api")
    with TestClient(app) as client:
        ctx = app.state.ctx
        market_data(ctx).upsert("BTC/USDT", "1h", list(replay(SERIES)))
        yield Api(client, app, system)
        system.close()


def _after_now(now: datetime, first: datetime) -> timedelta:
    """A whole number of hours moving ``first`` after ``now`` (bars before a start only warm up)."""
    hours = int((now - first).total_seconds() // 3600) + 2
    return timedelta(hours=max(hours, 0))


def test_templates_and_categories(api):
    user = api.register()
    r = user.get("/api/strategies/templates", params={"category": "mean_reversion"})
    assert r.status_code == 200 and {t["id"] for t in r.json()} == {"rsi", "bollinger"}
    cats = user.get("/api/strategies/categories").json()
    assert {c["id"] for c in cats} == {"trend_following", "mean_reversion", "momentum", "ensemble"}


def test_backtest_run_stores_and_lists_results(api):
    from domain.user import Role

    user = api.register(Role.TRADER)
    body = {
        "strategy": "sma_cross",
        "parameters": {"fast": 10, "slow": 30},
        "symbol": "BTC/USDT",
        "timeframe": "1h",
        "initial_capital": 10000,
        "commission": 0.001,
        "include_monte_carlo": True,
        "monte_carlo_runs": 200,
        "walk_forward": True,
        "walk_forward_window": 1000,
        "walk_forward_test": 500,
        "parameter_grid": {"fast": [5, 10], "slow": [30]},
    }
    r = user.post("/api/backtesting/run", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["summary"]["total_trades"] > 5 and doc["monte_carlo"]["runs"] == 200
    assert len(doc["walk_forward"]["windows"]) == 4 and doc["trades"] and doc["equity_curve"]
    listed = user.get("/api/backtesting/results").json()
    assert [x["id"] for x in listed] == [doc["id"]]
    assert user.get(f"/api/backtesting/results/{doc['id']}").json()["summary"] == doc["summary"]
    other = api.register(Role.TRADER)
    assert other.get("/api/backtesting/results").json() == []
    assert other.get(f"/api/backtesting/results/{doc['id']}").status_code == 404
    bad = user.post("/api/backtesting/run", json={**body, "parameters": {"fast": 50, "slow": 10}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
    none = user.post("/api/backtesting/run", json={**body, "symbol": "ETH/USDT", "walk_forward": False})
    assert none.status_code == 404


def test_strategy_crud_signals_backtest_compare_and_ensemble(api):
    from domain.user import Role

    user = api.register(Role.TRADER)
    cfg = {
        "name": "SMA",
        "strategy": "sma_cross",
        "category": "trend_following",
        "parameters": {"fast": 10, "slow": 30},
        "timeframe": "1h",
        "symbols": ["BTC/USDT"],
        "risk_per_trade": 50,
    }
    r = user.post("/api/strategies", json={"config": cfg})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["category"] == "trend_following" and r.json()["status"] == "stopped"
    r2 = user.post(
        "/api/strategies",
        json={"config": {**cfg, "name": "RSI", "strategy": "rsi", "category": None, "parameters": {"period": 14}}},
    )
    sid2 = r2.json()["id"]
    bad = user.post("/api/strategies", json={"config": {**cfg, "parameters": {"fast": 0}}})
    assert bad.status_code == 400
    up = user.put(f"/api/strategies/{sid}", json={"parameters": {"fast": 12, "slow": 30}})
    assert up.status_code == 200 and up.json()["parameters"] == {"fast": 12, "slow": 30}
    bt = user.post(f"/api/strategies/{sid}/backtest", json={"initial_capital": 5000, "commission": 0.001})
    assert bt.status_code == 200 and bt.json()["request"]["cash"] == "5000"
    cmp_ = user.post("/api/strategies/compare", json={"strategy_ids": [sid, sid2]})
    assert cmp_.status_code == 200, cmp_.text
    assert {row["strategy_id"] for row in cmp_.json()["strategies"]} == {sid, sid2}
    ens = user.post("/api/strategies/ensemble", json={"name": "mix", "strategy_weights": {sid: 0.6, sid2: 0.4}})
    assert ens.status_code == 201, ens.text
    assert ens.json()["strategy"] == "ensemble" and len(ens.json()["parameters"]["members"]) == 2

    # started, the bot supervisor runs it: the market's ticks close bars, signals are recorded
    started = user.post(f"/api/strategies/{sid}/start")
    assert started.status_code == 200 and started.json()["message"] == "started with a runner"
    assert user.get(f"/api/strategies/{sid}").json()["runner"] == "running"
    bars = list(replay(SERIES.slice(0, 300)))
    shift = _after_now(api.system.clock.now(), bars[0].time)
    for bar in bars:
        for i, price in enumerate((bar.open, bar.high, bar.low, bar.close)):
            api.system.paper.on_price("BTC/USDT", price, bar.time + shift + timedelta(seconds=i))
    api.system.paper.on_price("BTC/USDT", bars[-1].close, bars[-1].time + shift + timedelta(hours=1))
    runner = api.ctx.bots.runner(sid)
    deadline = time.monotonic() + 20
    while runner.stats.bars < len(bars) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.stats.bars == len(bars)
    sigs = user.get(f"/api/strategies/{sid}/signals", params={"limit": 500}).json()
    assert len(sigs) > 3 and {"close", "fast", "slow"} <= set(sigs[0]["indicators"])
    assert sigs[0]["barTime"] > sigs[-1]["barTime"]
    hist = user.get(f"/api/strategies/{sid}/history", params={"event_type": "SignalGenerated"}).json()
    assert len(hist) == len(sigs)
    assert user.post(f"/api/strategies/{sid}/stop").status_code == 200
    assert user.get(f"/api/strategies/{sid}").json()["status"] == "stopped"
    assert user.delete(f"/api/strategies/{sid2}").status_code == 200
    assert user.get(f"/api/strategies/{sid2}").status_code == 404
    other = api.register(Role.TRADER)
    assert other.get(f"/api/strategies/{sid}").status_code == 404
    assert Decimal(user.get(f"/api/strategies/{sid}").json()["riskPerTrade"]) == Decimal(50)
