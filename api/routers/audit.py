"""Audit: the events of a stream, and an account's state as it was known at a moment.

A user may read the streams of their own accounts, bots and user record; an admin any
stream. Password hashes never leave the API.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.context import ApiContext, Caller
from api.deps import Analyst, Ctx, IdPath
from api.errors import ApiError
from api.schemas import ApiModel
from domain.account import Account
from domain.bot import Bot

router = APIRouter(prefix="/audit", tags=["audit"])

_SECRET_FIELDS = frozenset({"password_hash"})


class EventOut(ApiModel):
    event_id: str
    stream_id: str
    version: int
    position: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]


class PositionState(ApiModel):
    position_id: str
    symbol: str
    side: str
    quantity: Decimal
    entry_price: Decimal
    margin: Decimal
    leverage: Decimal
    take_profit: Decimal | None
    stop_loss: Decimal | None
    closing_order_id: str | None


class OrderState(ApiModel):
    order_id: str
    symbol: str
    side: str
    type: str
    status: str
    quantity: Decimal
    filled: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    reserved: Decimal


class AccountStateOut(ApiModel):
    account_id: str
    at: datetime | None
    version: int
    last_position: int | None
    opened: bool
    mode: str
    currency: str
    cash: Decimal
    reserved: Decimal
    available: Decimal
    halted: bool
    halt_reason: str | None
    limits: dict[str, Decimal | int]
    day_pnl: Decimal
    high_water_mark: Decimal
    positions: list[PositionState]
    open_orders: list[OrderState]
    closed_positions: int


def may_read(ctx: ApiContext, caller: Caller, stream_id: str) -> bool:
    if caller.role.value == "admin":
        return True
    prefix, _, ident = stream_id.partition("-")
    if prefix == "account":
        return caller.owns_account(ident)
    if prefix == "user":
        return ident == caller.user_id
    if prefix == "bot":
        bot = ctx.load(Bot, ident)
        return bot.s.created and bot.s.owner_id == caller.user_id
    return False


def _redact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in _SECRET_FIELDS else v) for k, v in data.items()}


@router.get("/streams/{stream_id}/events", response_model=list[EventOut])
def stream_events(
    stream_id: IdPath,
    caller: Analyst,
    ctx: Ctx,
    response: Response,
    from_version: Annotated[int, Query(alias="fromVersion", ge=1, le=1_000_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[EventOut]:
    """The stored events of one stream, in order, as recorded (with metadata)."""
    if not may_read(ctx, caller, stream_id):
        raise ApiError("NOT_FOUND", f"stream {stream_id} not found")
    records = ctx.system.store.read_stream(stream_id, from_version)
    if not records and from_version == 1:
        raise ApiError("NOT_FOUND", f"stream {stream_id} not found")
    response.headers["X-Total-Count"] = str(len(records))
    out = []
    for rec in records[:limit]:
        d = rec.to_dict()
        out.append(
            EventOut(
                event_id=d["event_id"], stream_id=d["stream_id"], version=d["version"], position=d["position"],
                type=d["type"], schema_version=d["schema_version"], data=_redact(d["data"]), metadata=d["metadata"],
            )
        )
    return out


@router.get("/accounts/{account_id}", response_model=AccountStateOut)
def account_state(
    account_id: IdPath,
    caller: Analyst,
    ctx: Ctx,
    at: Annotated[datetime | None, Query(description="as recorded up to this moment (default: now)")] = None,
) -> AccountStateOut:
    """Replay the account's stream up to ``at`` (recorded time) and show the state it led to."""
    if not may_read(ctx, caller, f"account-{account_id}"):
        raise ApiError("NOT_FOUND", f"account {account_id} not found")
    if at is not None and at.tzinfo is None:
        raise ApiError("VALIDATION_ERROR", "at needs a time zone, e.g. 2026-01-05T14:03:00Z")
    records = ctx.system.store.read_stream(Account.stream_id_for(account_id))
    if not records:
        raise ApiError("NOT_FOUND", f"account {account_id} not found")
    kept = [r for r in records if at is None or r.ts_recorded <= at]
    acc = ctx.system.bus.repo.load_at(Account, account_id, kept)
    s = acc.s
    lim = s.limits
    return AccountStateOut(
        account_id=account_id, at=at, version=acc.version, last_position=kept[-1].position if kept else None,
        opened=s.opened, mode=s.mode.value, currency=s.currency, cash=s.cash, reserved=s.reserved,
        available=acc.available, halted=s.halted, halt_reason=s.halt_reason if s.halted else None,
        limits={
            "maxPositionSize": lim.max_position_size_pct, "maxDailyLoss": lim.max_daily_loss_pct,
            "maxDrawdown": lim.max_drawdown_pct, "maxLeverage": lim.max_leverage,
            "maxOpenPositions": lim.max_open_positions,
        },
        day_pnl=s.day_pnl, high_water_mark=s.high_water_mark,
        positions=[
            PositionState(
                position_id=p.position_id, symbol=p.symbol, side=p.side.value, quantity=p.quantity,
                entry_price=p.entry_price, margin=p.margin, leverage=p.leverage, take_profit=p.take_profit,
                stop_loss=p.stop_loss, closing_order_id=p.closing_order_id,
            )
            for p in s.positions.values()
        ],
        open_orders=[
            OrderState(
                order_id=o.order_id, symbol=o.symbol, side=o.side.value, type=o.order_type.value,
                status=o.status.value, quantity=o.quantity, filled=o.filled, limit_price=o.limit_price,
                stop_price=o.stop_price, reserved=o.reserved,
            )
            for o in s.orders.values()
        ],
        closed_positions=len(s.closed_positions),
    )
