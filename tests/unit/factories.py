"""Small builders shared by the unit tests (accounts, orders, fills, a command bus)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

from adapters.eventstore.memory import InMemoryEventStore
from adapters.market import PriceBook, StaticMarkets
from commands.bus import CommandBus
from domain.account import Account
from domain.account_events import OrderAccepted, OrderRejected
from domain.clock import ManualClock
from domain.events import Event
from domain.risk import RiskLimits
from domain.values import OrderType, Side, TradingMode

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ACCOUNT_ID = "acc-1"
BTC = "BTC/USDT"
ETH = "ETH/USDT"
SOL = "SOL/USDT"
TRADABLE = (BTC, ETH, SOL)

_ids = itertools.count(1)


def D(value: str | int) -> Decimal:
    return Decimal(value)


def limits(**overrides: object) -> RiskLimits:
    """Default risk limits with some fields replaced (pass Decimals as strings)."""
    values = {k: (Decimal(v) if isinstance(v, str) else v) for k, v in overrides.items()}
    return RiskLimits(**values)  # type: ignore[arg-type]


def new_account(
    cash: str | None = "10000",
    *,
    risk: RiskLimits | None = None,
    currency: str = "USDT",
    account_id: str = ACCOUNT_ID,
    now: datetime = T0,
) -> Account:
    """An opened account, funded with ``cash``; its pending list holds every event so far."""
    acc = Account(account_id)
    acc.open(owner_id="user-1", mode=TradingMode.PAPER, currency=currency,
             limits=risk or RiskLimits(), now=now)
    if cash is not None:
        acc.deposit(Decimal(cash), now)
    return acc


def place(
    acc: Account,
    *,
    order_id: str | None = None,
    symbol: str = BTC,
    side: Side = Side.BUY,
    order_type: OrderType = OrderType.MARKET,
    quantity: str = "0.1",
    last_price: str | None = "50000",
    limit_price: str | None = None,
    stop_price: str | None = None,
    take_profit: str | None = None,
    stop_loss: str | None = None,
    leverage: str = "1",
    reduce_only: bool = False,
    marks: Mapping[str, str] | None = None,
    tradable: bool = True,
    expires_at: datetime | None = None,
    now: datetime = T0,
) -> OrderAccepted | OrderRejected:
    """Place an order with readable string amounts; returns the accepted or rejected event."""
    oid = order_id or f"ord-{next(_ids)}"

    def dec(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    return acc.place_order(
        order_id=oid, client_order_id=oid, symbol=symbol, side=side, order_type=order_type,
        quantity=Decimal(quantity), limit_price=dec(limit_price), stop_price=dec(stop_price),
        take_profit=dec(take_profit), stop_loss=dec(stop_loss), leverage=Decimal(leverage),
        reduce_only=reduce_only, expires_at=expires_at, last_price=dec(last_price),
        marks={k: Decimal(v) for k, v in (marks or {}).items()}, tradable=tradable, now=now,
    )


def fill(
    acc: Account,
    order_id: str,
    quantity: str,
    price: str,
    fee: str = "0",
    *,
    fill_id: str | None = None,
    now: datetime = T0,
) -> bool:
    return acc.record_fill(
        order_id=order_id, fill_id=fill_id or f"fill-{next(_ids)}", quantity=Decimal(quantity),
        price=Decimal(price), fee=Decimal(fee), now=now,
    )


def open_position(
    acc: Account,
    *,
    symbol: str = BTC,
    side: Side = Side.BUY,
    quantity: str = "0.1",
    price: str = "50000",
    fee: str = "0",
    leverage: str = "1",
    take_profit: str | None = None,
    stop_loss: str | None = None,
    now: datetime = T0,
) -> str:
    """Place a market order and fill it in full at ``price``; returns the position id."""
    ev = place(acc, symbol=symbol, side=side, quantity=quantity, last_price=price,
               leverage=leverage, take_profit=take_profit, stop_loss=stop_loss, now=now)
    assert isinstance(ev, OrderAccepted), ev
    fill(acc, ev.order_id, quantity, price, fee, now=now)
    return acc.s.positions[symbol].position_id


def emitted_since(acc: Account, mark: int) -> list[Event]:
    return acc.pending[mark:]


def types_of(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


class Harness:
    """A command bus over the in-memory store, a manual clock, a price book and a market list."""

    def __init__(self, *, snapshot_every: int = 500, symbols: Iterable[str] = TRADABLE) -> None:
        self.clock = ManualClock(T0)
        self.store = InMemoryEventStore(self.clock)
        self.prices = PriceBook()
        self.markets = StaticMarkets(symbols)
        self.bus = CommandBus(self.store, self.clock, self.prices, self.markets,
                              snapshot_every=snapshot_every)

    def count(self, stream_id: str | None = None) -> int:
        if stream_id is None:
            return self.store.last_position()
        return self.store.stream_version(stream_id)

    def events(self, stream_id: str = f"account-{ACCOUNT_ID}") -> list[Event]:
        return [r.event for r in self.store.read_stream(stream_id)]

    def of_type(self, name: str, stream_id: str = f"account-{ACCOUNT_ID}") -> list[Event]:
        return [e for e in self.events(stream_id) if type(e).__name__ == name]
