"""Positions read model: every position, open or closed, with its TP/SL prices and P&L.

Tables:
- ``positions`` (key ``position_id``), indexed by account, bot, symbol, status, mode and
  the pending close order.
- ``positions_accounts`` (key ``account_id``): the account's mode and owner.

Conventions: ``status`` is OPEN, CLOSING (a close order is working) or CLOSED;
``close_reason`` is TAKE_PROFIT, STOP_LOSS, MANUAL, LIQUIDATION or ORDER (an ordinary
opposite order). ``stake`` is all margin ever committed (opened plus added), ``margin``
what is committed now. ``realised_pnl`` is gross of fees; ``pnl`` = realised +
unrealised - fees and ``pnl_pct`` is ``pnl`` in percent of ``stake``. ``exit_price`` is
the quantity-weighted average over every reduction and the final close. ``unrealised_pnl``
is at ``last_price``, the price of this position's latest fill (queries overlay a newer
market mark).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from domain import account_events as ae
from domain.envelope import RecordedEvent
from projections._ledger import ZERO, pct
from projections.base import Projection, ReadModel, Row, TableSpec

POSITIONS = "positions"
ACCOUNTS = "positions_accounts"

OPEN = "OPEN"
CLOSING = "CLOSING"
CLOSED = "CLOSED"


def figures(p: Row) -> None:
    """Recompute unrealised P&L, total P&L and its percentage from the row's inputs."""
    qty = p["quantity"] if p["status"] != CLOSED else ZERO
    move = p["last_price"] - p["entry_price"]
    upnl = move * qty if p["side"] == "long" else -move * qty
    p["unrealised_pnl"] = upnl
    pnl = p["realised_pnl"] + upnl - p["fees"]
    p["pnl"] = pnl
    p["pnl_pct"] = pct(pnl, p["stake"])


class PositionsProjection(Projection):
    name = "positions"
    version = 1
    tables = (
        TableSpec(
            POSITIONS,
            indexes=("account_id", "bot_id", "symbol", "status", "mode", "close_order_id"),
            order_by="opened_at",
        ),
        TableSpec(ACCOUNTS, indexes=("owner_id",)),
    )
    _ON: ClassVar[dict[str, str]] = {
        "AccountOpened": "_account",
        "PositionOpened": "_opened",
        "PositionIncreased": "_increased",
        "PositionReduced": "_reduced",
        "PositionClosing": "_closing",
        "PositionClosed": "_closed",
        "OrderCancelled": "_close_order_gone",
        "OrderExpired": "_close_order_gone",
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

    def _row(self, model: ReadModel, rec: RecordedEvent, position_id: str) -> Row | None:
        """The position row, or None when missing or ``rec`` was already applied to it."""
        p = model.get(POSITIONS, position_id)
        if p is None or rec.version <= p["last_version"]:
            return None
        p["last_version"] = rec.version
        return p

    def _account(self, model: ReadModel, rec: RecordedEvent, e: ae.AccountOpened) -> None:
        model.put(ACCOUNTS, e.account_id, {
            "account_id": e.account_id, "owner_id": e.owner_id, "mode": str(e.mode),
        })

    def _opened(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionOpened) -> None:
        if model.get(POSITIONS, e.position_id) is not None:
            return
        acc = model.get(ACCOUNTS, e.account_id)
        model.put(POSITIONS, e.position_id, {
            "position_id": e.position_id,
            "account_id": e.account_id,
            "mode": acc["mode"] if acc is not None else None,
            "bot_id": e.bot_id,
            "symbol": str(e.symbol),
            "side": str(e.side),
            "entry_price": e.entry_price,
            "quantity": e.quantity,
            "stake": e.margin,
            "margin": e.margin,
            "leverage": e.leverage,
            "tp_price": e.take_profit,
            "sl_price": e.stop_loss,
            "status": OPEN,
            "opened_at": e.at,
            "open_order_id": e.order_id,
            "closing_at": None,
            "closing_by": None,
            "close_order_id": None,
            "closed_at": None,
            "close_reason": None,
            "exit_price": None,
            "exit_quantity": ZERO,
            "exit_notional": ZERO,
            "last_price": e.entry_price,
            "unrealised_pnl": ZERO,
            "realised_pnl": ZERO,
            "fees": e.fee,
            "pnl": -e.fee,
            "pnl_pct": pct(-e.fee, e.margin),
            "updated_at": e.at,
            "last_version": rec.version,
        })

    def _increased(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionIncreased) -> None:
        p = self._row(model, rec, e.position_id)
        if p is None:
            return
        p["quantity"] = e.new_quantity
        p["entry_price"] = e.new_entry_price
        p["stake"] += e.margin_added
        p["margin"] += e.margin_added
        p["fees"] += e.fee
        p["last_price"] = e.price
        p["updated_at"] = e.at
        figures(p)
        model.put(POSITIONS, e.position_id, p)

    def _exit(self, p: Row, qty: Any, price: Any) -> None:
        p["exit_quantity"] += qty
        p["exit_notional"] += qty * price
        p["exit_price"] = p["exit_notional"] / p["exit_quantity"]
        p["last_price"] = price

    def _reduced(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionReduced) -> None:
        p = self._row(model, rec, e.position_id)
        if p is None:
            return
        self._exit(p, e.quantity, e.price)
        p["quantity"] = e.remaining
        p["margin"] -= e.margin_released
        p["realised_pnl"] += e.realised_pnl
        p["fees"] += e.fee
        p["updated_at"] = e.at
        figures(p)
        model.put(POSITIONS, e.position_id, p)

    def _closing(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionClosing) -> None:
        p = self._row(model, rec, e.position_id)
        if p is None:
            return
        p["status"] = CLOSING
        p["closing_at"] = e.at
        p["closing_by"] = e.by
        p["close_order_id"] = e.close_order_id
        p["close_reason"] = e.reason
        p["updated_at"] = e.at
        model.put(POSITIONS, e.position_id, p)

    def _closed(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionClosed) -> None:
        p = self._row(model, rec, e.position_id)
        if p is None:
            return
        self._exit(p, e.quantity, e.exit_price)
        p["status"] = CLOSED
        p["closed_at"] = e.at
        p["close_reason"] = e.reason
        p["close_order_id"] = e.order_id
        p["margin"] = ZERO
        p["realised_pnl"] = e.total_realised_pnl
        p["fees"] = e.fees
        p["updated_at"] = e.at
        figures(p)
        model.put(POSITIONS, e.position_id, p)

    def _close_order_gone(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderCancelled) -> None:
        # A cancelled or expired close order leaves its position open again.
        for key, p in model.find(POSITIONS, close_order_id=e.order_id):
            if p["status"] != CLOSING or rec.version <= p["last_version"]:
                continue
            p["last_version"] = rec.version
            p["status"] = OPEN
            p["closing_at"] = None
            p["closing_by"] = None
            p["close_order_id"] = None
            p["close_reason"] = None
            p["updated_at"] = e.at
            model.put(POSITIONS, key, p)
