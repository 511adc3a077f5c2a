"""Backtests over stored market data (seed 002): run, list and read results.

A backtest replays stored bars through the bot runner, the paper venue and the account
aggregate on an in-memory event store (see ``streams.backtest``); results are stored
(table ``backtest_results``) and listed per caller. Bars come from the market data store
(``TRADECORE_MARKET_DATA_URL``, default the read store's URL), filled by
``tradecore data import`` or ``tradecore data download``.
"""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AliasChoices, Field

from adapters.marketdata import MarketDataError, OhlcvStore, load_series
from api.context import ApiContext, Caller
from api.deps import Analyst, Ctx
from api.errors import ApiError
from api.routers.markets import ohlcv_store
from api.schemas import RequestModel
from domain.strategies.registry import build
from streams.backtest import (
    BacktestResult,
    BacktestResults,
    BacktestSpec,
    monte_carlo,
    run_backtest,
    walk_forward,
)
from streams.bot_runner import FillConvention

router = APIRouter(prefix="/backtesting", tags=["backtesting"])

Fraction = Annotated[Decimal, Field(ge=0, lt=Decimal("0.1"), allow_inf_nan=False)]
Pct = Annotated[Decimal, Field(gt=0, le=100, allow_inf_nan=False)]
Param = str | int | float | bool | None | list[Any] | dict[str, Any]

_lock = threading.Lock()


def market_data(ctx: ApiContext) -> OhlcvStore:
    """The market data store of this app (the markets router's, opened once)."""
    return ohlcv_store(ctx)


def results_store(ctx: ApiContext) -> BacktestResults:
    with _lock:
        store = ctx.extras.get("backtest_results")
        if store is None:
            store = ctx.extras["backtest_results"] = BacktestResults(ctx.settings.market_data_store_url)
        return store  # type: ignore[no-any-return]


class BacktestOptions(RequestModel):
    """The seed's backtest request: period, capital, costs, Monte Carlo and walk-forward options."""

    start_date: datetime | None = None
    end_date: datetime | None = None
    initial_capital: Annotated[Decimal, Field(gt=0, le=Decimal("1e12"), allow_inf_nan=False)] = Decimal(10000)
    commission: Fraction = Field(
        Decimal("0.001"), description="fee per fill as a fraction of notional (0.001 = 10 bps)"
    )
    slippage: Fraction = Field(Decimal(0), description="price move against each fill, as a fraction")
    fill: FillConvention = Field(FillConvention.NEXT_OPEN, description="next_open (default) or close")
    include_monte_carlo: bool = False
    monte_carlo_runs: Annotated[int, Field(ge=1, le=10_000)] = 1000
    walk_forward: bool = False
    walk_forward_window: Annotated[int, Field(ge=10, le=1_000_000)] = 252
    walk_forward_test: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    parameter_grid: dict[str, list[Param]] = Field(default_factory=dict, max_length=6)
    optimize_metric: str = Field(
        "sharpe_ratio",
        pattern=r"^(sharpe_ratio|sortino_ratio|calmar_ratio|total_return|max_drawdown|profit_factor|win_rate)$",
    )
    qty_step: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] = Decimal("0.00000001")
    include_trades: bool = True


class BacktestRun(BacktestOptions):
    """``POST /api/backtesting/run``: a template with parameters, or one of the caller's strategies."""

    strategy_id: str | None = None
    strategy: str | None = Field(None, validation_alias=AliasChoices("strategy", "template", "strategyType"))
    parameters: dict[str, Param] = Field(default_factory=dict, max_length=100)
    symbol: str = Field("BTC/USDT", validation_alias=AliasChoices("symbol", "tradingPair", "trading_pair"))
    symbols: list[str] | None = Field(None, max_length=1)
    timeframe: str = Field("1h", pattern=r"^[1-9][0-9]{0,3}[mhdw]$")
    risk_per_trade: Pct = Decimal(100)
    stop_loss: Annotated[Decimal, Field(gt=0, lt=100)] | None = None
    take_profit: Annotated[Decimal, Field(gt=0, le=1000)] | None = None


