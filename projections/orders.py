"""Orders and trades read model.

Tables:
- ``orders`` (key ``order_id``): every order, accepted or rejected, with its lifecycle.
- ``trades`` (key ``fill_id``): one row per fill; ``realised_pnl`` is set when the fill
  reduced or closed a position (gross of fees, as ``PositionReduced``/``PositionClosed``).
- ``orders_accounts`` (key ``account_id``): the account's mode and owner.

Order ``status`` uses the domain values: accepted, partially_filled, filled, cancelled,
rejected, expired. ``avg_price`` is the quantity-weighted average fill price. Trade ``id``
is the fill id, so a re-delivered fill cannot add a second trade.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from domain import account_events as ae
from domain.envelope import RecordedEvent
from projections._ledger import ZERO
from projections.base import Projection, ReadModel, Row, TableSpec

ORDERS = "orders"
TRADES = "trades"
ACCOUNTS = "orders_accounts"


class OrdersProjection(Projection):
    name = "orders"
    version = 1
    tables = (
        TableSpec(ORDERS, indexes=("account_id", "bot_id", "mode", "symbol", "side", "status"), order_by="created_at"),
        TableSpec(TRADES, indexes=("account_id", "bot_id", "mode", "symbol", "side", "order_id"), order_by="ts"),
        TableSpec(ACCOUNTS, indexes=("owner_id",)),
    )
    _ON: ClassVar[dict[str, str]] = {
        "AccountOpened": "_account",
        "OrderAccepted": "_accepted",
        "OrderRejected": "_rejected",
        "OrderPartiallyFilled": "_fill",
        "OrderFilled": "_fill",
        "OrderCancelled": "_ended",
        "OrderExpired": "_ended",
        "PositionReduced": "_realised",
        "PositionClosed": "_realised",
    }
    handles = frozenset(_ON)

    def __init__(self) -> None:
        self._on: dict[str, Callable[[ReadModel, RecordedEvent, Any], None]] = {
            t: getattr(self, m) for t, m in self._ON.items()
        }

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        fn = self._on.get(rec.type)
        if fn is not None:
            fn(model, rec, rec.event)

    def _mode(self, model: ReadModel, account_id: str) -> str | None:
        acc = model.get(ACCOUNTS, account_id)
        mode: str | None = None if acc is None else acc["mode"]
        return mode

    def _account(self, model: ReadModel, rec: RecordedEvent, e: ae.AccountOpened) -> None:
        model.put(ACCOUNTS, e.account_id, {
            "account_id": e.account_id, "owner_id": e.owner_id, "mode": str(e.mode),
        })

    def _base(self, model: ReadModel, e: ae.OrderAccepted | ae.OrderRejected) -> Row:
        return {
            "order_id": e.order_id,
            "account_id": e.account_id,
            "mode": self._mode(model, e.account_id),
            "bot_id": e.bot_id,
            "symbol": str(e.symbol),
            "side": str(e.side),
            "type": str(e.order_type),
            "quantity": e.quantity,
            "created_at": e.at,
            "updated_at": e.at,
            "filled_quantity": ZERO,
            "filled_notional": ZERO,
            "avg_price": None,
            "fees": ZERO,
            "fills": 0,
            "last_fill_id": None,
            "closed_at": None,
            "reason_code": None,
            "reason": None,
        }

    def _accepted(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderAccepted) -> None:
        if model.get(ORDERS, e.order_id) is not None:
            return
        acc = model.get(ACCOUNTS, e.account_id)
        model.put(ORDERS, e.order_id, {
            "order_id": e.order_id, "client_order_id": e.client_order_id, "account_id": e.account_id,
            "mode": None if acc is None else acc["mode"], "bot_id": e.bot_id, "symbol": str(e.symbol),
            "side": str(e.side), "type": str(e.order_type), "quantity": e.quantity, "status": "accepted",
            "limit_price": e.limit_price, "stop_price": e.stop_price, "take_profit": e.take_profit,
            "stop_loss": e.stop_loss, "leverage": e.leverage, "reduce_only": e.reduce_only,
            "reserved": e.reserved, "reference_price": e.reference_price, "expires_at": e.expires_at,
            "created_at": e.at, "updated_at": e.at, "closed_at": None,
            "filled_quantity": ZERO, "remaining_quantity": e.quantity, "filled_notional": ZERO,
            "avg_price": None, "fees": ZERO, "fills": 0, "last_fill_id": None,
            "reason_code": None, "reason": None,
        })

    def _rejected(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderRejected) -> None:
        if model.get(ORDERS, e.order_id) is not None:
            return
        row = self._base(model, e)
        row.update({
            "client_order_id": None,
            "status": "rejected",
            "limit_price": None,
            "stop_price": None,
            "take_profit": None,
            "stop_loss": None,
            "leverage": None,
            "reduce_only": False,
            "reserved": ZERO,
            "reference_price": None,
            "expires_at": None,
            "remaining_quantity": ZERO,
            "closed_at": e.at,
            "reason_code": e.reason_code,
            "reason": e.reason,
        })
        model.put(ORDERS, e.order_id, row)

    def _fill(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderFilled) -> None:
        if model.get(TRADES, e.fill_id) is not None:
            return
        o = model.get(ORDERS, e.order_id)
        qty, price = e.quantity, e.price
        notional = qty * price
        if o is not None:
            o["filled_quantity"] += qty
            o["filled_notional"] += notional
            o["avg_price"] = o["filled_notional"] / o["filled_quantity"]
            o["remaining_quantity"] = o["quantity"] - o["filled_quantity"]
            o["fees"] += e.fee
            o["fills"] += 1
            o["last_fill_id"] = e.fill_id
            o["updated_at"] = e.at
            if rec.type == "OrderFilled":
                o["status"] = "filled"
                o["closed_at"] = e.at
            else:
                o["status"] = "partially_filled"
            model.put(ORDERS, e.order_id, o)
        model.put(TRADES, e.fill_id, {
            "id": e.fill_id,
            "fill_id": e.fill_id,
            "order_id": e.order_id,
            "account_id": e.account_id,
            "bot_id": None if o is None else o["bot_id"],
            "mode": None if o is None else o["mode"],
            "symbol": str(e.symbol),
            "side": str(e.side),
            "quantity": qty,
            "price": price,
            "notional": notional,
            "fee": e.fee,
            "ts": e.at,
            "realised_pnl": None,
            "position_id": None,
        })

    def _ended(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderCancelled) -> None:
        o = model.get(ORDERS, e.order_id)
        if o is None:
            return
        if rec.type == "OrderCancelled":
            o["status"] = "cancelled"
            o["reason"] = e.reason
        else:
            o["status"] = "expired"
        o["closed_at"] = e.at
        o["updated_at"] = e.at
        model.put(ORDERS, e.order_id, o)

    def _realised(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionReduced) -> None:
        # The position event follows the fill that caused it, in the same append.
        o = model.get(ORDERS, e.order_id)
        if o is None or o["last_fill_id"] is None:
            return
        t = model.get(TRADES, o["last_fill_id"])
        if t is None:
            return
        t["realised_pnl"] = e.realised_pnl
        t["position_id"] = e.position_id
        model.put(TRADES, o["last_fill_id"], t)
