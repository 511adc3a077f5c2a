"""The ``Account`` aggregate: the consistency boundary for money, orders, positions and risk.

Money model (paper and live alike): ``cash`` is the account balance in its currency;
``reserved`` is the part of it held for open orders. Opening or increasing a position
moves ``notional / leverage`` (the margin, or stake) out of cash; reducing it returns the
released margin plus the realised P&L. Fees are paid from cash on every fill. Equity is
cash plus, for each open position, its margin and its unrealised P&L at the mark price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from domain.account_events import (
    AccountOpened,
    FundsDeposited,
    FundsWithdrawn,
    LiquidationRequested,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    PositionClosed,
    PositionClosing,
    PositionIncreased,
    PositionOpened,
    PositionReduced,
    RiskLimitsSet,
    TradingHalted,
    TradingResumed,
)
from domain.aggregate import Aggregate
from domain.errors import (
    Conflict,
    InsufficientFunds,
    InvalidTransition,
    NotFound,
    ValidationFailed,
)
from domain.events import Event, _compile_decoder, _compile_encoder
from domain.risk import RiskLimits
from domain.values import (
    HUNDRED,
    ONE,
    ZERO,
    Money,
    OrderType,
    PositionSide,
    Price,
    Quantity,
    Side,
    Symbol,
    TradingMode,
    derived_id,
)

RESERVE_BUFFER = Decimal("0.01")
"""Extra fraction reserved on top of an order's margin to cover fees and slippage."""

MONEY_STEP = Decimal("1e-12")
"""Scale of amounts that come from a division (margin, reserve, proportional releases).

Rounding them once, when decided, keeps every later sum and difference exact: releasing
what was reserved brings ``reserved`` back to exactly zero.
"""


