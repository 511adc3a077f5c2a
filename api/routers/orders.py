"""Orders: place (market / limit / stop, optional TP/SL, ``Idempotency-Key``), cancel, list, get.

A refused order is recorded (``OrderRejected``, for audit) and answered with the error
envelope of its reason code; repeating the request with the same key answers the same.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import AliasChoices, Field

from api.context import ApiContext, Caller
from api.deps import Ctx, IdempotencyKey, IdPath, Reader, Trader, account_page
from api.errors import ApiError
from api.schemas import Amount, ApiModel, RequestModel
from commands.messages import CancelOrder, PlaceOrder
from domain.account import OrderStatus
from domain.values import OrderType, Side, TradingMode
from projections import orders as _orders
from projections import queries

router = APIRouter(prefix="/orders", tags=["orders"])

Leverage = Annotated[Decimal, Field(ge=1, le=100, allow_inf_nan=False, max_digits=10)]


class OrderCreate(RequestModel):
    symbol: str = Field(
        min_length=3, max_length=30, validation_alias=AliasChoices("symbol", "tradingPair", "trading_pair"),
        examples=["BTC/USDT"],
    )
    side: Side
    type: OrderType = Field(default=OrderType.MARKET, validation_alias=AliasChoices("type", "orderType", "order_type"))
    quantity: Amount = Field(validation_alias=AliasChoices("quantity", "amount"))
    price: Amount | None = Field(default=None, description="limit price (limit orders)")
    stop_price: Amount | None = Field(default=None, description="trigger price (stop orders)")
    take_profit: Amount | None = None
    stop_loss: Amount | None = None
    leverage: Leverage = Decimal(1)
    reduce_only: bool = False
    bot_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    expires_at: datetime | None = None


class OrderPlaced(ApiModel):
    id: str
    status: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    take_profit: Decimal | None
    stop_loss: Decimal | None
    leverage: Decimal
    reserved: Decimal | None
    bot_id: str | None


class OrderOut(ApiModel):
    id: str
    account_id: str
    bot_id: str | None
    mode: str | None
    symbol: str
    side: str
    type: str
    status: str
    quantity: Decimal
    filled_quantity: Decimal
    remaining_quantity: Decimal
    avg_price: Decimal | None
    price: Decimal | None
    stop_price: Decimal | None
    take_profit: Decimal | None
    stop_loss: Decimal | None
    leverage: Decimal | None
    reduce_only: bool
    reserved: Decimal
    fees: Decimal
    fills: int
    reason_code: str | None
    reason: str | None
    created_at: datetime | None
    updated_at: datetime | None
    closed_at: datetime | None
    expires_at: datetime | None


class CancelResult(ApiModel):
    id: str
    status: str


def order_from_row(r: dict[str, Any]) -> OrderOut:
    return OrderOut(
        id=r["order_id"],
        account_id=r["account_id"],
        bot_id=r["bot_id"],
        mode=r["mode"],
        symbol=r["symbol"],
        side=r["side"],
        type=r["type"],
        status=r["status"],
        quantity=r["quantity"],
        filled_quantity=r["filled_quantity"],
        remaining_quantity=r["remaining_quantity"],
        avg_price=r["avg_price"],
        price=r["limit_price"],
        stop_price=r["stop_price"],
        take_profit=r["take_profit"],
        stop_loss=r["stop_loss"],
        leverage=r["leverage"],
        reduce_only=r["reduce_only"],
        reserved=r["reserved"],
        fees=r["fees"],
        fills=r["fills"],
        reason_code=r["reason_code"],
        reason=r["reason"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        closed_at=r["closed_at"],
        expires_at=r["expires_at"],
    )


def _from_account(ctx: ApiContext, caller: Caller, order_id: str) -> OrderOut | None:
    """An order the read model has not seen yet, from the account itself."""
    account = ctx.account(caller)
    o = account.s.orders.get(order_id)
    if o is None:
        return None
    return OrderOut(
        id=o.order_id, account_id=account.id, bot_id=o.bot_id, mode=account.s.mode.value, symbol=o.symbol,
        side=o.side.value, type=o.order_type.value, status=o.status.value, quantity=o.quantity,
        filled_quantity=o.filled, remaining_quantity=o.remaining, avg_price=o.average_price, price=o.limit_price,
        stop_price=o.stop_price, take_profit=o.take_profit, stop_loss=o.stop_loss, leverage=o.leverage,
        reduce_only=o.reduce_only, reserved=o.reserved, fees=o.fees, fills=len(o.fill_ids), reason_code=None,
        reason=None, created_at=None, updated_at=None, closed_at=None, expires_at=o.expires_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OrderPlaced)
def place_order(body: OrderCreate, caller: Trader, ctx: Ctx, idempotency_key: IdempotencyKey = None) -> OrderPlaced:
    """Place an order on the caller's paper account; the paper venue fills it against market prices."""
    if body.bot_id is not None:
        ctx.own_bot(caller, body.bot_id)
    account = ctx.account(caller)
    result = ctx.send(
        PlaceOrder(
            account_id=account.id,
            symbol=body.symbol,
            side=body.side,
            order_type=body.type,
            quantity=body.quantity,
            limit_price=body.price,
            stop_price=body.stop_price,
            take_profit=body.take_profit,
            stop_loss=body.stop_loss,
            leverage=body.leverage,
            reduce_only=body.reduce_only,
            bot_id=body.bot_id,
            expires_at=body.expires_at,
            idempotency_key=caller.key(idempotency_key),
            user_id=caller.user_id,
        )
    )
    if result["status"] == "rejected":
        raise ApiError(
            result["reason_code"],
            f"order rejected: {result['reason']}",
            details={"order_id": result["order_id"], "reason_code": result["reason_code"], "reason": result["reason"]},
        )
    return OrderPlaced(
        id=result["order_id"],
        status=result["status"],
        symbol=body.symbol.strip().upper(),
        side=body.side,
        type=body.type,
        quantity=body.quantity,
        price=body.price,
        stop_price=body.stop_price,
        take_profit=body.take_profit,
        stop_loss=body.stop_loss,
        leverage=body.leverage,
        reserved=Decimal(result["reserved"]) if result.get("reserved") is not None else None,
        bot_id=body.bot_id,
    )


