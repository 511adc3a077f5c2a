"""Peer cross-check against backtesting.py: same strategy, same fills, same money.

SMA 10/30, long-only, all-in (backtesting.py's ``self.buy()``: as many whole units as
the cash buys at the next open, counting the commission), market orders filled at the
next bar's open, commission on both legs. Final equity must agree to the cent, trade
counts exactly, maximum drawdown to 1e-9.
"""

from __future__ import annotations

import warnings
from decimal import Decimal

import backtesting as bt  # a hard import: the peer check must run, a missing dev dependency must fail
import numpy as np
import pandas as pd
import pytest
from bot_factories import random_walk

from domain.strategies import Bars
from streams.backtest import BacktestSpec, run_backtest


def _peer_strategy() -> type:
    from backtesting import Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCrossLongOnly(Strategy):
        fast = 10
        slow = 30

        def init(self) -> None:
            self.f = self.I(SMA, self.data.Close, self.fast)
            self.s = self.I(SMA, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.f, self.s):
                if not self.position:
                    self.buy()
            elif crossover(self.s, self.f):
                self.position.close()

    return SmaCrossLongOnly


def _peer(df: object, commission: float) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bt.Backtest(df, _peer_strategy(), cash=10_000, commission=commission).run()


def _ours(series: Bars, fee_bps: str, symbol: str, timeframe: str) -> object:
    spec = BacktestSpec(
        strategy="sma_cross",
        parameters={"fast": 10, "slow": 30},
        symbol=symbol,
        timeframe=timeframe,
        cash=Decimal(10_000),
        fee_bps=Decimal(fee_bps),
        qty_step=Decimal(1),
    )
    return run_backtest(series, spec)


def _series(df: object) -> Bars:
    t = df.index.values.astype("datetime64[ns]").astype(np.int64)  # type: ignore[attr-defined]
    return Bars.from_arrays(t, df.Open.values, df.High.values, df.Low.values, df.Close.values, df.Volume.values)  # type: ignore[attr-defined]


def test_goog_sma_10_30_with_0_1pct_commission_matches_backtesting_py_to_the_cent():
    from backtesting.test import GOOG

    peer = _peer(GOOG, 0.001)
    ours = _ours(_series(GOOG), "10", "GOOG/USD", "1d")
    assert abs(float(ours.final_equity) - peer["Equity Final [$]"]) < 0.005
    assert round(ours.final_equity, 2) == round(Decimal(repr(float(peer["Equity Final [$]"]))), 2)
    assert ours.summary["total_trades"] == peer["# Trades"]
    assert ours.summary["max_drawdown"] * 100 == pytest.approx(-peer["Max. Drawdown [%]"], abs=1e-9)
    assert ours.summary["orders_rejected"] == 0
    # every fill paid 0.1% of its notional
    fills = [r.event for r in ours.store.read_all(0, 10**9) if r.type == "OrderFilled"]
    assert fills and all(f.fee == f.quantity * f.price * Decimal("0.001") for f in fills)


def test_100k_synthetic_bars_zero_fees_match_backtesting_py():
    series = random_walk(100_000, seed=11)
    idx = pd.to_datetime(series.time, utc=True).tz_localize(None)
    df = pd.DataFrame(
        {"Open": series.open, "High": series.high, "Low": series.low, "Close": series.close, "Volume": series.volume},
        index=idx,
    )
    peer = _peer(df, 0.0)
    ours = _ours(series, "0", "BTC/USDT", "1m")
    assert abs(float(ours.final_equity) - peer["Equity Final [$]"]) < 0.005
    assert ours.summary["total_trades"] == peer["# Trades"]
    assert peer["# Trades"] > 1000
    assert ours.summary["max_drawdown"] * 100 == pytest.approx(-peer["Max. Drawdown [%]"], abs=1e-9)
