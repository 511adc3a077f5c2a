"""Performance metrics of the scripted session against an independent numpy reference."""

from __future__ import annotations

import math
from decimal import Decimal as D

import numpy as np
import pytest
from projections_session import Session, at

from projections import queries
from projections.memory import InMemoryReadModel
from projections.performance import TRADES

AS_OF = at(6, 23)
# a1's daily returns by hand (see test_risk): 03-02 .. 03-06, 03-05 without activity
ACCOUNT = np.array([391.6 / 10000, -297.49 / 10391.6, 95.1 / 9904.9, 0.0, 97.9 / 10000])
# bot b1: net P&L of its closed trades on the day / a1's capital at the start of the day
# 03-02: +391.6 on 10000; 03-03: none (10391.6); 03-04: +95.1 on 10094.11 - 189.21; 03-05, 03-06: none
BOT = np.array([391.6 / 10000, 0.0, 95.1 / 9904.9, 0.0, 0.0])


def reference(r: np.ndarray) -> dict[str, float | None]:
    wealth = np.cumprod(np.r_[1.0, 1.0 + r])
    total = wealth[-1] - 1
    max_dd = np.max(1 - wealth / np.maximum.accumulate(wealth))
    cagr = (1 + total) ** (365 / len(r)) - 1
    std = np.std(r, ddof=1) if len(r) > 1 else 0.0
    downside = np.sqrt(np.mean(np.square(np.clip(r, None, 0.0))))
    return {
        "total_return": total,
        "sharpe_ratio": r.mean() / std * math.sqrt(365) if std > 0 else None,
        "sortino_ratio": r.mean() / downside * math.sqrt(365) if downside > 0 else None,
        "max_drawdown": max_dd,
        "calmar_ratio": cagr / max_dd if max_dd > 0 else None,
    }


def check(summary: dict[str, object], r: np.ndarray) -> None:
    for name, expected in reference(r).items():
        if expected is None:
            assert summary[name] is None, name
        else:
            assert summary[name] == pytest.approx(expected, rel=1e-9, abs=1e-15), name


def test_closed_trades_are_recorded_with_net_pnl(session: Session, model: InMemoryReadModel) -> None:
    t = model.get(TRADES, session.ids["btc_long"])
    assert t is not None
    assert (t["bot_id"], t["strategy"], t["net_pnl"], t["stake"], t["day"]) == (
        "b1", "sma_cross", D("391.6"), D(2000), "2026-03-02"
    )
    eth = model.get(TRADES, session.ids["eth_long"])
    assert eth is not None and (eth["net_pnl"], eth["stake"], eth["strategy"]) == (D("-297.49"), D(3890), None)


@pytest.mark.parametrize("period", ["7d", "30d", "90d", "1y", "all"])
def test_account_metrics_match_the_reference(model: InMemoryReadModel, period: str) -> None:
    s = queries.performance(model, "account", "a1", period, AS_OF)
    assert s["days"] == 5 and s["start_day"] == "2026-03-02"
    check(s, ACCOUNT)
    # trades: +391.6, -297.49, +95.1
    assert (s["total_trades"], s["winning_trades"], s["losing_trades"]) == (3, 2, 1)
    assert s["win_rate"] == pytest.approx(2 / 3)
    assert s["profit_factor"] == pytest.approx(486.7 / 297.49, rel=1e-12)
    assert (s["best_trade"], s["worst_trade"], s["net_pnl"]) == (D("391.6"), D("-297.49"), D("189.21"))


def test_one_day_period_has_no_sharpe_and_no_trades(model: InMemoryReadModel) -> None:
    s = queries.performance(model, "account", "a1", "1d", AS_OF)
    assert s["days"] == 1
    assert s["total_return"] == pytest.approx(97.9 / 10000, rel=1e-12)
    assert (s["sharpe_ratio"], s["sortino_ratio"], s["calmar_ratio"], s["max_drawdown"]) == (None, None, None, 0.0)
    assert (s["total_trades"], s["win_rate"], s["profit_factor"], s["best_trade"]) == (0, None, None, None)


def test_two_day_window_ending_mid_session(model: InMemoryReadModel) -> None:
    s = queries.performance(model, "account", "a1", "7d", at(3, 23))
    assert s["days"] == 2
    check(s, ACCOUNT[:2])
    assert (s["total_trades"], s["best_trade"], s["worst_trade"]) == (2, D("391.6"), D("-297.49"))


@pytest.mark.parametrize("scope,key", [("bot", "b1"), ("strategy", "sma_cross")])
def test_bot_and_strategy_metrics_match_the_reference(model: InMemoryReadModel, scope: str, key: str) -> None:
    s = queries.performance(model, scope, key, "all", AS_OF)
    assert s["days"] == 5
    check(s, BOT)
    assert (s["total_trades"], s["winning_trades"], s["losing_trades"], s["win_rate"]) == (2, 2, 0, 1.0)
    assert s["profit_factor"] is None  # no losing trade
    assert (s["best_trade"], s["worst_trade"], s["net_pnl"]) == (D("391.6"), D("95.1"), D("486.7"))


def test_unknown_scope_or_period_is_refused(model: InMemoryReadModel) -> None:
    with pytest.raises(ValueError):
        queries.performance(model, "desk", "a1", "7d", AS_OF)
    with pytest.raises(ValueError):
        queries.performance(model, "account", "a1", "2w", AS_OF)
