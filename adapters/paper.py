"""Paper execution: a simulated venue that fills orders against the last market price.

It follows the event log (crash-only: start-up replays the log to rebuild its working
orders and open positions, then acts), and answers with commands (``RecordFill``,
``ClosePosition`` for take-profit / stop-loss, ``ExpireOrder``) whose idempotency keys are
derived from what they react to, so reacting twice to the same fact changes nothing.

Fill model:
- market orders fill in full at the last price moved against the order by ``slippage_bps``;
- limit orders fill at the last price once it is at or better than the limit;
- stop orders trigger once the last price reaches the stop and fill like market orders;
- every fill pays ``fee_bps`` of its notional;
- a long position's take-profit triggers at last >= TP and its stop-loss at last <= SL
  (mirrored for shorts), closing it with a reduce-only market order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from adapters.market import PriceBook
from commands.bus import CommandBus
from commands.messages import ClosePosition, Command, ExpireOrder, RecordFill
from commands.ports import EventStore
from domain import account_events as ae
from domain.clock import Clock
from domain.envelope import RecordedEvent
from domain.errors import DomainError
from domain.events import Event
from domain.values import BPS, ONE, OrderType, PositionSide, Side, Symbol, derived_id

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _WorkingOrder:
    account_id: str
    order_id: str
    symbol: Symbol
    side: Side
    order_type: OrderType
    remaining: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    expires_at: datetime | None
    reduce_only: bool = False
    fills: int = 0
    done: bool = False


@dataclass(slots=True)
class _OpenPosition:
    account_id: str
    position_id: str
    symbol: Symbol
    side: PositionSide
    quantity: Decimal
    take_profit: Decimal | None
    stop_loss: Decimal | None
    closing: bool = False


class PaperExecution:
    """Simulated venue driven by the event log and price updates."""

    def __init__(
        self,
        bus: CommandBus,
        store: EventStore,
        prices: PriceBook,
        clock: Clock,
        *,
        fee_bps: Decimal = Decimal(10),
        slippage_bps: Decimal = Decimal(0),
    ) -> None:
        if fee_bps < 0 or slippage_bps < 0:
            raise ValueError("fee and slippage must not be negative")
        self.bus = bus
        self.store = store
        self.prices = prices
        self.clock = clock
        self.fee_rate = fee_bps / BPS
        self.slippage = slippage_bps / BPS
        self.position = 0
        self._orders: dict[str, _WorkingOrder] = {}
        self._positions: dict[str, _OpenPosition] = {}
        self._lock = threading.RLock()

    # --- following the log ---------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild working orders and positions from the whole log without acting, then act."""
        with self._lock:
            while True:
                batch = self.store.read_all(self.position, 5000)
                if not batch:
                    break
                for rec in batch:
                    self._track(rec)
                self.position = batch[-1].position
            self._act_on_all()

    def catch_up(self) -> int:
        """Process events appended since the last call, acting on each; returns how many."""
        n = 0
        with self._lock:
            while True:
                batch = self.store.read_all(self.position, 1000)
                if not batch:
                    return n
                self.process(batch)
                n += len(batch)

    def process(self, batch: list[RecordedEvent]) -> None:
        with self._lock:
            for rec in batch:
                if rec.position <= self.position:
                    continue
                self.position = rec.position
                if not rec.stream_id.startswith("account-"):
                    continue  # the venue follows accounts only (as _track)
                ev = rec.event
                track = _TRACKERS.get(type(ev))
                if track is None:
                    continue
                track(self, ev)
                if type(ev) is ae.OrderAccepted:
                    self._try_fill(self._orders[ev.order_id])
                elif type(ev) is ae.PositionOpened:
                    self._check_exits(self._positions[ev.position_id])

    def run(self, stop: threading.Event) -> None:
        """Follow the log until ``stop`` is set (embedded mode)."""
        self.recover()
        for batch in self.store.subscribe(self.position, stop=stop):
            self.process(batch)

    def _track(self, rec: RecordedEvent) -> None:
        if not rec.stream_id.startswith("account-"):
            return
        ev = rec.event
        track = _TRACKERS.get(type(ev))
        if track is not None:
            track(self, ev)

    def _order_accepted(self, ev: ae.OrderAccepted) -> None:
        self._orders[ev.order_id] = _WorkingOrder(
            account_id=ev.account_id,
            order_id=ev.order_id,
            symbol=Symbol(ev.symbol),
            side=ev.side,
            order_type=ev.order_type,
            remaining=ev.quantity,
            limit_price=ev.limit_price,
            stop_price=ev.stop_price,
            expires_at=ev.expires_at,
            reduce_only=ev.reduce_only,
        )

    def _order_partially_filled(self, ev: ae.OrderPartiallyFilled) -> None:
        wo = self._orders.get(ev.order_id)
        if wo is not None:
            wo.remaining -= ev.quantity
            wo.fills += 1

    def _order_done(self, ev: ae.OrderFilled | ae.OrderCancelled | ae.OrderExpired) -> None:
        self._orders.pop(ev.order_id, None)

    def _position_opened(self, ev: ae.PositionOpened) -> None:
        self._positions[ev.position_id] = _OpenPosition(
            account_id=ev.account_id,
            position_id=ev.position_id,
            symbol=Symbol(ev.symbol),
            side=ev.side,
            quantity=ev.quantity,
            take_profit=ev.take_profit,
            stop_loss=ev.stop_loss,
        )

    def _position_increased(self, ev: ae.PositionIncreased) -> None:
        self._positions[ev.position_id].quantity = ev.new_quantity

    def _position_reduced(self, ev: ae.PositionReduced) -> None:
        self._positions[ev.position_id].quantity = ev.remaining

    def _position_closing(self, ev: ae.PositionClosing) -> None:
        op = self._positions.get(ev.position_id)
        if op is not None:
            op.closing = True

    def _position_closed(self, ev: ae.PositionClosed) -> None:
        self._positions.pop(ev.position_id, None)

    # --- market data -----------------------------------------------------------------

    def on_price(self, symbol: str, price: Decimal, ts: datetime | None = None) -> None:
        """Record a new last price and fill, trigger or expire what it reaches."""
        sym = symbol if type(symbol) is Symbol else Symbol(symbol)
        self.prices.update(sym, price, ts)
        with self._lock:
            if self._orders:
                self._expire_due()
                for wo in [o for o in self._orders.values() if o.symbol == sym]:
                    self._try_fill(wo)
            if self._positions:
                for op in [p for p in self._positions.values() if p.symbol == sym]:
                    self._check_exits(op)
            self.catch_up()

    def watches(self, symbol: str) -> bool:
        """False when a price of ``symbol`` would only become the last price: no working order,
        no open position with a take-profit or stop-loss on it, no event left to catch up on."""
        if self._orders or self.store.last_position() != self.position:
            return True
        for op in self._positions.values():
            if op.symbol == symbol and not op.closing and (op.take_profit is not None or op.stop_loss is not None):
                return True
        return False

    def _act_on_all(self) -> None:
        self._expire_due()
        for wo in list(self._orders.values()):
            self._try_fill(wo)
        for op in list(self._positions.values()):
            self._check_exits(op)

    def _expire_due(self) -> None:
        now = self.clock.now()
        for wo in list(self._orders.values()):
            if wo.expires_at is not None and wo.expires_at <= now and not wo.done:
                wo.done = True
                self._send(
                    wo,
                    ExpireOrder(
                        account_id=wo.account_id,
                        order_id=wo.order_id,
                        idempotency_key=f"paper:expire:{wo.order_id}",
                    ),
                )

    def _try_fill(self, wo: _WorkingOrder) -> None:
        if wo.done or wo.order_id not in self._orders:
            return
        last = self.prices.last_price(wo.symbol)
        if last is None:
            return
        buy = wo.side is Side.BUY
        order_type = wo.order_type
        if order_type is OrderType.MARKET:
            price = last
        elif order_type is OrderType.LIMIT:
            assert wo.limit_price is not None
            if (buy and last > wo.limit_price) or (not buy and last < wo.limit_price):
                return
            price = last
        else:
            assert wo.stop_price is not None
            if (buy and last < wo.stop_price) or (not buy and last > wo.stop_price):
                return
            price = last
        if order_type is not OrderType.LIMIT and self.slippage:
            price = last * (ONE + self.slippage) if buy else last * (ONE - self.slippage)
        qty = wo.remaining
        if wo.reduce_only:
            # Like a venue, never let a reduce-only order fill past the position it reduces.
            held = [
                p.quantity for p in self._positions.values() if p.account_id == wo.account_id and p.symbol == wo.symbol
            ]
            if not held:
                return
            qty = min(qty, held[0])
        fee = qty * price * self.fee_rate
        fill_id = derived_id("fill", wo.order_id, str(wo.fills))
        wo.done = True
        # Not re-validated: ids are derived, amounts come from the accepted order and a positive price.
        self._send(
            wo,
            RecordFill.trusted(
                account_id=wo.account_id,
                order_id=wo.order_id,
                fill_id=fill_id,
                quantity=qty,
                price=price,
                fee=fee,
                ts_event=self.clock.now(),
                idempotency_key=f"paper:{fill_id}",
                command_id=f"paper:{fill_id}",  # derived: a re-sent fill is the same command
                correlation_id=None,
                user_id="system",
            ),
        )

    def _check_exits(self, op: _OpenPosition) -> None:
        if op.closing or (op.take_profit is None and op.stop_loss is None):
            return
        last = self.prices.last_price(op.symbol)
        if last is None:
            return
        long = op.side is PositionSide.LONG
        reason = None
        if op.take_profit is not None and (last >= op.take_profit if long else last <= op.take_profit):
            reason = "TAKE_PROFIT"
        elif op.stop_loss is not None and (last <= op.stop_loss if long else last >= op.stop_loss):
            reason = "STOP_LOSS"
        if reason is None:
            return
        op.closing = True
        self._send(
            op,
            ClosePosition(
                account_id=op.account_id,
                position_id=op.position_id,
                reason=reason,
                idempotency_key=f"paper:{reason}:{op.position_id}",
                user_id="paper-venue",
            ),
        )

    def _send(self, item: _WorkingOrder | _OpenPosition, cmd: Command) -> None:
        """Send ``cmd``; a refusal is logged and final, an infrastructure failure re-arms ``item``."""
        try:
            self.bus.handle(cmd)
        except DomainError as exc:
            log.warning(
                "paper.command_refused",
                command=type(cmd).__name__,
                code=exc.code,
                error=exc.message,
                account_id=getattr(cmd, "account_id", None),
            )
        except Exception:
            if isinstance(item, _WorkingOrder):
                item.done = False
            else:
                item.closing = False
            log.exception("paper.command_failed", command=type(cmd).__name__)
            raise


# How each account event changes what the venue tracks (events not listed change nothing).
_TRACKERS: dict[type[Event], Callable[[PaperExecution, Any], None]] = {
    ae.OrderAccepted: PaperExecution._order_accepted,
    ae.OrderPartiallyFilled: PaperExecution._order_partially_filled,
    ae.OrderFilled: PaperExecution._order_done,
    ae.OrderCancelled: PaperExecution._order_done,
    ae.OrderExpired: PaperExecution._order_done,
    ae.PositionOpened: PaperExecution._position_opened,
    ae.PositionIncreased: PaperExecution._position_increased,
    ae.PositionReduced: PaperExecution._position_reduced,
    ae.PositionClosing: PaperExecution._position_closing,
    ae.PositionClosed: PaperExecution._position_closed,
}
