"""A scripted trading session on the real write side, and a read model built from it.

Figures (fee 10 bps of notional, no slippage; account a1 paper, a2 live, both of u1):

day 1, 2026-03-02
  09:01 deposit 10000                                           cash 10000
  09:02 limits: size 45%, 5 positions, daily loss 3%, drawdown 15%, leverage 3
  09:05 BTC 40000; bot b1 buys 0.1 BTC x2, TP 44000, SL 38000
        margin 2000, fee 4                                      cash 7996
  10:00 BTC 44000: take-profit, sell 0.1 @ 44000, fee 4.4, realised +400
                                                                cash 10391.6
day 2, 2026-03-03
  09:00 ETH 2000; limit buy 2 ETH @ 1950 x1, SL 1800 (reserves 3939.00)
  09:10 partial fill 1 @ 1950, fee 1.95 (position opened)       cash 8439.65
  09:20 fill 1 @ 1940, fee 1.94 (increased: 2 @ 1945)           cash 6497.71
  14:00 ETH 1800: stop-loss, sell 2 @ 1800, fee 3.6, realised -290
                                                                cash 10094.11
day 3, 2026-03-04
  09:00 BTC 50000; bot b1 sells 0.05 BTC x1 (short), margin 2500, fee 2.5
                                                                cash 7591.61
  10:00 BTC 48000; bot b1 buys 0.02: reduced, fee 0.96, realised +40,
        margin released 1000                                    cash 8630.65
  11:00 manual close of the remaining 0.03 @ 48000, fee 1.44, realised +60
                                                                cash 10189.21
  12:00 emergency stop; 12:05 an order is rejected (TRADING_HALTED); 12:10 resumed
  13:00 withdraw 189.21                                         cash 10000
day 4, 2026-03-05: nothing
day 5, 2026-03-06
  09:00 ETH 2100; buy 1 ETH x1, TP 2500, fee 2.1                cash 7897.9
  09:30 limit sell 0.01 BTC @ 60000 (reserves 606.00); 09:40 cancelled
  --- phase 2 (after ``mark(ETH, 2200)`` at 10:00) ---
  11:00 limits: position size 20%
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal as D

from adapters.eventstore.memory import InMemoryEventStore
from adapters.market import PriceBook, StaticMarkets
from adapters.paper import PaperExecution
from commands.bus import CommandBus
from commands.messages import (
    CancelOrder,
    ClosePosition,
    CreateBot,
    Deposit,
    EmergencyStop,
    OpenAccount,
    PlaceOrder,
    RecordFill,
    ResumeTrading,
    SetRiskLimits,
    StartBot,
    Withdraw,
)
from domain.clock import ManualClock
from domain.envelope import RecordedEvent
from domain.values import TradingMode
from projections import portfolio, risk
from projections.memory import InMemoryReadModel
from projections.registry import ALL_PROJECTIONS


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=UTC)


MARK_TS = at(6, 10)


@dataclass
class Session:
    store: InMemoryEventStore
    clock: ManualClock
    bus: CommandBus
    ids: dict[str, str] = field(default_factory=dict)
    phase1_end: int = 0
    """Position of the last event before the ETH mark on day 5."""

    def events(self, after: int = 0, until: int | None = None) -> list[RecordedEvent]:
        out = self.store.read_all(after, 1_000_000)
        return [r for r in out if until is None or r.position <= until]


def run_session() -> Session:
    clock = ManualClock(at(2, 9))
    store = InMemoryEventStore(clock)
    prices = PriceBook()
    bus = CommandBus(store, clock, prices, StaticMarkets(["BTC/USDT", "ETH/USDT"]))
    paper = PaperExecution(bus, store, prices, clock, fee_bps=D(10))
    s = Session(store=store, clock=clock, bus=bus)

    def now(day: int, hh: int, mm: int = 0) -> None:
        clock.set(at(day, hh, mm))

    def price(symbol: str, value: str) -> None:
        paper.on_price(symbol, D(value), clock.now())
        paper.catch_up()

    def place(**kw: object) -> str:
        result = bus.handle(PlaceOrder(account_id="a1", user_id="u1", **kw))  # type: ignore[arg-type]
        paper.catch_up()
        return str(result["order_id"])

    def position_of(order_id: str) -> str:
        for rec in store.read_all(0, 1_000_000):
            if rec.type == "PositionOpened" and rec.event.order_id == order_id:  # type: ignore[attr-defined]
                return rec.event.position_id  # type: ignore[attr-defined]
        raise AssertionError(order_id)

    # day 1
    bus.handle(OpenAccount(account_id="a1", owner_id="u1", mode=TradingMode.PAPER))
    bus.handle(OpenAccount(account_id="a2", owner_id="u1", mode=TradingMode.LIVE))
    bus.handle(Deposit(account_id="a2", amount=D(5000)))
    now(2, 9, 1)
    bus.handle(Deposit(account_id="a1", amount=D(10000)))
    now(2, 9, 2)
    bus.handle(SetRiskLimits(
        account_id="a1", max_position_size_pct=D(45), max_open_positions=5, max_daily_loss_pct=D(3),
        max_drawdown_pct=D(15), max_leverage=D(3), user_id="u1",
    ))
    now(2, 9, 3)
    bus.handle(CreateBot(bot_id="b1", owner_id="u1", account_id="a1", name="BTC swing", symbol="BTC/USDT",
                         strategy="sma_cross"))
    bus.handle(StartBot(bot_id="b1", user_id="u1"))
    now(2, 9, 5)
    price("BTC/USDT", "40000")
    s.ids["btc_long_order"] = place(symbol="BTC/USDT", side="buy", quantity=D("0.1"), leverage=D(2),
                                    take_profit=D(44000), stop_loss=D(38000), bot_id="b1")
    s.ids["btc_long"] = position_of(s.ids["btc_long_order"])
    now(2, 10)
    price("BTC/USDT", "44000")

    # day 2
    now(3, 9)
    price("ETH/USDT", "2000")
    eth = s.ids["eth_order"] = place(symbol="ETH/USDT", side="buy", order_type="limit", quantity=D(2),
                                     limit_price=D(1950), stop_loss=D(1800))
    now(3, 9, 10)
    bus.handle(RecordFill(account_id="a1", order_id=eth, fill_id="f-eth-1", quantity=D(1), price=D(1950),
                          fee=D("1.95")))
    now(3, 9, 20)
    bus.handle(RecordFill(account_id="a1", order_id=eth, fill_id="f-eth-2", quantity=D(1), price=D(1940),
                          fee=D("1.94")))
    paper.catch_up()
    s.ids["eth_long"] = position_of(eth)
    now(3, 14)
    price("ETH/USDT", "1800")

    # day 3
    now(4, 9)
    price("BTC/USDT", "50000")
    s.ids["btc_short_order"] = place(symbol="BTC/USDT", side="sell", quantity=D("0.05"), bot_id="b1")
    s.ids["btc_short"] = position_of(s.ids["btc_short_order"])
    now(4, 10)
    price("BTC/USDT", "48000")
    s.ids["btc_reduce_order"] = place(symbol="BTC/USDT", side="buy", quantity=D("0.02"), bot_id="b1")
    now(4, 11)
    bus.handle(ClosePosition(account_id="a1", position_id=s.ids["btc_short"], user_id="u1"))
    paper.catch_up()
    now(4, 12)
    bus.handle(EmergencyStop(account_id="a1", reason="volatility", user_id="u1"))
    now(4, 12, 5)
    s.ids["rejected_order"] = place(symbol="BTC/USDT", side="buy", quantity=D("0.01"))
    now(4, 12, 10)
    bus.handle(ResumeTrading(account_id="a1", user_id="u1"))
    now(4, 13)
    bus.handle(Withdraw(account_id="a1", amount=D("189.21")))

    # day 5
    now(6, 9)
    price("ETH/USDT", "2100")
    s.ids["eth2_order"] = place(symbol="ETH/USDT", side="buy", quantity=D(1), take_profit=D(2500))
    s.ids["eth2"] = position_of(s.ids["eth2_order"])
    now(6, 9, 30)
    s.ids["cancel_order"] = place(symbol="BTC/USDT", side="sell", order_type="limit", quantity=D("0.01"),
                                  limit_price=D(60000))
    now(6, 9, 40)
    bus.handle(CancelOrder(account_id="a1", order_id=s.ids["cancel_order"], user_id="u1"))
    s.phase1_end = store.last_position()
    now(6, 11)
    bus.handle(SetRiskLimits(
        account_id="a1", max_position_size_pct=D(20), max_open_positions=5, max_daily_loss_pct=D(3),
        max_drawdown_pct=D(15), max_leverage=D(3), user_id="u1",
    ))
    return s


def build(s: Session) -> InMemoryReadModel:
    """Apply phase 1, mark ETH at 2200, apply phase 2: the read model a runner would hold."""
    model = InMemoryReadModel.for_projections(*ALL_PROJECTIONS)
    projections = [cls() for cls in ALL_PROJECTIONS]
    for rec in s.events(until=s.phase1_end):
        for p in projections:
            if rec.type in p.handles:
                p.apply(model, rec)
    portfolio.mark(model, "ETH/USDT", D(2200), MARK_TS)
    risk.mark(model, "ETH/USDT", D(2200), MARK_TS)
    for rec in s.events(after=s.phase1_end):
        for p in projections:
            if rec.type in p.handles:
                p.apply(model, rec)
    return model


def bare_system(
    symbols: tuple[str, ...] = ("BTC/USDT",),
) -> tuple[CommandBus, InMemoryEventStore, ManualClock, PriceBook]:
    """A bus without a venue: fills are sent by hand as ``RecordFill`` commands."""
    clock = ManualClock(at(2, 9))
    store = InMemoryEventStore(clock)
    prices = PriceBook()
    return CommandBus(store, clock, prices, StaticMarkets(symbols)), store, clock, prices


def apply_all(model: InMemoryReadModel, events: list[RecordedEvent]) -> None:
    projections = [cls() for cls in ALL_PROJECTIONS]
    for rec in events:
        for p in projections:
            if rec.type in p.handles:
                p.apply(model, rec)
