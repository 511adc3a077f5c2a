"""The bot runner: restart safety, anti-bombardment, sizing, stops, emergency stop."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from bot_factories import of_type, random_walk

from adapters.marketdata import Bar, from_ns
from commands.messages import EmergencyStop, StopBot
from domain.strategies import Action, build
from streams.backtest import ACCOUNT_ID, BOT_ID, BacktestSpec, Simulation, bars_of
from streams.bot_runner import BotRunner, FillConvention, SignalGate

SERIES = random_walk(600, seed=9, vol=0.004, decimals=2)
BARS = list(bars_of(SERIES))
SPEC = BacktestSpec(
    strategy="sma_cross",
    parameters={"fast": 5, "slow": 15},
    symbol="BTC/USDT",
    timeframe="1m",
    cash=Decimal(10_000),
    fee_bps=Decimal(10),
)
FRAME = build("sma_cross", {"fast": 5, "slow": 15}).compute(SERIES)
FIRST_BUY = int(next(i for i in FRAME.signal_indices() if FRAME.action[i] == Action.BUY))


def sim(spec: BacktestSpec = SPEC) -> Simulation:
    return Simulation(spec, BARS[0].time - (BARS[1].time - BARS[0].time))


def new_runner(s: Simulation, spec: BacktestSpec = SPEC) -> BotRunner:
    return BotRunner(s.bus, s.paper, s.prices, BOT_ID, settings=spec.runner_settings(), sim_clock=s.clock)


def orders_for(s: Simulation, bar_time) -> list:
    key = f"bot:{BOT_ID}:{bar_time.isoformat()}:order"
    oid = s.bus.store.lookup_idempotency(key)
    accepted = of_type(s.store, "OrderAccepted")
    return [o for o in accepted if oid is not None and o.order_id == oid.result["order_id"]]


def test_runner_killed_between_signal_and_order_places_exactly_one_order_after_restart():
    s = sim()
    first = new_runner(s)
    for bar in BARS[: FIRST_BUY + 1]:
        first.on_bar(bar)
    assert first.pending is not None  # signal recorded at the close, order due at the next open
    assert len(of_type(s.store, "SignalGenerated")) >= 1 and not of_type(s.store, "OrderAccepted")
    del first  # killed before the next bar opened

    second = new_runner(s)
    second.recover(BARS[: FIRST_BUY + 1])
    assert second.pending is not None and second.pending.bar_time == BARS[FIRST_BUY].time
    second.on_bar(BARS[FIRST_BUY + 1])
    assert len(orders_for(s, BARS[FIRST_BUY].time)) == 1
    assert len(of_type(s.store, "OrderAccepted")) == 1

    # killed again after the order, before noting it: the feed re-delivers the bar
    third = new_runner(s)
    third.recover(BARS[: FIRST_BUY + 1])
    third.on_bar(BARS[FIRST_BUY + 1])
    assert len(of_type(s.store, "OrderAccepted")) == 1
    assert len(of_type(s.store, "PositionOpened")) == 1


def test_runner_killed_inside_the_close_fill_places_exactly_one_order_after_restart():
    spec = replace(SPEC, fill=FillConvention.CLOSE)
    s = sim(spec)
    first = new_runner(s, spec)
    real_handle = s.bus.handle

    def crash_on_order(cmd):
        if type(cmd).__name__ == "PlaceOrder":
            raise SystemExit("killed")
        return real_handle(cmd)

    s.bus.handle = crash_on_order  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        for bar in BARS[: FIRST_BUY + 1]:
            first.on_bar(bar)
    s.bus.handle = real_handle  # type: ignore[method-assign]
    assert not of_type(s.store, "OrderAccepted")

    second = new_runner(s, spec)
    second.recover(BARS[: FIRST_BUY + 1])  # the signal's bar is the last closed one: act now
    second.on_bar(BARS[FIRST_BUY])  # a re-delivered bar is ignored
    assert len(of_type(s.store, "OrderAccepted")) == 1
    assert len(of_type(s.store, "SignalGenerated")) == 1


def test_signal_events_carry_the_indicator_values_that_led_to_them():
    s = sim()
    r = new_runner(s)
    for bar in BARS[: FIRST_BUY + 1]:
        r.on_bar(bar)
    sig = of_type(s.store, "SignalGenerated")[-1]
    assert sig.action == "buy" and sig.bar_time == BARS[FIRST_BUY].time
    assert set(sig.indicators) == {"close", "fast", "slow"}
    assert float(sig.indicators["fast"]) > float(sig.indicators["slow"])
    assert Decimal(0) <= sig.confidence <= Decimal(1)


def test_duplicate_bars_are_ignored():
    s = sim()
    r = new_runner(s)
    for bar in BARS[:100]:
        r.on_bar(bar)
        r.on_bar(bar)
    assert r.stats.bars == 100


def test_gate_cooldown_window_and_confidence():
    from datetime import UTC, datetime, timedelta

    t = datetime(2024, 1, 1, tzinfo=UTC)
    m = timedelta(minutes=1)
    g = SignalGate(min_confidence=0.6, cooldown=3 * m, max_signals=2, window=10 * m)
    assert g.check(t, 0.5) == "LOW_CONFIDENCE"
    assert g.check(t, 0.7) is None
    g.admit(t)
    assert g.check(t + 2 * m, 0.9) == "COOLDOWN"
    assert g.check(t + 3 * m, 0.9) is None
    g.admit(t + 3 * m)
    assert g.check(t + 7 * m, 0.9) == "TOO_MANY_SIGNALS"
    assert g.check(t + 10 * m, 0.9) is None  # the first signal left the window


def test_anti_bombardment_filters_signals_in_the_runner():
    series = random_walk(3000, seed=4, vol=0.004, decimals=2)
    free = Simulation(SPEC, from_ns(int(series.time[0])))
    limited_spec = replace(SPEC, cooldown_bars=30, max_signals=2, signal_window_bars=120, min_confidence=0.55)
    limited = Simulation(limited_spec, from_ns(int(series.time[0])))
    for bar in bars_of(series):
        free.runner.on_bar(bar)
        limited.runner.on_bar(bar)
    f = limited.runner.stats.filtered
    assert f.get("COOLDOWN", 0) > 0 and f.get("LOW_CONFIDENCE", 0) > 0
    sig_times = [e.bar_time for e in of_type(limited.store, "SignalGenerated")]
    gaps = [(b - a).total_seconds() / 60 for a, b in zip(sig_times, sig_times[1:], strict=False)]
    assert all(g >= 30 for g in gaps)
    for i, t in enumerate(sig_times):
        assert sum(1 for u in sig_times[: i + 1] if (t - u).total_seconds() < 120 * 60) <= 2
    assert len(sig_times) < free.runner.stats.signals


def test_stop_loss_sizing_risks_the_configured_share_of_equity():
    spec = replace(
        SPEC,
        risk_per_trade_pct=Decimal(1),
        stop_loss_pct=Decimal(2),
        take_profit_pct=Decimal(4),
        qty_step=Decimal("0.0001"),
    )
    s = sim(spec)
    r = new_runner(s, spec)
    for bar in BARS[: FIRST_BUY + 2]:
        r.on_bar(bar)
    acc = of_type(s.store, "OrderAccepted")[0]
    open_price = BARS[FIRST_BUY + 1].open
    # 1% of 10,000 at risk over a 2% stop: 100 / (open * 0.02), rounded down to 0.0001
    expected = (Decimal(100) / (open_price * Decimal("0.02"))).quantize(Decimal("0.0001"), rounding="ROUND_DOWN")
    assert acc.quantity == expected
    assert acc.stop_loss == (open_price * Decimal("0.98")).quantize(Decimal("1e-8"))
    assert acc.take_profit == (open_price * Decimal("1.04")).quantize(Decimal("1e-8"))


def test_all_in_order_reserves_exactly_its_cost_and_fits_the_cash():
    s = sim()
    r = new_runner(s)
    for bar in BARS[: FIRST_BUY + 2]:
        r.on_bar(bar)
    acc = of_type(s.store, "OrderAccepted")[0]
    price = BARS[FIRST_BUY + 1].open
    assert acc.reserved <= Decimal(10_000)
    assert Decimal(10_000) - acc.quantity * price * Decimal("1.001") < price * Decimal("1.001") * SPEC.qty_step * 2
    assert not of_type(s.store, "OrderRejected")


def test_emergency_stop_rejects_the_bots_orders_and_stops_the_runner():
    s = sim()
    r = new_runner(s)
    for bar in BARS[:FIRST_BUY]:
        r.on_bar(bar)
    s.bus.handle(EmergencyStop(account_id=ACCOUNT_ID, reason="test"))
    for bar in BARS[FIRST_BUY : FIRST_BUY + 5]:
        r.on_bar(bar)
    rejected = of_type(s.store, "OrderRejected")
    assert [e.reason_code for e in rejected] == ["TRADING_HALTED"]
    assert r.stopped == "trading halted"


def test_a_stopped_bot_records_no_signal_and_its_runner_stops():
    s = sim()
    r = new_runner(s)
    s.bus.handle(StopBot(bot_id=BOT_ID))
    r.run(iter(BARS[: FIRST_BUY + 3]))
    assert r.stopped is not None
    assert not of_type(s.store, "SignalGenerated")


def test_bars_with_inconsistent_prices_are_refused():
    from adapters.marketdata import MarketDataError

    with pytest.raises(MarketDataError):
        Bar(BARS[0].time, Decimal(10), Decimal(9), Decimal(8), Decimal(10))
