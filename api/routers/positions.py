"""Positions with their TP/SL prices and P&L: list, get, close (idempotent).

Closing sends a reduce-only market order for the whole position. Repeating the close
(a double click, a retry) answers with the close already under way, or with the closed
position's result: never an error.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import Field

from api.deps import Ctx, IdempotencyKey, IdPath, Reader, Trader, account_page
from api.errors import ApiError
from api.schemas import ApiModel, RequestModel
from commands.messages import ClosePosition
from domain.values import TradingMode
from projections import positions as _pos
from projections import queries

router = APIRouter(prefix="/positions", tags=["positions"])


class PositionOut(ApiModel):
    id: str
    account_id: str
    bot_id: str | None
    mode: str | None
    symbol: str
    side: str
    status: str = Field(description="OPEN, CLOSING or CLOSED")
    quantity: Decimal
    entry_price: Decimal
    current_price: Decimal
    tp_price: Decimal | None = Field(description="take-profit price")
    sl_price: Decimal | None = Field(description="stop-loss price")
    stake: Decimal
    margin: Decimal
    leverage: Decimal
    unrealised_pnl: Decimal
    realised_pnl: Decimal
    fees: Decimal
    pnl: Decimal = Field(description="realised + unrealised - fees")
    pnl_pct: Decimal | None = Field(description="pnl in percent of the stake")
    exit_price: Decimal | None
    close_reason: str | None
    close_order_id: str | None
    opened_at: datetime
    closed_at: datetime | None
    updated_at: datetime


class CloseRequest(RequestModel):
    reason: str = Field(default="MANUAL", min_length=1, max_length=50, pattern=r"^[A-Z_]+$")


class CloseResult(ApiModel):
    id: str
    status: Literal["closing", "closed"]
    close_order_id: str | None = None
    exit_price: Decimal | None = None
    realised_pnl: Decimal | None = None
    fees: Decimal | None = None
    reason: str | None = None


def position_from_row(r: dict[str, Any]) -> PositionOut:
    return PositionOut(
        id=r["position_id"],
        account_id=r["account_id"],
        bot_id=r["bot_id"],
        mode=r["mode"],
        symbol=r["symbol"],
        side=r["side"],
        status=r["status"],
        quantity=r["quantity"],
        entry_price=r["entry_price"],
        current_price=r["last_price"],
        tp_price=r["tp_price"],
        sl_price=r["sl_price"],
        stake=r["stake"],
        margin=r["margin"],
        leverage=r["leverage"],
        unrealised_pnl=r["unrealised_pnl"],
        realised_pnl=r["realised_pnl"],
        fees=r["fees"],
        pnl=r["pnl"],
        pnl_pct=r["pnl_pct"],
        exit_price=r["exit_price"],
        close_reason=r["close_reason"],
        close_order_id=r["close_order_id"],
        opened_at=r["opened_at"],
        closed_at=r["closed_at"],
        updated_at=r["updated_at"],
    )


@router.get("", response_model=list[PositionOut])
def list_positions(
    caller: Reader,
    ctx: Ctx,
    response: Response,
    status_: Annotated[str | None, Query(alias="status", pattern="(?i)^(open|closing|closed)$")] = None,
    symbol: Annotated[str | None, Query(max_length=30)] = None,
    bot_id: Annotated[str | None, Query(alias="botId", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = None,
    mode: TradingMode = TradingMode.PAPER,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[PositionOut]:
    """The caller's positions, newest first, open ones valued at the latest known price."""
    return account_page(
        ctx, caller, response, mode=mode, bot_id=bot_id, build=position_from_row,
        fetch=lambda account_id: queries.positions(
            ctx.read_store,
            account_id=account_id,
            bot_id=bot_id,
            symbol=symbol.strip().upper() if symbol else None,
            status=status_.upper() if status_ else None,
            limit=limit,
            offset=offset,
        ),
    )


@router.get("/{position_id}", response_model=PositionOut)
def get_position(position_id: IdPath, caller: Reader, ctx: Ctx) -> PositionOut:
    """One of the caller's positions."""
    row = queries.position(ctx.read_store, position_id)
    if row is None or not caller.owns_account(row["account_id"]):
        raise ApiError("NOT_FOUND", f"position {position_id} not found")
    if row["status"] != _pos.CLOSED:
        price = queries.latest_price(ctx.read_store, row["symbol"])
        if price is not None and price["ts"] > row["updated_at"]:
            row["last_price"] = price["price"]
            _pos.figures(row)
    return position_from_row(row)


@router.post("/{position_id}/close", response_model=CloseResult)
def close_position(
    position_id: IdPath,
    caller: Trader,
    ctx: Ctx,
    body: Annotated[CloseRequest | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> CloseResult:
    """Close a position at market. Safe to repeat: returns the close under way or its result."""
    account = ctx.account(caller)
    result = ctx.send(
        ClosePosition(
            account_id=account.id,
            position_id=position_id,
            reason=(body.reason if body else "MANUAL"),
            idempotency_key=caller.key(idempotency_key),
            user_id=caller.user_id,
        )
    )
    return CloseResult(
        id=result["position_id"],
        status=result["status"],
        close_order_id=result.get("close_order_id"),
        exit_price=result.get("exit_price"),
        realised_pnl=result.get("realised_pnl"),
        fees=result.get("fees"),
        reason=result.get("reason"),
    )
