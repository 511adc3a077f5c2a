"""Notifications (trade and system events, risk alerts): list and mark read."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import Ctx, IdPath, Reader
from api.errors import ApiError
from api.schemas import ApiModel
from commands.user_handlers import MarkNotificationRead
from projections import notifications as _ntf
from projections import queries
from projections import risk as _risk

router = APIRouter(prefix="/notifications", tags=["notifications"])


class NotificationOut(ApiModel):
    id: str
    category: str
    type: str
    severity: str
    title: str
    message: str
    timestamp: datetime
    read: bool
    read_at: datetime | None
    symbol: str | None = None
    order_id: str | None = None
    position_id: str | None = None
    pnl: Decimal | None = None


class ReadResult(ApiModel):
    id: str
    read: bool = True
    read_at: datetime


def notification_from_row(r: dict[str, Any]) -> NotificationOut:
    return NotificationOut(
        id=r["id"], category=r["category"], type=r["type"], severity=r["severity"], title=r["title"],
        message=r["message"], timestamp=r["ts"], read=r["read"], read_at=r.get("read_at"),
        symbol=r.get("symbol"), order_id=r.get("order_id"), position_id=r.get("position_id"), pnl=r.get("pnl"),
    )


@router.get("", response_model=list[NotificationOut])
def list_notifications(
    caller: Reader,
    ctx: Ctx,
    category: Literal["trade", "system", "alert"] | None = None,
    read: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[NotificationOut]:
    """The caller's notifications and risk alerts, newest first."""
    rows = queries.notifications(ctx.read_store, owner_id=caller.user_id, category=category, read=read, limit=limit)
    return [notification_from_row(r) for r in rows]


@router.patch("/{notification_id}/read", response_model=ReadResult)
def mark_read(notification_id: IdPath, caller: Reader, ctx: Ctx) -> ReadResult:
    """Mark a notification (or a risk alert) read; repeating it changes nothing."""
    row = ctx.read_store.get(_ntf.NOTIFICATIONS, notification_id)
    if row is None:
        row = ctx.read_store.get(_risk.ALERTS, notification_id)
    if row is None or not caller.owns_account(row["account_id"]):
        raise ApiError("NOT_FOUND", f"notification {notification_id} not found")
    result = ctx.send(
        MarkNotificationRead(
            subject_id=caller.user_id, account_id=row["account_id"], notification_id=notification_id,
            user_id=caller.user_id,
        )
    )
    return ReadResult(id=notification_id, read_at=row.get("read_at") or datetime.fromisoformat(result["at"]))