def _money(value: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -12:
        return value  # already exact at this scale; keep its written form
    return value.quantize(MONEY_STEP, rounding=rounding)


class OrderStatus(StrEnum):
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"


OPEN_STATUSES = frozenset({OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED})

_TRANSITIONS: dict[tuple[OrderStatus, type[Event]], OrderStatus] = {
    (OrderStatus.ACCEPTED, OrderPartiallyFilled): OrderStatus.PARTIALLY_FILLED,
    (OrderStatus.ACCEPTED, OrderFilled): OrderStatus.FILLED,
    (OrderStatus.PARTIALLY_FILLED, OrderPartiallyFilled): OrderStatus.PARTIALLY_FILLED,
    (OrderStatus.PARTIALLY_FILLED, OrderFilled): OrderStatus.FILLED,
    (OrderStatus.ACCEPTED, OrderCancelled): OrderStatus.CANCELLED,
    (OrderStatus.PARTIALLY_FILLED, OrderCancelled): OrderStatus.CANCELLED,
    (OrderStatus.ACCEPTED, OrderExpired): OrderStatus.EXPIRED,
    (OrderStatus.PARTIALLY_FILLED, OrderExpired): OrderStatus.EXPIRED,
}


def transition(order_id: str, status: OrderStatus, event_type: type[Event]) -> OrderStatus:
    """Return the status after ``event_type``, or raise ``InvalidTransition``."""
    nxt = _TRANSITIONS.get((status, event_type))
    if nxt is None:
        raise InvalidTransition(order_id, status.value, event_type.__name__)
    return nxt


class RejectReason(StrEnum):
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    RISK_LIMIT_EXCEEDED = "RISK_LIMIT_EXCEEDED"
    TRADING_HALTED = "TRADING_HALTED"
    INVALID_SYMBOL = "INVALID_SYMBOL"
    INVALID_ORDER = "INVALID_ORDER"
    NO_MARKET_PRICE = "NO_MARKET_PRICE"


@dataclass(kw_only=True, slots=True)
class Order:
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    filled: Decimal = ZERO
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    leverage: Decimal = ONE
    reduce_only: bool = False
    reserved: Decimal = ZERO
    bot_id: str | None = None
    expires_at: datetime | None = None
    status: OrderStatus = OrderStatus.ACCEPTED
    fill_ids: tuple[str, ...] = ()
    fees: Decimal = ZERO
    notional_filled: Decimal = ZERO

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled

    @property
    def average_price(self) -> Decimal | None:
        return self.notional_filled / self.filled if self.filled else None


@dataclass(slots=True)
class SideTotals:
    """Running totals of one symbol's open orders on one side, kept by the appliers.

    They make the pre-trade check O(1) in the number of open orders. Sums of quantities
    and of quantity x price are exact (no division); the division by leverage happens
    once per leverage at check time.
    """

    remaining: Decimal = ZERO
    """Remaining quantity of every open order (reduce-only ones too)."""
    opening: int = 0
    """How many of them are not reduce-only."""
    priced: dict[Decimal, Decimal] = field(default_factory=dict)
    """leverage -> sum of remaining x (limit or stop price), orders that are not reduce-only."""
    unpriced: dict[Decimal, Decimal] = field(default_factory=dict)
    """leverage -> sum of remaining of market orders that are not reduce-only."""

    def add(self, order: Order, qty: Decimal) -> None:
        """Count ``qty`` more (negative: less) of ``order``'s remaining quantity."""
        self.remaining += qty
        if order.reduce_only:
            return
        price = order.limit_price or order.stop_price
        if price is None:
            book, amount = self.unpriced, qty
        else:
            book, amount = self.priced, qty * price
        total = book.get(order.leverage, ZERO) + amount
        if total:
            book[order.leverage] = total
        else:
            book.pop(order.leverage, None)

    def margin(self, ref: Decimal) -> Decimal:
        """Margin the orders that are not reduce-only will take, market ones at ``ref``."""
        out = ZERO
        for lev in self.priced.keys() | self.unpriced.keys():
            out += (self.priced.get(lev, ZERO) + self.unpriced.get(lev, ZERO) * ref) / lev
        return out


@dataclass(kw_only=True, slots=True)
class Position:
    position_id: str
    symbol: str
    side: PositionSide
    quantity: Decimal
    entry_price: Decimal
    leverage: Decimal
    margin: Decimal
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    fees: Decimal = ZERO
    realised_pnl: Decimal = ZERO
    opened_at: datetime
    bot_id: str | None = None
    closing_order_id: str | None = None
    closing_reason: str | None = None

    @property
    def direction(self) -> int:
        return 1 if self.side is PositionSide.LONG else -1

    def unrealised(self, mark: Decimal) -> Decimal:
        return (mark - self.entry_price) * self.quantity * self.direction

    def notional(self, mark: Decimal) -> Decimal:
        return self.quantity * mark


@dataclass(kw_only=True, slots=True)
class ClosedPosition:
    position_id: str
    symbol: str
    side: PositionSide
    quantity: Decimal
    exit_price: Decimal
    realised_pnl: Decimal
    fees: Decimal
    reason: str
    closed_at: datetime


@dataclass(kw_only=True, slots=True)
class AccountState:
    opened: bool = False
    owner_id: str = ""
    mode: TradingMode = TradingMode.PAPER
    currency: str = "USDT"
    cash: Decimal = ZERO
    reserved: Decimal = ZERO
    limits: RiskLimits = field(default_factory=RiskLimits)
    halted: bool = False
    halted_by: str | None = None
    halt_reason: str | None = None
    halted_at: datetime | None = None
    high_water_mark: Decimal = ZERO
    day: str = ""
    day_start_equity: Decimal = ZERO
    day_pnl: Decimal = ZERO
    orders: dict[str, Order] = field(default_factory=dict)
    order_status: dict[str, OrderStatus] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    closed_positions: dict[str, ClosedPosition] = field(default_factory=dict)


_encode_state = _compile_encoder(AccountState)
_decode_state = _compile_decoder(AccountState)


class Account(Aggregate):
    """Cash, reserved funds, open orders, positions, realised P&L, risk limits, the halt flag."""

    stream_prefix = "account"
    snapshot_schema = "account-1"

    def __init__(self, account_id: str) -> None:
        super().__init__(account_id)
        self.s = AccountState()
        self._book: dict[tuple[str, Side], SideTotals] = {}
        """Totals of the open orders per (symbol, side): derived from ``s.orders``."""

    def _totals(self, symbol: str, side: Side) -> SideTotals:
        key = (symbol, side)
        t = self._book.get(key)
        if t is None:
            t = self._book[key] = SideTotals()
        return t

    def _book_order(self, order: Order, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) an order's remaining quantity to the totals."""
        t = self._totals(order.symbol, order.side)
        t.add(order, order.remaining if sign > 0 else -order.remaining)
        if not order.reduce_only:
            t.opening += sign
        if not t.remaining and not t.opening:
            del self._book[(order.symbol, order.side)]

    def _rebuild_book(self) -> None:
        self._book = {}
        for order in self.s.orders.values():
            self._book_order(order, 1)

    # --- queries ------------------------------------------------------------------

    @property
    def available(self) -> Decimal:
        return self.s.cash - self.s.reserved

    def book_equity(self) -> Decimal:
        """Cash plus the margin of open positions, at cost."""
        return self.s.cash + sum((p.margin for p in self.s.positions.values()), ZERO)

    def equity(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Cash plus margin and unrealised P&L of every position at ``marks`` (entry if unknown)."""
        total = self.s.cash
        for p in self.s.positions.values():
            total += p.margin + p.unrealised(marks.get(p.symbol, p.entry_price))
        return total

    def position_by_id(self, position_id: str) -> Position | None:
        for p in self.s.positions.values():
            if p.position_id == position_id:
                return p
        return None

    def open_orders(self) -> list[Order]:
        return list(self.s.orders.values())

    def _require_open(self) -> None:
        if not self.s.opened:
            raise NotFound(f"account {self.id} does not exist")

    def _pending_closing_qty(self, symbol: str, side: Side) -> Decimal:
        t = self._book.get((symbol, side))
        return t.remaining if t is not None else ZERO

    # --- decisions: account lifecycle and funds --------------------------------------

    def open(self, *, owner_id: str, mode: TradingMode, currency: str, limits: RiskLimits, now: datetime) -> None:
        if self.s.opened:
            raise Conflict(f"account {self.id} already exists", code="ACCOUNT_EXISTS")
        if not currency.isalnum() or not currency.isupper():
            raise ValidationFailed(f"currency must be an upper-case code: {currency!r}")
        self._emit(
            AccountOpened(account_id=self.id, owner_id=owner_id, mode=mode, currency=currency, limits=limits, at=now)
        )

    def deposit(self, amount: Decimal, now: datetime) -> None:
        self._require_open()
        if amount <= 0:
            raise ValidationFailed("deposit amount must be positive")
        self._emit(FundsDeposited(account_id=self.id, amount=Money(amount), at=now))

    def withdraw(self, amount: Decimal, now: datetime) -> None:
        self._require_open()
        if amount <= 0:
            raise ValidationFailed("withdrawal amount must be positive")
        if amount > self.available:
            raise InsufficientFunds(
                f"cannot withdraw {amount}: {self.available} available",
                details={"requested": str(amount), "available": str(self.available)},
            )
        self._emit(FundsWithdrawn(account_id=self.id, amount=Money(amount), at=now))

    def set_risk_limits(self, limits: RiskLimits, by: str, now: datetime) -> None:
        self._require_open()
        if limits != self.s.limits:
            self._emit(RiskLimitsSet(account_id=self.id, limits=limits, by=by, at=now))

    # --- decisions: orders ------------------------------------------------------------

    def place_order(
        self,
        *,
        order_id: str,
        client_order_id: str,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
        take_profit: Decimal | None = None,
        stop_loss: Decimal | None = None,
        leverage: Decimal = ONE,
        reduce_only: bool = False,
        bot_id: str | None = None,
        expires_at: datetime | None = None,
        reserve_buffer: Decimal | None = None,
        last_price: Decimal | None,
        marks: Mapping[str, Decimal],
        tradable: bool,
        now: datetime,
    ) -> OrderAccepted | OrderRejected:
        """Accept the order (reserving funds) or record its rejection with a reason code.

        The reserve is the opening notional over leverage plus ``reserve_buffer`` (a
        fraction, default ``RESERVE_BUFFER``) for slippage and fees; a caller that knows its
        venue's costs (the bot runner) passes them, so an all-in order is not refused.
        """
        self._require_open()
        if order_id in self.s.order_status:
            raise Conflict(f"order {order_id} already exists", code="ORDER_EXISTS")

        def reject(code: RejectReason, reason: str) -> OrderRejected:
            ev = OrderRejected(
                account_id=self.id,
                order_id=order_id,
                symbol=str(symbol),
                side=side,
                order_type=order_type,
                quantity=quantity,
                reason_code=code.value,
                reason=reason,
                bot_id=bot_id,
                at=now,
            )
            self._emit(ev)
            return ev

        if quantity <= 0:
            return reject(RejectReason.INVALID_ORDER, "quantity must be positive")
        try:
            sym = Symbol(symbol)
        except ValidationFailed:
            return reject(RejectReason.INVALID_SYMBOL, f"{symbol!r} is not a BASE/QUOTE symbol")
        pos = self.s.positions.get(sym)
        reducing_qty = ZERO
        if pos is not None and pos.side.closing_side is side:
            reducible = pos.quantity - self._pending_closing_qty(sym, side)
            reducing_qty = max(min(quantity, reducible), ZERO)
        opening_qty = quantity - reducing_qty
        if reduce_only and opening_qty > 0:
            return reject(RejectReason.INVALID_ORDER, "reduce-only order larger than the open position it reduces")
        if self.s.halted and opening_qty > 0:
            return reject(RejectReason.TRADING_HALTED, f"trading halted by {self.s.halted_by}: {self.s.halt_reason}")
        if not tradable or sym.quote != self.s.currency:
            return reject(RejectReason.INVALID_SYMBOL, f"{sym} is not tradable in a {self.s.currency} account")
        if order_type is OrderType.LIMIT and limit_price is None:
            return reject(RejectReason.INVALID_ORDER, "a limit order needs a limit price")
        if order_type is OrderType.STOP and stop_price is None:
            return reject(RejectReason.INVALID_ORDER, "a stop order needs a stop price")
        if order_type is OrderType.MARKET and (limit_price is not None or stop_price is not None):
            return reject(RejectReason.INVALID_ORDER, "a market order takes no limit or stop price")
        if expires_at is not None and expires_at <= now:
            return reject(RejectReason.INVALID_ORDER, "expiry is in the past")
        if order_type is OrderType.MARKET:
            ref = last_price
        else:
            ref = limit_price if order_type is OrderType.LIMIT else stop_price
        if ref is None:
            return reject(RejectReason.NO_MARKET_PRICE, f"no market price known for {sym}")
        if ref <= 0:
            return reject(RejectReason.INVALID_ORDER, "prices must be positive")
        if leverage < 1:
            return reject(RejectReason.INVALID_ORDER, "leverage must be at least 1")
        buffer = RESERVE_BUFFER if reserve_buffer is None else reserve_buffer
        if buffer < 0:
            return reject(RejectReason.INVALID_ORDER, "the reserve buffer cannot be negative")
        going_long = side is Side.BUY
        if take_profit is not None and (take_profit <= ref if going_long else take_profit >= ref):
            return reject(RejectReason.INVALID_ORDER, f"take-profit {take_profit} is on the wrong side of {ref}")
        if stop_loss is not None and (stop_loss >= ref if going_long else stop_loss <= ref):
            return reject(RejectReason.INVALID_ORDER, f"stop-loss {stop_loss} is on the wrong side of {ref}")

        reserve = ZERO
        if opening_qty > 0:
            problem = self._check_risk(sym, side, opening_qty, ref, leverage, marks, now)
            if problem is not None:
                return reject(*problem)
            reserve = _money(opening_qty * ref / leverage * (ONE + buffer), ROUND_CEILING)
            if reserve > self.available:
                return reject(
                    RejectReason.INSUFFICIENT_FUNDS,
                    f"order needs {reserve:.8f} {self.s.currency}, {self.available:.8f} available",
                )
        ev = OrderAccepted(
            account_id=self.id,
            order_id=order_id,
            client_order_id=client_order_id,
            symbol=sym,
            side=side,
            order_type=order_type,
            quantity=Quantity(quantity),
            limit_price=Price(limit_price) if limit_price is not None else None,
            stop_price=Price(stop_price) if stop_price is not None else None,
            take_profit=Price(take_profit) if take_profit is not None else None,
            stop_loss=Price(stop_loss) if stop_loss is not None else None,
            leverage=leverage,
            reduce_only=reduce_only,
            reserved=Money(reserve),
            reference_price=Price(ref),
            expires_at=expires_at,
            bot_id=bot_id,
            at=now,
        )
        self._emit(ev)
        return ev

    def _check_risk(
        self,
        sym: str,
        side: Side,
        qty: Decimal,
        ref: Decimal,
        leverage: Decimal,
        marks: Mapping[str, Decimal],
        now: datetime,
    ) -> tuple[RejectReason, str] | None:
        lim = self.s.limits
        equity = self.equity(marks)
        if equity <= 0:
            return RejectReason.INSUFFICIENT_FUNDS, "account equity is not positive"
        if leverage > lim.max_leverage:
            return RejectReason.RISK_LIMIT_EXCEEDED, f"leverage {leverage} above the limit {lim.max_leverage}"
        pos = self.s.positions.get(sym)
        same_side = pos is not None and pos.side.opening_side is side
        opens_new = not same_side
        if opens_new:
            # Symbols with an order that is not reduce-only and no position yet.
            pending_new = {
                symbol for (symbol, _), t in self._book.items() if t.opening and symbol not in self.s.positions
            }
            pending_new.discard(sym)
            count = len(self.s.positions) - (1 if pos is not None else 0) + len(pending_new) + 1
            if count > lim.max_open_positions:
                return RejectReason.RISK_LIMIT_EXCEEDED, f"would hold {count} positions, limit {lim.max_open_positions}"
        margin = qty * ref / leverage
        if same_side and pos is not None:
            margin += pos.margin
        totals = self._book.get((sym, side))
        if totals is not None:
            margin += totals.margin(ref)
        size_pct = margin / equity * HUNDRED
        if size_pct > lim.max_position_size_pct:
            return RejectReason.RISK_LIMIT_EXCEEDED, (
                f"position margin {size_pct:.2f}% of equity, limit {lim.max_position_size_pct}%"
            )
        exposure = qty * ref + sum(
            (p.notional(marks.get(p.symbol, p.entry_price)) for p in self.s.positions.values()), ZERO
        )
        if exposure / equity > lim.max_leverage:
            return RejectReason.RISK_LIMIT_EXCEEDED, (
                f"exposure {exposure / equity:.2f}x equity, limit {lim.max_leverage}x"
            )
        if self.s.day == now.date().isoformat() and self.s.day_start_equity > 0 and self.s.day_pnl < 0:
            loss_pct = -self.s.day_pnl / self.s.day_start_equity * HUNDRED
            if loss_pct >= lim.max_daily_loss_pct:
                return RejectReason.RISK_LIMIT_EXCEEDED, (
                    f"daily loss {loss_pct:.2f}% reached the limit {lim.max_daily_loss_pct}%"
                )
        hwm = self.s.high_water_mark
        if hwm > 0:
            dd_pct = (hwm - equity) / hwm * HUNDRED
            if dd_pct >= lim.max_drawdown_pct:
                return RejectReason.RISK_LIMIT_EXCEEDED, (
                    f"drawdown {dd_pct:.2f}% reached the limit {lim.max_drawdown_pct}%"
                )
        return None

    def cancel_order(self, order_id: str, reason: str, now: datetime) -> None:
        self._require_open()
        order = self._order_for(order_id, OrderCancelled)
        self._emit(
            OrderCancelled(account_id=self.id, order_id=order_id, reason=reason, released=Money(order.reserved), at=now)
        )

    def expire_order(self, order_id: str, now: datetime) -> None:
        self._require_open()
        order = self._order_for(order_id, OrderExpired)
        if order.expires_at is None or order.expires_at > now:
            raise Conflict(f"order {order_id} has not expired", code="ORDER_NOT_EXPIRED")
        self._emit(OrderExpired(account_id=self.id, order_id=order_id, released=Money(order.reserved), at=now))

    def _order_for(self, order_id: str, event_type: type[Event]) -> Order:
        status = self.s.order_status.get(order_id)
        if status is None:
            raise NotFound(f"order {order_id} not found in account {self.id}")
        order = self.s.orders.get(order_id)
        if order is None:
            raise InvalidTransition(order_id, status.value, event_type.__name__)
        transition(order_id, order.status, event_type)
        return order

    def record_fill(
        self, *, order_id: str, fill_id: str, quantity: Decimal, price: Decimal, fee: Decimal, now: datetime
    ) -> bool:
        """Apply a venue fill; returns False when ``fill_id`` was already applied (no-op)."""
        self._require_open()
        status = self.s.order_status.get(order_id)
        if status is None:
            raise NotFound(f"order {order_id} not found in account {self.id}")
        order = self.s.orders.get(order_id)
        if order is None:
            if status is OrderStatus.FILLED:
                return False  # a late duplicate of the completing fill
            raise InvalidTransition(order_id, status.value, OrderFilled.__name__)
        if fill_id in order.fill_ids:
            return False
        if quantity <= 0 or price <= 0 or fee < 0:
            raise ValidationFailed("fill quantity and price must be positive and the fee not negative")
        if quantity > order.remaining:
            raise ValidationFailed(f"fill of {quantity} exceeds the {order.remaining} remaining on {order_id}")
        sym = str.__new__(Symbol, order.symbol)  # checked when the order was accepted
        pos = self.s.positions.get(sym)
        if order.reduce_only and (pos is None or pos.side.closing_side is not order.side or quantity > pos.quantity):
            raise Conflict(f"reduce-only order {order_id} has no matching position to reduce", code="NOTHING_TO_REDUCE")
        final = quantity == order.remaining
        released = order.reserved if final else _money(order.reserved * quantity / order.remaining)
        fill_cls = OrderFilled if final else OrderPartiallyFilled
        transition(order_id, order.status, fill_cls)
        self._emit(
            fill_cls(
                account_id=self.id,
                order_id=order_id,
                fill_id=fill_id,
                symbol=sym,
                side=order.side,
                quantity=Quantity(quantity),
                price=Price(price),
                fee=Money(fee),
                released=Money(released),
                at=now,
            )
        )
        remaining_open = quantity
        if pos is not None and pos.side.closing_side is order.side:
            reduce_q = min(quantity, pos.quantity)
            fee_r = fee if reduce_q == quantity else _money(fee * reduce_q / quantity)
            realised = (price - pos.entry_price) * reduce_q * pos.direction
            if reduce_q == pos.quantity:
                self._emit(
                    PositionClosed(
                        account_id=self.id,
                        position_id=pos.position_id,
                        symbol=sym,
                        side=pos.side,
                        quantity=Quantity(reduce_q),
                        exit_price=Price(price),
                        realised_pnl=Money(realised),
                        total_realised_pnl=Money(pos.realised_pnl + realised),
                        fees=Money(pos.fees + fee_r),
                        margin_released=Money(pos.margin),
                        fee=Money(fee_r),
                        reason=pos.closing_reason or "ORDER",
                        order_id=order_id,
                        at=now,
                    )
                )
                for other in list(self.s.orders.values()):
                    if other.symbol == sym and other.reduce_only:
                        self._emit(
                            OrderCancelled(
                                account_id=self.id,
                                order_id=other.order_id,
                                reason="POSITION_CLOSED",
                                released=Money(other.reserved),
                                at=now,
                            )
                        )
            else:
                self._emit(
                    PositionReduced(
                        account_id=self.id,
                        position_id=pos.position_id,
                        symbol=sym,
                        quantity=Quantity(reduce_q),
                        price=Price(price),
                        remaining=Quantity(pos.quantity - reduce_q),
                        realised_pnl=Money(realised),
                        margin_released=Money(_money(pos.margin * reduce_q / pos.quantity)),
                        fee=Money(fee_r),
                        order_id=order_id,
                        at=now,
                    )
                )
            remaining_open = quantity - reduce_q
            fee = fee - fee_r
        if remaining_open > 0:
            pos = self.s.positions.get(sym)
            margin = _money(remaining_open * price / order.leverage)
            if pos is None:
                self._emit(
                    PositionOpened(
                        account_id=self.id,
                        position_id=derived_id("pos", self.id, order_id, fill_id),
                        symbol=sym,
                        side=PositionSide.LONG if order.side is Side.BUY else PositionSide.SHORT,
                        quantity=Quantity(remaining_open),
                        entry_price=Price(price),
                        leverage=order.leverage,
                        margin=Money(margin),
                        fee=Money(fee),
                        take_profit=Price(order.take_profit) if order.take_profit is not None else None,
                        stop_loss=Price(order.stop_loss) if order.stop_loss is not None else None,
                        order_id=order_id,
                        bot_id=order.bot_id,
                        at=now,
                    )
                )
            else:
                new_qty = pos.quantity + remaining_open
                new_entry = _money((pos.entry_price * pos.quantity + price * remaining_open) / new_qty)
                self._emit(
                    PositionIncreased(
                        account_id=self.id,
                        position_id=pos.position_id,
                        symbol=sym,
                        quantity=Quantity(remaining_open),
                        price=Price(price),
                        new_quantity=Quantity(new_qty),
                        new_entry_price=Price(new_entry),
                        margin_added=Money(margin),
                        fee=Money(fee),
                        order_id=order_id,
                        at=now,
                    )
                )
        return True

    # --- decisions: closing, halting, liquidation ------------------------------------

    def close_position(
        self,
        *,
        position_id: str,
        close_order_id: str,
        reason: str,
        by: str | None,
        last_price: Decimal | None,
        now: datetime,
    ) -> dict[str, Any]:
        """Start flattening a position. Idempotent: closing or closed returns the existing result."""
        self._require_open()
        closed = self.s.closed_positions.get(position_id)
        if closed is not None:
            return self._closed_result(closed)
        pos = self.position_by_id(position_id)
        if pos is None:
            raise NotFound(f"position {position_id} not found in account {self.id}")
        if pos.closing_order_id is not None and pos.closing_order_id in self.s.orders:
            return {"position_id": position_id, "status": "closing", "close_order_id": pos.closing_order_id}
        self._start_close(pos, close_order_id, reason, by, last_price, now)
        return {"position_id": position_id, "status": "closing", "close_order_id": close_order_id}

    def _closed_result(self, closed: ClosedPosition) -> dict[str, Any]:
        return {
            "position_id": closed.position_id,
            "status": "closed",
            "exit_price": str(closed.exit_price),
            "realised_pnl": str(closed.realised_pnl),
            "fees": str(closed.fees),
            "reason": closed.reason,
        }

    def _start_close(
        self,
        pos: Position,
        close_order_id: str,
        reason: str,
        by: str | None,
        last_price: Decimal | None,
        now: datetime,
    ) -> None:
        side = pos.side.closing_side
        for other in list(self.s.orders.values()):
            if other.symbol == pos.symbol and other.side is side:
                self._emit(
                    OrderCancelled(
                        account_id=self.id,
                        order_id=other.order_id,
                        reason="SUPERSEDED_BY_CLOSE",
                        released=Money(other.reserved),
                        at=now,
                    )
                )
        self._emit(
            PositionClosing(
                account_id=self.id,
                position_id=pos.position_id,
                symbol=Symbol(pos.symbol),
                close_order_id=close_order_id,
                reason=reason,
                by=by,
                at=now,
            )
        )
        self._emit(
            OrderAccepted(
                account_id=self.id,
                order_id=close_order_id,
                client_order_id=close_order_id,
                symbol=Symbol(pos.symbol),
                side=side,
                order_type=OrderType.MARKET,
                quantity=Quantity(pos.quantity),
                leverage=pos.leverage,
                reduce_only=True,
                reserved=Money(ZERO),
                reference_price=Price(last_price) if last_price else None,
                bot_id=pos.bot_id,
                at=now,
            )
        )

    def emergency_stop(self, *, by: str, reason: str, now: datetime) -> None:
        """Halt new orders and cancel working orders that would add exposure. Idempotent."""
        self._require_open()
        if self.s.halted:
            return
        self._emit(TradingHalted(account_id=self.id, by=by, reason=reason, at=now))
        self._cancel_opening_orders("EMERGENCY_STOP", now)

    def resume(self, *, by: str, now: datetime) -> None:
        self._require_open()
        if self.s.halted:
            self._emit(TradingResumed(account_id=self.id, by=by, at=now))

    def liquidate_all(
        self, *, by: str, reason: str, order_id_seed: str, marks: Mapping[str, Decimal], now: datetime
    ) -> list[str]:
        """Cancel every order that adds exposure and close every open position."""
        self._require_open()
        self._emit(LiquidationRequested(account_id=self.id, by=by, reason=reason, at=now))
        self._cancel_opening_orders("LIQUIDATION", now)
        started = []
        for pos in list(self.s.positions.values()):
            if pos.closing_order_id is not None and pos.closing_order_id in self.s.orders:
                continue
            oid = derived_id("ord", order_id_seed, pos.position_id)
            self._start_close(pos, oid, "LIQUIDATION", by, marks.get(pos.symbol), now)
            started.append(oid)
        return started

    def _cancel_opening_orders(self, reason: str, now: datetime) -> None:
        """Cancel working orders that would add exposure; keep those that only reduce a position."""
        capacity = {sym: p.quantity for sym, p in self.s.positions.items()}
        for o in list(self.s.orders.values()):
            pos = self.s.positions.get(o.symbol)
            if pos is not None and pos.side.closing_side is o.side and o.remaining <= capacity[o.symbol]:
                capacity[o.symbol] -= o.remaining
                continue
            if not o.reduce_only:
                self._emit(
                    OrderCancelled(
                        account_id=self.id, order_id=o.order_id, reason=reason, released=Money(o.reserved), at=now
                    )
                )

    # --- appliers: the only code that changes state ------------------------------------

    def _roll_day(self, at: datetime) -> None:
        day = at.date().isoformat()
        if day != self.s.day:
            self.s.day = day
            self.s.day_start_equity = self.book_equity()
            self.s.day_pnl = ZERO

    def _mark_high_water(self) -> None:
        eq = self.book_equity()
        if eq > self.s.high_water_mark:
            self.s.high_water_mark = eq

    def _apply_AccountOpened(self, e: AccountOpened) -> None:
        self.s.opened = True
        self.s.owner_id = e.owner_id
        self.s.mode = e.mode
        self.s.currency = e.currency
        self.s.limits = e.limits

    def _apply_FundsDeposited(self, e: FundsDeposited) -> None:
        self._roll_day(e.at)
        self.s.cash += e.amount
        self.s.day_start_equity += e.amount
        self.s.high_water_mark += e.amount

    def _apply_FundsWithdrawn(self, e: FundsWithdrawn) -> None:
        self._roll_day(e.at)
        self.s.cash -= e.amount
        self.s.day_start_equity = max(self.s.day_start_equity - e.amount, ZERO)
        self.s.high_water_mark = max(self.s.high_water_mark - e.amount, self.book_equity())

    def _apply_RiskLimitsSet(self, e: RiskLimitsSet) -> None:
        self.s.limits = e.limits

    def _apply_OrderAccepted(self, e: OrderAccepted) -> None:
        # An open order lives long, and the cyclic collector walks every tracked object it
        # holds on each full collection: instances of the value types (Symbol, Quantity,
        # Money, Price: classes defined in Python) are tracked, plain str and Decimal are
        # not. So the order keeps plain copies (what a snapshot restores, too), and an empty
        # tuple of fill ids: one tracked object per open order, not five.
        order = Order(
            order_id=e.order_id,
            client_order_id=e.client_order_id,
            symbol=str(e.symbol),
            side=e.side,
            order_type=e.order_type,
            quantity=Decimal(e.quantity),
            limit_price=None if e.limit_price is None else Decimal(e.limit_price),
            stop_price=None if e.stop_price is None else Decimal(e.stop_price),
            take_profit=None if e.take_profit is None else Decimal(e.take_profit),
            stop_loss=None if e.stop_loss is None else Decimal(e.stop_loss),
            leverage=e.leverage,
            reduce_only=e.reduce_only,
            reserved=Decimal(e.reserved),
            bot_id=e.bot_id,
            expires_at=e.expires_at,
        )
        self.s.orders[e.order_id] = order
        self._book_order(order, 1)
        self.s.order_status[e.order_id] = OrderStatus.ACCEPTED
        self.s.reserved += e.reserved

    def _apply_OrderRejected(self, e: OrderRejected) -> None:
        self.s.order_status[e.order_id] = OrderStatus.REJECTED

    def _apply_fill(self, e: OrderFilled | OrderPartiallyFilled) -> None:
        order = self.s.orders[e.order_id]
        order.status = transition(e.order_id, order.status, type(e))
        self._book_order(order, -1)
        order.filled += e.quantity
        order.notional_filled += e.quantity * e.price
        order.fees += e.fee
        order.fill_ids = (*order.fill_ids, e.fill_id)
        order.reserved -= e.released
        self.s.reserved -= e.released
        self.s.order_status[e.order_id] = order.status
        if order.status in OPEN_STATUSES:
            self._book_order(order, 1)
        else:
            del self.s.orders[e.order_id]

    _apply_OrderFilled = _apply_fill
    _apply_OrderPartiallyFilled = _apply_fill

    def _apply_order_end(self, e: OrderCancelled | OrderExpired) -> None:
        order = self.s.orders.pop(e.order_id)
        self.s.order_status[e.order_id] = transition(e.order_id, order.status, type(e))
        self._book_order(order, -1)
        self.s.reserved -= e.released

    _apply_OrderCancelled = _apply_order_end
    _apply_OrderExpired = _apply_order_end

    def _apply_PositionOpened(self, e: PositionOpened) -> None:
        self._roll_day(e.at)
        self.s.positions[e.symbol] = Position(
            position_id=e.position_id,
            symbol=e.symbol,
            side=e.side,
            quantity=e.quantity,
            entry_price=e.entry_price,
            leverage=e.leverage,
            margin=e.margin,
            take_profit=e.take_profit,
            stop_loss=e.stop_loss,
            fees=e.fee,
            opened_at=e.at,
            bot_id=e.bot_id,
        )
        self.s.cash -= e.margin + e.fee
        self.s.day_pnl -= e.fee

    def _apply_PositionIncreased(self, e: PositionIncreased) -> None:
        self._roll_day(e.at)
        pos = self.s.positions[e.symbol]
        pos.quantity = e.new_quantity
        pos.entry_price = e.new_entry_price
        pos.margin += e.margin_added
        pos.fees += e.fee
        self.s.cash -= e.margin_added + e.fee
        self.s.day_pnl -= e.fee

    def _apply_PositionReduced(self, e: PositionReduced) -> None:
        self._roll_day(e.at)
        pos = self.s.positions[e.symbol]
        pos.quantity = e.remaining
        pos.margin -= e.margin_released
        pos.fees += e.fee
        pos.realised_pnl += e.realised_pnl
        self.s.cash += e.margin_released + e.realised_pnl - e.fee
        self.s.day_pnl += e.realised_pnl - e.fee
        self._mark_high_water()

    def _apply_PositionClosing(self, e: PositionClosing) -> None:
        pos = self.s.positions[e.symbol]
        pos.closing_order_id = e.close_order_id
        pos.closing_reason = e.reason

    def _apply_PositionClosed(self, e: PositionClosed) -> None:
        self._roll_day(e.at)
        pos = self.s.positions.pop(e.symbol)
        self.s.cash += e.margin_released + e.realised_pnl - e.fee
        self.s.day_pnl += e.realised_pnl - e.fee
        self.s.closed_positions[e.position_id] = ClosedPosition(
            position_id=e.position_id,
            symbol=e.symbol,
            side=pos.side,
            quantity=e.quantity,
            exit_price=e.exit_price,
            realised_pnl=e.total_realised_pnl,
            fees=e.fees,
            reason=e.reason,
            closed_at=e.at,
        )
        self._mark_high_water()

    def _apply_TradingHalted(self, e: TradingHalted) -> None:
        self.s.halted = True
        self.s.halted_by = e.by
        self.s.halt_reason = e.reason
        self.s.halted_at = e.at

    def _apply_TradingResumed(self, e: TradingResumed) -> None:
        self.s.halted = False

    def _apply_LiquidationRequested(self, e: LiquidationRequested) -> None:
        return None

    # --- snapshots (a cache, never the truth) ------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        return _encode_state(self.s)

    @classmethod
    def from_snapshot(cls, account_id: str, version: int, state: dict[str, Any]) -> Account:
        acc = cls(account_id)
        acc.s = _decode_state(state)
        acc._rebuild_book()
        acc.version = version
        return acc

    def clone(self) -> Account:
        return type(self).from_snapshot(self.id, self.version, self.to_snapshot())


__all__ = [
    "Account",
    "AccountState",
    "ClosedPosition",
    "Order",
    "OrderStatus",
    "Position",
    "RejectReason",
    "SideTotals",
]
