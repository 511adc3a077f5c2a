"""Parity: a paper session run live (bars fed one by one) and the backtest of the same bars
write the same events, event for event (ids are derived from the bot and bar, so equal)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from bot_factories import events, random_walk

from adapters.marketdata import from_ns
from streams.backtest import BacktestSpec, Simulation, bars_of, run_backtest
from streams.bot_runner import FillConvention

SERIES = random_walk(1500, seed=5, vol=0.004, decimals=2)

SPEC = BacktestSpec(
    strategy="sma_cross",
    parameters={"fast": 8, "slow": 21},
    symbol="BTC/USDT",
    timeframe="1m",
    cash=Decimal(10_000),
    fee_bps=Decimal(10),
    slippage_bps=Decimal(5),
    risk_per_trade_pct=Decimal(2),
    stop_loss_pct=Decimal("0.8"),
    take_profit_pct=Decimal("1.5"),
)


def live_session(spec: BacktestSpec) -> Simulation:
    sim = Simulation(spec, from_ns(int(SERIES.time[0])) - (from_ns(int(SERIES.time[1])) - from_ns(int(SERIES.time[0]))))
    for bar in bars_of(SERIES):
        sim.runner.on_bar(bar)  # the strategy runs on the history it has seen, bar by bar
    return sim


@pytest.mark.parametrize("fill", [FillConvention.NEXT_OPEN, FillConvention.CLOSE])
def test_live_paper_session_and_backtest_write_the_same_events(fill):
    spec = replace(SPEC, fill=fill)
    live = live_session(spec)
    back = run_backtest(SERIES, spec)
    live_events, back_events = events(live.store), events(back.store)
    types = [e[2] for e in live_events]
    assert types.count("SignalGenerated") > 10
    assert types.count("PositionClosed") > 5
    reasons = {e[3]["reason"] for e in live_events if e[2] == "PositionClosed"}
    assert {"STOP_LOSS", "TAKE_PROFIT", "ORDER"} <= reasons  # exits by stop, target and signal all happened
    assert len(live_events) == len(back_events)
    for a, b in zip(live_events, back_events, strict=True):
        assert a == b
    assert live.account().equity({"BTC/USDT": Decimal(repr(float(SERIES.close[-1])))}) == back.final_equity


def test_backtest_processes_far_fewer_bars_than_it_replays():
    back = run_backtest(random_walk(20_000, seed=2), replace(SPEC, stop_loss_pct=None, take_profit_pct=None))
    assert back.summary["signals"] > 100
    assert back.summary["bars_processed"] < back.summary["bars"] / 3
