"""Simulation controls (seed 001 "testing endpoints"): feed a price to the paper venue.

Admin only, and only where simulation is enabled (development and test by default).
A price fills, triggers or expires what it reaches, exactly as a market-data feed would,
and goes to the bar builders of the running bots. ``timestamp`` (venue time, default now)
lets a simulation replay a market faster than real time: bars close by tick time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from fastapi import APIRouter
from pydantic import Field

from api.deps import Admin, Ctx
from api.errors import ApiError
from api.routers.markets import tradable_pair
from api.schemas import Amount, ApiModel, RequestModel

router = APIRouter(prefix="/simulation", tags=["simulation"])


class PriceTick(RequestModel):
    symbol: str = Field(min_length=3, max_length=30, examples=["BTC/USDT"])
    price: Amount
    timestamp: datetime | None = Field(default=None, description="venue time of the tick (UTC if naive)")


class PriceAccepted(ApiModel):
    symbol: str
    price: Decimal
    timestamp: datetime


@router.post("/prices", response_model=PriceAccepted)
def set_price(body: PriceTick, caller: Admin, ctx: Ctx) -> PriceAccepted:
    """Record a market price for a pair and let the paper venue act on it."""
    if not ctx.api.simulation:
        raise ApiError("NOT_FOUND", "simulation is disabled in this environment")
    sym = tradable_pair(ctx, body.symbol)
    now = ctx.system.clock.now() if body.timestamp is None else body.timestamp
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    ctx.system.paper.on_price(str(sym), body.price, now)
    return PriceAccepted(symbol=str(sym), price=body.price, timestamp=now)
