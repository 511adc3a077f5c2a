"""Notifications read model: what a user is told about, and whether it was read.

Tables:
- ``notifications`` (key ``ntf-<event id>``): order filled, order rejected, position
  closed (with its net P&L), emergency stop, trading resumed, liquidation requested.
- ``notifications_accounts`` (key ``account_id``): owner and mode, to address users.

Risk alerts are rows of the risk projection (``risk_alerts``); ``queries.notifications``
lists both together, alerts as category ``alert``. ``NotificationRead`` marks either kind
read: this projection handles its own ids, the risk projection its alert ids.

Categories follow the notifications API: ``trade``, ``system``, ``alert``; severities
``info``, ``warning``, ``critical``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from domain import account_events as ae
from domain import alerts as _alerts  # noqa: F401  (registers the acknowledgement events for decoding)
from domain.envelope import RecordedEvent
from projections.base import Projection, ReadModel, Row, TableSpec

NOTIFICATIONS = "notifications"
ACCOUNTS = "notifications_accounts"


def notification_id(event_id: str) -> str:
    return f"ntf-{event_id}"


class NotificationsProjection(Projection):
    name = "notifications"
    version = 1
    tables = (
        TableSpec(NOTIFICATIONS, indexes=("account_id", "owner_id", "category", "read"), order_by="ts"),
        TableSpec(ACCOUNTS, indexes=("owner_id",)),
    )
    _ON: ClassVar[dict[str, str]] = {
        "OrderFilled": "_order_filled",
        "OrderRejected": "_order_rejected",
        "PositionClosed": "_position_closed",
        "TradingHalted": "_halted",
        "TradingResumed": "_resumed",
        "LiquidationRequested": "_liquidation",
    }
    handles = frozenset(_ON) | {"AccountOpened", "NotificationRead"}

    def __init__(self) -> None:
        self._on: dict[str, Callable[[Any], Row]] = {t: getattr(self, m) for t, m in self._ON.items()}

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        t = rec.type
        fn = self._on.get(t)
        if fn is None:
            if t == "AccountOpened":
                e: Any = rec.event
                model.put(ACCOUNTS, e.account_id, {
                    "account_id": e.account_id, "owner_id": e.owner_id, "mode": str(e.mode),
                })
            elif t == "NotificationRead":
                self._read(model, rec.event)
            return
        nid = "ntf-" + rec.event_id
        if model.get(NOTIFICATIONS, nid) is not None:
            return  # re-delivered: keep its read flag
        e = rec.event
        row = fn(e)
        acc = model.get(ACCOUNTS, e.account_id)
        row["id"] = nid
        row["account_id"] = e.account_id
        row["owner_id"] = None if acc is None else acc["owner_id"]
        row["mode"] = None if acc is None else acc["mode"]
        row["ts"] = e.at
        row["read"] = False
        row["read_at"] = None
        row["read_by"] = None
        model.put(NOTIFICATIONS, nid, row)

    def _read(self, model: ReadModel, e: Any) -> None:
        row = model.get(NOTIFICATIONS, e.notification_id)
        if row is not None and not row["read"]:
            row["read"] = True
            row["read_at"] = e.at
            row["read_by"] = e.by
            model.put(NOTIFICATIONS, e.notification_id, row)

    # Each builder returns the row without the fields every notification has.

    def _order_filled(self, e: ae.OrderFilled) -> Row:
        side = str(e.side)
        return {
            "category": "trade", "type": "order_filled", "severity": "info", "title": "Order filled",
            "message": f"{e.symbol} {side} order filled: {e.quantity} @ {e.price}",
            "order_id": e.order_id, "position_id": None, "symbol": str(e.symbol), "side": side,
            "quantity": e.quantity, "price": e.price, "pnl": None, "reason_code": None, "by": None,
        }

    def _order_rejected(self, e: ae.OrderRejected) -> Row:
        side = str(e.side)
        return {
            "category": "trade", "type": "order_rejected", "severity": "warning", "title": "Order rejected",
            "message": f"{e.symbol} {side} {e.quantity} rejected: {e.reason_code} ({e.reason})",
            "order_id": e.order_id, "position_id": None, "symbol": e.symbol, "side": side,
            "quantity": e.quantity, "price": None, "pnl": None, "reason_code": e.reason_code, "by": None,
        }

    def _position_closed(self, e: ae.PositionClosed) -> Row:
        net = e.total_realised_pnl - e.fees
        side = str(e.side)
        return {
            "category": "trade", "type": "position_closed", "severity": "info" if net >= 0 else "warning",
            "title": "Position closed",
            "message": f"{e.symbol} {side} position closed ({e.reason}) at {e.exit_price}: net P&L {net}",
            "order_id": e.order_id, "position_id": e.position_id, "symbol": str(e.symbol), "side": side,
            "quantity": e.quantity, "price": e.exit_price, "pnl": net, "reason_code": e.reason, "by": None,
        }

    def _system(self, kind: str, severity: str, title: str, message: str, by: str, reason: str | None) -> Row:
        return {
            "category": "system", "type": kind, "severity": severity, "title": title, "message": message,
            "order_id": None, "position_id": None, "symbol": None, "side": None, "quantity": None,
            "price": None, "pnl": None, "reason_code": reason, "by": by,
        }

    def _halted(self, e: ae.TradingHalted) -> Row:
        return self._system("emergency_stop", "critical", "Emergency stop", f"Trading halted by {e.by}: {e.reason}",
                            e.by, e.reason)

    def _resumed(self, e: ae.TradingResumed) -> Row:
        return self._system("trading_resumed", "info", "Trading resumed", f"Trading resumed by {e.by}", e.by, None)

    def _liquidation(self, e: ae.LiquidationRequested) -> Row:
        return self._system("liquidation", "critical", "Liquidation requested",
                            f"All positions are being closed by {e.by}: {e.reason}", e.by, e.reason)