def spec_for(
    body: BacktestOptions,
    *,
    strategy: str,
    parameters: dict[str, Any],
    symbol: str,
    timeframe: str,
    risk_per_trade: Decimal,
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
) -> BacktestSpec:
    build(strategy, parameters)  # 400 on bad parameters before any data is read
    return BacktestSpec(
        strategy=strategy,
        parameters=parameters,
        symbol=symbol,
        timeframe=timeframe,
        cash=body.initial_capital,
        fee_bps=body.commission * 10_000,
        slippage_bps=body.slippage * 10_000,
        fill=body.fill,
        risk_per_trade_pct=risk_per_trade,
        stop_loss_pct=stop_loss,
        take_profit_pct=take_profit,
        qty_step=body.qty_step,
    )


def run_and_store(ctx: ApiContext, caller: Caller, spec: BacktestSpec, body: BacktestOptions) -> dict[str, Any]:
    """Load the bars, run the backtest (and options), store the result, return it."""
    try:
        series = load_series(market_data(ctx), spec.symbol, spec.timeframe, body.start_date, body.end_date)
    except MarketDataError as exc:
        raise ApiError(
            "NOT_FOUND",
            f"{exc}; import bars first (tradecore data import FILE.csv --symbol {spec.symbol} "
            f"--timeframe {spec.timeframe})",
        ) from None
    result: BacktestResult = run_backtest(series, spec)
    if body.include_monte_carlo:
        result.extras["monte_carlo"] = monte_carlo(result, body.monte_carlo_runs)
    if body.walk_forward:
        grid = body.parameter_grid or {}
        if not grid:
            raise ApiError("VALIDATION_ERROR", 'walk_forward needs a parameter_grid, e.g. {"fast": [5, 10]}')
        test = body.walk_forward_test or max(body.walk_forward_window // 4, 1)
        result.extras["walk_forward"] = walk_forward(
            series, spec, grid, train_bars=body.walk_forward_window, test_bars=test, metric=body.optimize_metric
        )
    doc = result.to_dict(trades=True)
    results_store(ctx).save(result, owner_id=caller.user_id, doc=dict(doc))
    if not body.include_trades:
        doc.pop("trades", None)
    return doc


@router.post("/run")
def run(body: BacktestRun, caller: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Run a backtest of a strategy template (or one of the caller's strategies) on stored bars."""
    symbol = (body.symbols or [body.symbol])[0]
    if body.strategy_id is not None:
        bot = ctx.own_bot(caller, body.strategy_id)
        c = bot.config
        spec = spec_for(
            body,
            strategy=c.strategy,
            parameters={**c.parameters, **body.parameters},
            symbol=str(c.symbol),
            timeframe=c.timeframe,
            risk_per_trade=body.risk_per_trade if "risk_per_trade" in body.model_fields_set else c.risk_per_trade_pct,
            stop_loss=body.stop_loss if "stop_loss" in body.model_fields_set else c.stop_loss_pct,
            take_profit=body.take_profit if "take_profit" in body.model_fields_set else c.take_profit_pct,
        )
    else:
        if body.strategy is None:
            raise ApiError("VALIDATION_ERROR", "give strategy (a template id) or strategy_id")
        spec = spec_for(
            body,
            strategy=body.strategy,
            parameters=dict(body.parameters),
            symbol=symbol,
            timeframe=body.timeframe,
            risk_per_trade=body.risk_per_trade,
            stop_loss=body.stop_loss,
            take_profit=body.take_profit,
        )
    return run_and_store(ctx, caller, spec, body)


@router.get("/results")
def list_results(
    caller: Analyst,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """The caller's stored backtests, newest first (summaries only)."""
    return results_store(ctx).list(owner_id=caller.user_id, limit=limit, offset=offset)


@router.get("/results/{result_id}")
def get_result(result_id: str, caller: Analyst, ctx: Ctx) -> dict[str, Any]:
    """One stored backtest with its trades and equity curve."""
    doc = results_store(ctx).get(result_id)
    if doc is None or doc.get("owner_id") != caller.user_id:
        raise ApiError("NOT_FOUND", f"backtest {result_id} not found")
    return doc
