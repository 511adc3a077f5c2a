"""Markets: tradable pairs, last price, OHLCV bars from the market-data store.

Pairs are written ``BTC/USDT`` (URL-encoded or not) or ``BTC-USDT``. Bars come from the
OHLCV store of ``adapters.marketdata`` (``TRADECORE_MARKET_DATA_URL``, default the read
store's URL), filled by ``tradecore data import`` / ``download``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from adapters.marketdata import MarketDataError, OhlcvStore, open_ohlcv_store
from api.context import ApiContext
from api.deps import Ctx, Reader
from api.errors import ApiError
from api.schemas import ApiModel
from domain.errors import ValidationFailed
from domain.values import Symbol
from projections import queries

router = APIRouter(prefix="/markets", tags=["markets"])
_lock = threading.Lock()

PairPath = Annotated[str, Path(max_length=40, description="BTC/USDT or BTC-USDT")]


class MarketOut(ApiModel):
    symbol: str
    base_asset: str
    quote_asset: str
    price: Decimal | None
    timestamp: datetime | None
    change24h: Decimal | None = None
    volume24h: Decimal | None = None


class PriceOut(ApiModel):
    symbol: str
    price: Decimal
    timestamp: datetime | None
    source: str


class Candle(ApiModel):
    timestamp: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


def tradable_pair(ctx: ApiContext, pair: str) -> Symbol:
    """The pair as a ``Symbol``; 404 when it is not traded here."""
    try:
        sym = Symbol(pair.replace("-", "/").replace("_", "/"))
    except ValidationFailed:
        raise ApiError("NOT_FOUND", f"no market {pair!r}") from None
    if not ctx.system.markets.is_tradable(sym):
        raise ApiError("NOT_FOUND", f"no market {pair!r}")
    return sym


def last_price(ctx: ApiContext, sym: Symbol) -> PriceOut | None:
    live = ctx.system.prices.last(str(sym))
    if live is not None:
        return PriceOut(symbol=str(sym), price=live[0], timestamp=live[1], source="market")
    row = queries.latest_price(ctx.read_store, str(sym))
    if row is not None:
        return PriceOut(symbol=str(sym), price=row["price"], timestamp=row["ts"], source=row["source"])
    return None


def ohlcv_store(ctx: ApiContext) -> OhlcvStore:
    """The app's OHLCV store, opened on first use (shared through ``ctx.extras``)."""
    with _lock:
        store = ctx.extras.get("market_data")
        if store is None:
            url = ctx.settings.market_data_store_url
            try:
                store = ctx.extras["market_data"] = open_ohlcv_store(url)
            except (ValueError, MarketDataError) as exc:
                raise ApiError("NOT_AVAILABLE", f"no OHLCV store: {exc}") from None
        return store  # type: ignore[no-any-return]


@router.get("", response_model=list[MarketOut])
def list_markets(caller: Reader, ctx: Ctx) -> list[MarketOut]:
    """Every tradable pair with its last known price (24 h figures need a market-data feed)."""
    out = []
    for s in ctx.system.markets.symbols():
        sym = Symbol(s)
        p = last_price(ctx, sym)
        out.append(
            MarketOut(
                symbol=s, base_asset=sym.base, quote_asset=sym.quote, price=p.price if p else None,
                timestamp=p.timestamp if p else None,
            )
        )
    return out


@router.get("/{pair:path}/price", response_model=PriceOut)
def get_price(pair: PairPath, caller: Reader, ctx: Ctx) -> PriceOut:
    """The last known price of a pair (503 NOT_AVAILABLE while none is known)."""
    p = last_price(ctx, tradable_pair(ctx, pair))
    if p is None:
        raise ApiError("NOT_AVAILABLE", f"no price known for {pair} yet")
    return p


@router.get("/{pair:path}/ohlcv", response_model=list[Candle])
def get_ohlcv(
    pair: PairPath,
    caller: Reader,
    ctx: Ctx,
    timeframe: Literal["1m", "5m", "15m", "1h", "4h", "1d"] = "1h",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    start_time: Annotated[datetime | None, Query(alias="startTime")] = None,
) -> list[Candle]:
    """Stored OHLCV candles, oldest first, from ``startTime`` (default: the latest ``limit``)."""
    sym = tradable_pair(ctx, pair)
    if start_time is not None and start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    bars = ohlcv_store(ctx).load(str(sym), timeframe, start_time, None)
    bars = bars[-limit:] if start_time is None else bars[:limit]
    return [
        Candle(timestamp=b.time, open=b.open, high=b.high, low=b.low, close=b.close, volume=b.volume) for b in bars
    ]