@router.get("", response_model=list[OrderOut])
def list_orders(
    caller: Reader,
    ctx: Ctx,
    response: Response,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    symbol: Annotated[str | None, Query(max_length=30)] = None,
    side: Side | None = None,
    bot_id: Annotated[str | None, Query(alias="botId", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = None,
    mode: TradingMode = TradingMode.PAPER,
    start_date: Annotated[datetime | None, Query(alias="startDate")] = None,
    end_date: Annotated[datetime | None, Query(alias="endDate")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[OrderOut]:
    """The caller's orders, newest first."""
    return account_page(
        ctx, caller, response, mode=mode, bot_id=bot_id, build=order_from_row,
        fetch=lambda account_id: queries.orders(
            ctx.read_store,
            account_id=account_id,
            bot_id=bot_id,
            symbol=symbol.strip().upper() if symbol else None,
            side=side.value if side else None,
            status=status_.value if status_ else None,
            start=start_date,
            end=end_date,
            limit=limit,
            offset=offset,
        ),
    )


@router.get("/{order_id}", response_model=OrderOut)
def get_order(order_id: IdPath, caller: Reader, ctx: Ctx) -> OrderOut:
    """One of the caller's orders."""
    row = ctx.read_store.get(_orders.ORDERS, order_id)
    if row is not None and caller.owns_account(row["account_id"]):
        return order_from_row(row)
    found = _from_account(ctx, caller, order_id)
    if found is None:
        raise ApiError("NOT_FOUND", f"order {order_id} not found")
    return found


@router.post("/{order_id}/cancel", response_model=CancelResult)
def cancel_order(order_id: IdPath, caller: Trader, ctx: Ctx) -> CancelResult:
    """Cancel a working order (and release what it reserved)."""
    account = ctx.account(caller)
    result = ctx.send(CancelOrder(account_id=account.id, order_id=order_id, user_id=caller.user_id))
    return CancelResult(id=result["order_id"], status=result["status"])
