"""Events of the ``Account`` aggregate (stream ``account-<id>``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from domain.events import Event
from domain.risk import RiskLimits
from domain.values import Money, OrderType, PositionSide, Price, Quantity, Side, Symbol, TradingMode


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountOpened(Event):
    account_id: str
    owner_id: str
    mode: TradingMode
    currency: str
    limits: RiskLimits
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class FundsDeposited(Event):
    account_id: str
    amount: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class FundsWithdrawn(Event):
    account_id: str
    amount: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class RiskLimitsSet(Event):
    account_id: str
    limits: RiskLimits
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderAccepted(Event):
    account_id: str
    order_id: str
    client_order_id: str
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Quantity
    limit_price: Price | None = None
    stop_price: Price | None = None
    take_profit: Price | None = None
    stop_loss: Price | None = None
    leverage: Decimal
    reduce_only: bool = False
    reserved: Money
    reference_price: Price | None = None
    expires_at: datetime | None = None
    bot_id: str | None = None
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderRejected(Event):
    """A refused order, recorded for audit with a reason code."""

    account_id: str
    order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    reason_code: str
    reason: str
    bot_id: str | None = None
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderPartiallyFilled(Event):
    account_id: str
    order_id: str
    fill_id: str
    symbol: Symbol
    side: Side
    quantity: Quantity
    price: Price
    fee: Money
    released: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderFilled(Event):
    """The fill that completes an order (``quantity`` is this fill's, not the order's)."""

    account_id: str
    order_id: str
    fill_id: str
    symbol: Symbol
    side: Side
    quantity: Quantity
    price: Price
    fee: Money
    released: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderCancelled(Event):
    account_id: str
    order_id: str
    reason: str
    released: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderExpired(Event):
    account_id: str
    order_id: str
    released: Money
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PositionOpened(Event):
    account_id: str
    position_id: str
    symbol: Symbol
    side: PositionSide
    quantity: Quantity
    entry_price: Price
    leverage: Decimal
    margin: Money
    fee: Money
    take_profit: Price | None = None
    stop_loss: Price | None = None
    order_id: str
    bot_id: str | None = None
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PositionIncreased(Event):
    account_id: str
    position_id: str
    symbol: Symbol
    quantity: Quantity
    price: Price
    new_quantity: Quantity
    new_entry_price: Price
    margin_added: Money
    fee: Money
    order_id: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PositionReduced(Event):
    account_id: str
    position_id: str
    symbol: Symbol
    quantity: Quantity
    price: Price
    remaining: Quantity
    realised_pnl: Money
    margin_released: Money
    fee: Money
    order_id: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PositionClosing(Event):
    """A close was requested; ``close_order_id`` is the reduce-only order that will flatten it."""

    account_id: str
    position_id: str
    symbol: Symbol
    close_order_id: str
    reason: str
    by: str | None = None
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PositionClosed(Event):
    """The position is flat. ``realised_pnl`` is gross of all fees; ``fees`` over its life."""

    account_id: str
    position_id: str
    symbol: Symbol
    side: PositionSide
    quantity: Quantity
    exit_price: Price
    realised_pnl: Money
    total_realised_pnl: Money
    fees: Money
    margin_released: Money
    fee: Money
    reason: str
    order_id: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class TradingHalted(Event):
    account_id: str
    by: str
    reason: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class TradingResumed(Event):
    account_id: str
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class LiquidationRequested(Event):
    account_id: str
    by: str
    reason: str
    at: datetime
