"""The bots read model of the scripted session (see projections_session), by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

from projections_session import Session, apply_all, at, bare_system

from commands.messages import (
    ClosePosition,
    CreateBot,
    Deposit,
    OpenAccount,
    PlaceOrder,
    RecordFill,
    StartBot,
    StopBot,
    UpdateBot,
)
from domain.bot_events import SignalGenerated
from domain.envelope import RecordedEvent
from domain.events import EVENT_TYPES
from projections import queries
from projections.bots import BOTS, BotsProjection
from projections.memory import InMemoryReadModel
from projections.performance import TRADES as PERF_TRADES
from projections.registry import ALL_PROJECTIONS


def test_bot_configuration_status_and_trading_figures(session: Session, model: InMemoryReadModel) -> None:
    b = model.get(BOTS, "b1")
    assert b is not None
    assert (b["owner_id"], b["account_id"], b["name"], b["symbol"], b["strategy"], b["mode"]) == (
        "u1", "a1", "BTC swing", "BTC/USDT", "sma_cross", "paper")
    assert (b["status"], b["created_at"], b["started_at"]) == ("running", at(2, 9, 3), at(2, 9, 3))
    # orders: buy, TP close, short, reduce, manual close (closes carry the position's bot)
    assert (b["orders_count"], b["rejected_orders"], b["trades_count"]) == (5, 0, 5)
    # 0.1*40000 + 0.1*44000 + 0.05*50000 + 0.02*48000 + 0.03*48000
    assert b["volume"] == D(13300)
    # realised 400 + 40 + 60; fees 4 + 4.4 + 2.5 + 0.96 + 1.44
    assert (b["realised_pnl"], b["fees"], b["net_pnl"]) == (D(500), D("13.3"), D("486.7"))
    assert (b["open_positions"], b["closed_positions"], b["wins"], b["losses"]) == (0, 2, 2, 0)
    assert (b["last_trade_at"], b["last_trade_side"], b["last_trade_price"], b["last_trade_quantity"]) == (
        at(4, 11), "buy", D(48000), D("0.03"))
    assert b["last_signal"] is None


def test_queries_list_bots_and_summarise_analytics(model: InMemoryReadModel) -> None:
    assert [b["bot_id"] for b in queries.bots(model, owner_id="u1").items] == ["b1"]
    assert queries.bots(model, status="stopped").total == 0
    summary = queries.analytics_summary(model, "u1")
    assert summary == {
        "total_bots": 1, "active_bots": 1, "total_trades": 5, "total_pnl": D("486.7"), "win_rate": 1.0,
        "best_performing_bot": {"id": "b1", "name": "BTC swing", "pnl": D("486.7")},
    }


def test_last_signal_comes_from_signal_generated_events() -> None:
    model = InMemoryReadModel.for_projections(BotsProjection)
    signal = SignalGenerated(
        bot_id="b9", bar_time=datetime(2026, 3, 2, 11, tzinfo=UTC), symbol="BTC/USDT", action="buy",
        confidence=D("0.78"), price=D("45000.5"), at=datetime(2026, 3, 2, 11, 58, tzinfo=UTC),
    )
    rec = RecordedEvent(
        event_id="e1", stream_id="bot-b9", version=3, position=1, type="SignalGenerated", schema_version=1,
        data=EVENT_TYPES.to_data(signal), metadata={}, ts_recorded=datetime(2026, 3, 2, 12, tzinfo=UTC),
    )
    BotsProjection().apply(model, rec)
    b = model.get(BOTS, "b9")
    assert b is not None
    assert (b["last_signal"], b["last_signal_at"], b["last_signal_confidence"], b["last_signal_price"]) == (
        "buy", datetime(2026, 3, 2, 11, 58, tzinfo=UTC), D("0.78"), D("45000.5"))


def test_lifecycle_updates_and_strategy_attribution_at_open() -> None:
    bus, store, clock, prices = bare_system()
    bus.handle(OpenAccount(account_id="a9", owner_id="u9"))
    bus.handle(Deposit(account_id="a9", amount=D(10000)))
    bus.handle(CreateBot(bot_id="b9", owner_id="u9", account_id="a9", name="x", symbol="BTC/USDT", strategy="rsi"))
    prices.update("BTC/USDT", D(40000))
    order = bus.handle(PlaceOrder(account_id="a9", symbol="BTC/USDT", side="buy", quantity=D("0.1"), bot_id="b9"))
    bus.handle(RecordFill(account_id="a9", order_id=order["order_id"], fill_id="f1", quantity=D("0.1"),
                          price=D(40000), fee=D(4)))
    clock.advance(timedelta(hours=1))
    bus.handle(UpdateBot(bot_id="b9", changes={"strategy": "macd"}, user_id="u9"))
    bus.handle(StartBot(bot_id="b9"))
    bus.handle(StopBot(bot_id="b9", reason="done"))
    pos = next(r.event.position_id for r in store.read_all(0, 100) if r.type == "PositionOpened")  # type: ignore[attr-defined]
    bus.handle(ClosePosition(account_id="a9", position_id=pos))
    close_order = next(r.event.order_id for r in store.read_all(0, 100)  # type: ignore[attr-defined]
                       if r.type == "OrderAccepted" and r.event.reduce_only)  # type: ignore[attr-defined]
    bus.handle(RecordFill(account_id="a9", order_id=close_order, fill_id="f2", quantity=D("0.1"), price=D(41000),
                          fee=D("4.1")))
    model = InMemoryReadModel.for_projections(*ALL_PROJECTIONS)
    apply_all(model, store.read_all(0, 100))
    b = model.get(BOTS, "b9")
    assert b is not None
    assert (b["strategy"], b["status"], b["stop_reason"], b["stopped_at"]) == ("macd", "stopped", "done", at(2, 10))
    assert (b["realised_pnl"], b["fees"], b["net_pnl"], b["wins"]) == (D(100), D("8.1"), D("91.9"), 1)
    # the trade belongs to the strategy that opened it
    trade = model.get(PERF_TRADES, pos)
    assert trade is not None and (trade["strategy"], trade["net_pnl"]) == ("rsi", D("91.9"))
