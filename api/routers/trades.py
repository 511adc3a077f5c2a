"""Trade history (fills) with the seed 004 filters: botId, mode, startDate, endDate, limit."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import Ctx, Reader, account_page
from api.schemas import ApiModel
from domain.values import Side, TradingMode
from projections import queries

router = APIRouter(prefix="/trades", tags=["trades"])


class TradeOut(ApiModel):
    id: str
    order_id: str
    position_id: str | None
    bot_id: str | None
    symbol: str
    side: str
    amount: Decimal
    price: Decimal
    notional: Decimal
    fee: Decimal
    pnl: Decimal | None
    mode: str | None
    timestamp: datetime


def trade_from_row(r: dict[str, Any]) -> TradeOut:
    return TradeOut(
        id=r["id"],
        order_id=r["order_id"],
        position_id=r["position_id"],
        bot_id=r["bot_id"],
        symbol=r["symbol"],
        side=r["side"],
        amount=r["quantity"],
        price=r["price"],
        notional=r["notional"],
        fee=r["fee"],
        pnl=r["realised_pnl"],
        mode=r["mode"],
        timestamp=r["ts"],
    )


@router.get("", response_model=list[TradeOut])
def list_trades(
    caller: Reader,
    ctx: Ctx,
    response: Response,
    bot_id: Annotated[str | None, Query(alias="botId", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = None,
    mode: TradingMode = TradingMode.PAPER,
    start_date: Annotated[datetime | None, Query(alias="startDate")] = None,
    end_date: Annotated[datetime | None, Query(alias="endDate")] = None,
    symbol: Annotated[str | None, Query(max_length=30)] = None,
    side: Side | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[TradeOut]:
    """The caller's fills, newest first; ``pnl`` is set on fills that reduced or closed a position."""
    return account_page(
        ctx, caller, response, mode=mode, bot_id=bot_id, build=trade_from_row,
        fetch=lambda account_id: queries.trades(
            ctx.read_store,
            account_id=account_id,
            bot_id=bot_id,
            symbol=symbol.strip().upper() if symbol else None,
            side=side.value if side else None,
            start=start_date,
            end=end_date,
            limit=limit,
            offset=offset,
        ),
    )
