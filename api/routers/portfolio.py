"""The portfolio of one mode (paper or live): value, balances, positions, P&L, returns.

Reads are served from a cache that the in-process projection runner clears whenever a
row of the caller's accounts changes, so a repeated read costs no query.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import Field

from api.deps import Ctx, Reader
from api.schemas import ApiModel
from domain.values import TradingMode
from projections import queries

router = APIRouter(prefix="/portfolio", tags=["portfolio"])


class AssetOut(ApiModel):
    symbol: str
    side: str
    amount: Decimal
    avg_price: Decimal
    current_price: Decimal
    value: Decimal
    margin: Decimal
    leverage: Decimal
    pnl: Decimal
    pnl_percent: Decimal | None


class Returns(ApiModel):
    daily: float | None = Field(description="compounded return (fraction) over the last UTC day")
    weekly: float | None
    monthly: float | None


class PortfolioOut(ApiModel):
    mode: str
    accounts: list[str]
    total_value: Decimal = Field(description="equity: cash + margin + unrealised P&L")
    available_balance: Decimal
    cash_balance: Decimal
    reserved: Decimal
    invested_value: Decimal
    exposure: Decimal
    unrealised_pnl: Decimal
    realised_pnl: Decimal
    fees: Decimal
    total_pnl: Decimal
    total_pnl_pct: Decimal | None
    daily_pnl: Decimal
    daily_pnl_pct: Decimal | None
    positions: list[AssetOut]
    performance: Returns


def portfolio_out(row: dict[str, Any]) -> PortfolioOut:
    return PortfolioOut(
        mode=row["mode"],
        accounts=row["accounts"],
        total_value=row["total_value"],
        available_balance=row["available_balance"],
        cash_balance=row["cash_balance"],
        reserved=row["reserved"],
        invested_value=row["invested_value"],
        exposure=row["exposure"],
        unrealised_pnl=row["unrealised_pnl"],
        realised_pnl=row["realised_pnl"],
        fees=row["fees"],
        total_pnl=row["total_pnl"],
        total_pnl_pct=row["total_pnl_pct"],
        daily_pnl=row["daily_pnl"],
        daily_pnl_pct=row["daily_pnl_pct"],
        positions=[
            AssetOut(
                symbol=p["symbol"], side=p["side"], amount=p["quantity"], avg_price=p["avg_price"],
                current_price=p["current_price"], value=p["value"], margin=p["margin"], leverage=p["leverage"],
                pnl=p["pnl"], pnl_percent=p.get("pnl_pct"),
            )
            for p in row["positions"]
        ],
        performance=Returns(**row["performance"]),
    )


def portfolio_json(reads: Any, owner_id: str, mode: str) -> dict[str, Any]:
    """The serialised portfolio plus the accounts it covers (for the cache)."""
    row = queries.portfolio_for_mode(reads, owner_id, mode)
    body = portfolio_out(row).model_dump_json(by_alias=True).encode()
    return {"accounts": row["accounts"], "body": body}


@router.get("/{mode}", response_model=PortfolioOut)
async def get_portfolio(mode: TradingMode, caller: Reader, ctx: Ctx) -> Response:
    """Total value, balances, open positions and returns of the caller's accounts of ``mode``."""

    def compute() -> dict[str, Any]:
        return portfolio_json(ctx.read_store, caller.user_id, mode.value)

    cache = ctx.portfolio_cache
    hit = None
    if cache is not None:
        _, hit = cache.get(caller.user_id, mode.value)
    if hit is None:
        hit = await anyio.to_thread.run_sync(ctx.cached_portfolio, caller.user_id, mode.value, compute)
    return Response(hit["body"], media_type="application/json")
