"""Bots read model: configuration, lifecycle, last signal, last trade and P&L per bot.

Tables:
- ``bots`` (key ``bot_id``): the bot's configuration and status (from its ``bot-<id>``
  stream) and its trading figures (from account events of orders and positions carrying
  its id). Either side may arrive first; the row is created by whichever does.
- ``bots_orders`` (key ``order_id``) and ``bots_positions`` (key ``position_id``): which
  bot an order or position belongs to (fills and position changes do not name the bot).

P&L: ``realised_pnl`` is gross (from reductions and closes), ``fees`` every fee of the
bot's positions, ``net_pnl`` = realised - fees. A closed position wins when its own net
P&L is above zero. ``SignalGenerated`` (in the bot's stream) sets ``last_signal`` (its
``action``), ``last_signal_at``, ``last_signal_confidence`` and ``last_signal_price``,
read from the payload by name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from domain import account_events as ae
from domain.envelope import RecordedEvent
from projections._ledger import ZERO
from projections.base import Projection, ReadModel, Row, TableSpec

BOTS = "bots"
ORDERS = "bots_orders"
POSITIONS = "bots_positions"


def _stub(bot_id: str) -> Row:
    return {
        "bot_id": bot_id, "owner_id": None, "account_id": None, "name": None, "symbol": None,
        "strategy": None, "mode": None, "timeframe": None, "parameters": {},
        "risk_per_trade_pct": None, "stop_loss_pct": None, "take_profit_pct": None,
        "status": None, "created_at": None, "updated_at": None, "started_at": None,
        "stopped_at": None, "stop_reason": None, "deleted_at": None,
        "last_signal": None, "last_signal_at": None, "last_signal_confidence": None, "last_signal_price": None,
        "last_trade_id": None, "last_trade_at": None, "last_trade_side": None,
        "last_trade_price": None, "last_trade_quantity": None,
        "orders_count": 0, "rejected_orders": 0, "trades_count": 0, "volume": ZERO,
        "open_positions": 0, "closed_positions": 0, "wins": 0, "losses": 0,
        "realised_pnl": ZERO, "fees": ZERO, "net_pnl": ZERO, "bot_version": 0,
    }


def _decimal(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except ArithmeticError:
        return None


def _at(value: Any) -> datetime | None:
    if isinstance(value, datetime) or value is None:
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


class BotsProjection(Projection):
    name = "bots"
    version = 1
    tables = (
        TableSpec(BOTS, indexes=("owner_id", "account_id", "status", "mode", "strategy"), order_by="created_at"),
        TableSpec(ORDERS),
        TableSpec(POSITIONS),
    )
    _ON: ClassVar[dict[str, str]] = {
        "BotCreated": "_config",
        "BotUpdated": "_config",
        "BotStarted": "_started",
        "BotStopped": "_stopped",
        "BotDeleted": "_deleted",
        "OrderAccepted": "_order",
        "OrderRejected": "_order",
        "OrderPartiallyFilled": "_fill",
        "OrderFilled": "_fill",
        "PositionOpened": "_pos_opened",
        "PositionIncreased": "_pos_changed",
        "PositionReduced": "_pos_changed",
        "PositionClosed": "_pos_changed",
    }
    handles = frozenset(_ON) | {"SignalGenerated"}

    def __init__(self) -> None:
        self._on: dict[str, Callable[[ReadModel, RecordedEvent, Any], None]] = {
            t: getattr(self, m) for t, m in self._ON.items()
        }

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        fn = self._on.get(rec.type)
        if fn is not None:
            fn(model, rec, rec.event)
        elif rec.type == "SignalGenerated":
            self._signal(model, rec)

    def _bot(self, model: ReadModel, bot_id: str) -> Row:
        row = model.get(BOTS, bot_id)
        return _stub(bot_id) if row is None else row

    def _own(self, model: ReadModel, rec: RecordedEvent, bot_id: str) -> Row | None:
        """The row for an event of the bot's own stream, or None when already applied."""
        b = self._bot(model, bot_id)
        if rec.version <= b["bot_version"]:
            return None
        b["bot_version"] = rec.version
        return b

    # --- the bot's own stream ------------------------------------------------------------

    def _config(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        b = self._own(model, rec, e.bot_id)
        if b is None:
            return
        c = e.config
        b.update({
            "account_id": c.account_id, "name": c.name, "symbol": str(c.symbol),
            "strategy": c.strategy, "mode": str(c.mode), "timeframe": c.timeframe,
            "parameters": dict(c.parameters), "risk_per_trade_pct": c.risk_per_trade_pct,
            "stop_loss_pct": c.stop_loss_pct, "take_profit_pct": c.take_profit_pct,
            "updated_at": e.at,
        })
        if rec.type == "BotCreated":
            b["owner_id"] = e.owner_id
            b["created_at"] = e.at
            if b["status"] is None:
                b["status"] = "stopped"
        model.put(BOTS, e.bot_id, b)

    def _started(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        b = self._own(model, rec, e.bot_id)
        if b is None:
            return
        b.update({"status": "running", "started_at": e.at, "updated_at": e.at})
        model.put(BOTS, e.bot_id, b)

    def _stopped(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        b = self._own(model, rec, e.bot_id)
        if b is None:
            return
        b.update({"status": "stopped", "stopped_at": e.at, "stop_reason": e.reason, "updated_at": e.at})
        model.put(BOTS, e.bot_id, b)

    def _deleted(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        b = self._own(model, rec, e.bot_id)
        if b is None:
            return
        b.update({"status": "deleted", "deleted_at": e.at, "updated_at": e.at})
        model.put(BOTS, e.bot_id, b)

    def _signal(self, model: ReadModel, rec: RecordedEvent) -> None:
        # Read from the payload by name: this module needs no import of the event class.
        data = rec.data
        bot_id = data.get("bot_id")
        if not bot_id:
            return
        b = self._own(model, rec, bot_id)
        if b is None:
            return
        signal = data.get("action") or data.get("signal") or data.get("side")
        b["last_signal"] = None if signal is None else str(signal)
        b["last_signal_at"] = _at(data.get("at"))
        b["last_signal_confidence"] = _decimal(data.get("confidence"))
        b["last_signal_price"] = _decimal(data.get("price"))
        model.put(BOTS, bot_id, b)

    # --- account streams: orders, fills, positions -------------------------------------

    def _order(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderAccepted) -> None:
        if e.bot_id is None or model.get(ORDERS, e.order_id) is not None:
            return
        model.put(ORDERS, e.order_id, {"order_id": e.order_id, "bot_id": e.bot_id, "last_version": rec.version})
        b = self._bot(model, e.bot_id)
        b["orders_count"] += 1
        if rec.type == "OrderRejected":
            b["rejected_orders"] += 1
        model.put(BOTS, e.bot_id, b)

    def _fill(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderFilled) -> None:
        o = model.get(ORDERS, e.order_id)
        if o is None or rec.version <= o["last_version"]:
            return
        o["last_version"] = rec.version
        model.put(ORDERS, e.order_id, o)
        b = self._bot(model, o["bot_id"])
        b["trades_count"] += 1
        b["volume"] += e.quantity * e.price
        b["last_trade_id"] = e.fill_id
        b["last_trade_at"] = e.at
        b["last_trade_side"] = str(e.side)
        b["last_trade_price"] = e.price
        b["last_trade_quantity"] = e.quantity
        model.put(BOTS, o["bot_id"], b)

    def _pos_opened(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionOpened) -> None:
        if e.bot_id is None or model.get(POSITIONS, e.position_id) is not None:
            return
        model.put(POSITIONS, e.position_id, {
            "position_id": e.position_id, "bot_id": e.bot_id, "last_version": rec.version,
        })
        b = self._bot(model, e.bot_id)
        b["open_positions"] += 1
        b["fees"] += e.fee
        b["net_pnl"] = b["realised_pnl"] - b["fees"]
        model.put(BOTS, e.bot_id, b)

    def _pos_changed(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        p = model.get(POSITIONS, e.position_id)
        if p is None or rec.version <= p["last_version"]:
            return
        p["last_version"] = rec.version
        realised = getattr(e, "realised_pnl", ZERO)
        b = self._bot(model, p["bot_id"])
        b["realised_pnl"] += realised
        b["fees"] += e.fee
        b["net_pnl"] = b["realised_pnl"] - b["fees"]
        if rec.type == "PositionClosed":
            b["open_positions"] -= 1
            b["closed_positions"] += 1
            net = e.total_realised_pnl - e.fees
            if net > 0:
                b["wins"] += 1
            elif net < 0:
                b["losses"] += 1
        model.put(POSITIONS, e.position_id, p)
        model.put(BOTS, p["bot_id"], b)
