"""Strategies (seed 002): templates, categories, the caller's strategy instances, ensembles,
comparison, signals, performance and backtests.

A strategy instance is a bot: a template (``sma_cross``, ``rsi``...) with parameters,
a pair and a timeframe, trading the caller's paper account. Create, update, delete,
start and stop send the bot commands; signals are the ``SignalGenerated`` events of the
bot's stream (what it decided, with the indicator values); performance comes from the
performance read model.

Starting a strategy (or a bot, ``/api/bots/{id}/start``) records ``BotStarted``; the
app's bot supervisor (``streams.bot_supervisor``) reacts to it by starting the bot's
runner, fed with bars built from the prices the app sees. Stopping, deleting or an
emergency stop (``TradingHalted``) stops the runner the same way; ``runner`` in the
response says whether one trades the strategy in this process.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import AliasChoices, Field

from api.context import ApiContext, Caller
from api.deps import Analyst, BotManager, Ctx, IdempotencyKey, Reader, Reads
from api.errors import ApiError
from api.routers.backtesting import BacktestOptions, run_and_store, spec_for
from api.schemas import ApiModel, RequestModel
from commands.messages import CreateBot, DeleteBot, StartBot, StopBot, UpdateBot
from domain.bot import Bot
from domain.bot_events import SignalGenerated
from domain.strategies.registry import REGISTRY, build, categories, strategy_class, templates
from domain.values import derived_id, new_id
from projections import queries
from streams.backtest import _bot_parameters, compare

router = APIRouter(prefix="/strategies", tags=["strategies"])

Pct = Annotated[Decimal, Field(gt=0, le=100, allow_inf_nan=False)]
Param = str | int | float | bool | None | list[Any] | dict[str, Any]
Timeframe = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}[mhdw]$")]


class StrategyConfig(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: Annotated[str, Field(max_length=1000)] | None = None
    strategy: str = Field(validation_alias=AliasChoices("strategy", "template", "type", "strategyType"))
    category: str | None = None
    parameters: dict[str, Param] = Field(default_factory=dict, max_length=100)
    risk_level: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=20)
    timeframe: Timeframe = "1h"
    symbols: list[str] = Field(min_length=1, max_length=1, validation_alias=AliasChoices("symbols", "symbol"))
    risk_per_trade: Pct = Decimal(2)
    stop_loss: Annotated[Decimal, Field(gt=0, lt=100)] | None = None
    take_profit: Annotated[Decimal, Field(gt=0, le=1000)] | None = None


class StrategyCreate(RequestModel):
    config: StrategyConfig
    auto_start: bool = False
    validate_parameters: bool = True


class StrategyUpdate(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    parameters: dict[str, Param] | None = None
    timeframe: Timeframe | None = None
    risk_per_trade: Pct | None = None
    stop_loss: Annotated[Decimal, Field(gt=0, lt=100)] | None = None
    take_profit: Annotated[Decimal, Field(gt=0, le=1000)] | None = None


class EnsembleCreate(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: str | None = None
    strategy_weights: dict[str, Annotated[float, Field(gt=0, le=1000)]] = Field(min_length=2, max_length=10)
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    symbol: str | None = None
    timeframe: Timeframe | None = None
    rebalance_frequency: str | None = None
    risk_management: dict[str, Decimal] = Field(default_factory=dict)


class CompareRequest(RequestModel):
    strategy_ids: list[str] = Field(min_length=2, max_length=10)
    period: str = Field("all", pattern=r"^(7d|30d|90d|1y|all)$")
    metrics: list[str] | None = None
    initial_capital: Annotated[Decimal, Field(gt=0)] = Decimal(10000)
    commission: Annotated[Decimal, Field(ge=0, lt=Decimal("0.1"))] = Decimal("0.001")


class StrategyOut(ApiModel):
    id: str
    name: str
    strategy: str
    category: str
    risk_level: str
    parameters: dict[str, Any]
    symbols: list[str]
    timeframe: str
    mode: str
    status: str
    risk_per_trade: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    last_signal: str | None = None
    last_signal_at: datetime | None = None
    signals_count: int = 0
    runner: str | None = None


def strategy_out(ctx: ApiContext, bot: Bot) -> StrategyOut:
    c = bot.config
    cls = REGISTRY.get(c.strategy)
    return StrategyOut(
        id=bot.id,
        name=c.name,
        strategy=c.strategy,
        category=cls.category.value if cls else "unknown",
        risk_level=cls.risk_level.value if cls else "unknown",
        parameters=dict(c.parameters),
        symbols=[str(c.symbol)],
        timeframe=c.timeframe,
        mode=c.mode.value,
        status=bot.s.status.value,
        risk_per_trade=c.risk_per_trade_pct,
        stop_loss=c.stop_loss_pct,
        take_profit=c.take_profit_pct,
        created_at=bot.s.created_at,
        started_at=bot.s.started_at,
        stopped_at=bot.s.stopped_at,
        last_signal=getattr(bot.s, "last_signal_action", None),
        last_signal_at=getattr(bot.s, "last_signal_bar", None),
        signals_count=getattr(bot.s, "signals", 0),
        runner=None if ctx.bots is None else ctx.bots.runner_state(bot.id),
    )


# --- templates and categories (before /{strategy_id}) ------------------------------------------


@router.get("/templates")
def list_templates(
    caller: Reader,
    category: str | None = None,
    risk_level: Annotated[str | None, Query(pattern="^(low|medium|high)$")] = None,
) -> list[dict[str, Any]]:
    """Strategy templates: id, category, risk level, default parameters and their JSON schema."""
    return templates(category=category, risk_level=risk_level)


@router.get("/categories")
def list_categories(caller: Reader, reads: Reads) -> list[dict[str, Any]]:
    """Strategy categories with their templates and how many of the caller's strategies use them."""
    rows = queries.bots(reads, owner_id=caller.user_id, limit=1_000_000).items
    usage = Counter(r["strategy"] for r in rows if r.get("status") not in (None, "deleted"))
    return categories(dict(usage))


# --- ensembles and comparison ---------------------------------------------------------------------


@router.post("/ensemble", status_code=status.HTTP_201_CREATED, response_model=StrategyOut)
def create_ensemble(
    body: EnsembleCreate, caller: BotManager, ctx: Ctx, idempotency_key: IdempotencyKey = None
) -> StrategyOut:
    """Create a strategy whose decision is the weighted vote of some of the caller's strategies."""
    members = []
    symbols = set()
    timeframes = set()
    for sid, weight in body.strategy_weights.items():
        c = ctx.own_bot(caller, sid).config
        if c.strategy == "ensemble":
            raise ApiError("VALIDATION_ERROR", "an ensemble cannot contain an ensemble")
        members.append({"strategy": c.strategy, "parameters": dict(c.parameters), "weight": repr(float(weight))})
        symbols.add(str(c.symbol))
        timeframes.add(c.timeframe)
    symbol = body.symbol or (symbols.pop() if len(symbols) == 1 else None)
    timeframe = body.timeframe or (timeframes.pop() if len(timeframes) == 1 else None)
    if symbol is None or timeframe is None:
        raise ApiError("VALIDATION_ERROR", "members trade different pairs or timeframes: give symbol and timeframe")
    params = {"members": members, "threshold": repr(float(body.threshold))}
    build("ensemble", params)
    rm = body.risk_management
    sl = rm.get("stop_loss")
    config = StrategyConfig(
        name=body.name,
        strategy="ensemble",
        parameters=params,
        timeframe=timeframe,
        symbols=[symbol],
        stop_loss=sl * 100 if sl is not None and sl < 1 else sl,
    )
    return _create(ctx, caller, config, auto_start=False, key=caller.key(idempotency_key))


@router.post("/compare")
def compare_strategies(
    caller: Analyst,
    ctx: Ctx,
    body: CompareRequest | None = None,
    strategy_ids: Annotated[list[str] | None, Query()] = None,
    period: Annotated[str, Query(pattern=r"^(7d|30d|90d|1y|all)$")] = "all",
) -> dict[str, Any]:
    """Backtest 2-10 of the caller's strategies on the same stored bars and rank them."""
    req = body or CompareRequest(strategy_ids=strategy_ids or [], period=period)
    bots = [ctx.own_bot(caller, sid) for sid in req.strategy_ids]
    pairs = {(str(b.config.symbol), b.config.timeframe) for b in bots}
    if len(pairs) != 1:
        raise ApiError("VALIDATION_ERROR", "compared strategies must trade the same pair and timeframe")
    symbol, timeframe = pairs.pop()
    from adapters.marketdata import MarketDataError, load_series
    from api.routers.backtesting import market_data

    try:
        series = load_series(market_data(ctx), symbol, timeframe)
    except MarketDataError as exc:
        raise ApiError("NOT_FOUND", str(exc)) from None
    days = {"7d": 7, "30d": 30, "90d": 90, "1y": 365}.get(req.period)
    if days is not None:
        cutoff = int(series.time[-1]) - days * 86_400 * 10**9
        start = int((series.time < cutoff).sum())
        series = series.slice(start, len(series))
    opts = BacktestOptions(initial_capital=req.initial_capital, commission=req.commission)
    specs = [
        spec_for(
            opts,
            strategy=b.config.strategy,
            parameters=dict(b.config.parameters),
            symbol=symbol,
            timeframe=timeframe,
            risk_per_trade=b.config.risk_per_trade_pct,
            stop_loss=b.config.stop_loss_pct,
            take_profit=b.config.take_profit_pct,
        )
        for b in bots
    ]
    rows = compare(series, specs, labels=[b.id for b in bots])
    names = {b.id: b.config.name for b in bots}
    for row in rows:
        row["strategy_id"] = row.pop("label")
        row["name"] = names[row["strategy_id"]]
    keep = req.metrics
    if keep:
        rows = [{k: v for k, v in r.items() if k in {*keep, "strategy_id", "name", "rank"}} for r in rows]
    return {"period": req.period, "symbol": symbol, "timeframe": timeframe, "strategies": rows}


# --- CRUD ---------------------------------------------------------------------------------------


def _create(
    ctx: ApiContext, caller: Caller, config: StrategyConfig, *, auto_start: bool, key: str | None
) -> StrategyOut:
    cls = strategy_class(config.strategy)
    if config.category is not None and config.category != cls.category.value:
        raise ApiError(
            "VALIDATION_ERROR", f"{config.strategy} is in category {cls.category.value}, not {config.category}"
        )
    account = ctx.account(caller)
    bot_id = derived_id("bot", key) if key else new_id("bot")
    result = ctx.send(
        CreateBot(
            bot_id=bot_id,
            owner_id=caller.user_id,
            account_id=account.id,
            name=config.name,
            symbol=config.symbols[0],
            strategy=config.strategy,
            parameters=_bot_parameters(dict(config.parameters)),
            timeframe=config.timeframe,
            risk_per_trade_pct=config.risk_per_trade,
            stop_loss_pct=config.stop_loss,
            take_profit_pct=config.take_profit,
            idempotency_key=key,
            user_id=caller.user_id,
        )
    )
    if auto_start:
        _start(ctx, caller, result["bot_id"])
    return strategy_out(ctx, ctx.own_bot(caller, result["bot_id"]))


@router.get("", response_model=list[StrategyOut])
def list_strategies(
    caller: Reader,
    ctx: Ctx,
    reads: Reads,
    response: Response,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=100)] = 20,
    category: str | None = None,
    status_: Annotated[str | None, Query(alias="status", pattern="^(running|stopped)$")] = None,
    risk_level: Annotated[str | None, Query(pattern="^(low|medium|high)$")] = None,
    search: Annotated[str | None, Query(max_length=100)] = None,
) -> list[StrategyOut]:
    """The caller's strategies, filtered and paged (``X-Total-Count`` holds the total)."""
    rows = [
        r
        for r in queries.bots(reads, owner_id=caller.user_id, limit=1_000_000).items
        if r.get("status") not in (None, "deleted")
    ]
    out = []
    for r in rows:
        bot = ctx.load(Bot, r["bot_id"])
        if not bot.s.created or bot.s.owner_id != caller.user_id:
            continue
        s = strategy_out(ctx, bot)
        if category and s.category != category:
            continue
        if status_ and s.status != status_:
            continue
        if risk_level and s.risk_level != risk_level:
            continue
        if search and search.lower() not in s.name.lower():
            continue
        out.append(s)
    response.headers["X-Total-Count"] = str(len(out))
    return out[(page - 1) * size : page * size]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StrategyOut)
def create_strategy(
    body: StrategyCreate, caller: BotManager, ctx: Ctx, idempotency_key: IdempotencyKey = None
) -> StrategyOut:
    """Create a strategy instance (a bot on the caller's paper account) from a template."""
    if body.validate_parameters:
        build(body.config.strategy, dict(body.config.parameters))
    return _create(ctx, caller, body.config, auto_start=body.auto_start, key=caller.key(idempotency_key))


@router.get("/{strategy_id}", response_model=StrategyOut)
def get_strategy(strategy_id: str, caller: Reader, ctx: Ctx) -> StrategyOut:
    return strategy_out(ctx, ctx.own_bot(caller, strategy_id))


@router.put("/{strategy_id}", response_model=StrategyOut)
def update_strategy(strategy_id: str, body: StrategyUpdate, caller: BotManager, ctx: Ctx) -> StrategyOut:
    """Change parameters or settings (validated against the template)."""
    bot = ctx.own_bot(caller, strategy_id)
    changes: dict[str, Any] = {}
    names = {
        "name": "name",
        "timeframe": "timeframe",
        "risk_per_trade": "risk_per_trade_pct",
        "stop_loss": "stop_loss_pct",
        "take_profit": "take_profit_pct",
    }
    for f in body.model_fields_set:
        if f in names:
            changes[names[f]] = getattr(body, f)
    if body.parameters is not None:
        build(bot.config.strategy, dict(body.parameters))
        changes["parameters"] = _bot_parameters(dict(body.parameters))
    if changes:
        ctx.send(UpdateBot(bot_id=strategy_id, changes=changes, user_id=caller.user_id))
    return strategy_out(ctx, ctx.own_bot(caller, strategy_id))


@router.delete("/{strategy_id}")
def delete_strategy(strategy_id: str, caller: BotManager, ctx: Ctx) -> dict[str, Any]:
    ctx.own_bot(caller, strategy_id)
    ctx.send(DeleteBot(bot_id=strategy_id, user_id=caller.user_id))
    return {"success": True, "message": "Strategy deleted", "strategyId": strategy_id}


# --- control -------------------------------------------------------------------------------------


def _start(ctx: ApiContext, caller: Caller, strategy_id: str) -> str:
    bot = ctx.own_bot(caller, strategy_id)
    if ctx.account(caller, bot.config.mode).s.halted:
        raise ApiError("TRADING_HALTED", "trading is halted by an emergency stop; resume trading first")
    ctx.send(StartBot(bot_id=strategy_id, user_id=caller.user_id))
    return runner_message(ctx, strategy_id)


def runner_message(ctx: ApiContext, bot_id: str) -> str:
    """What a start led to in this process (the supervisor reacted to ``BotStarted`` already)."""
    if ctx.bots is None:
        return "started; this process runs no bots (a `tradecore bots` worker trades it)"
    if ctx.bots.runner_state(bot_id) is None:
        return "started; no runner: the bot is not a paper bot or its account is halted"
    return "started with a runner"


@router.post("/{strategy_id}/start")
def start_strategy(strategy_id: str, caller: BotManager, ctx: Ctx) -> dict[str, Any]:
    message = _start(ctx, caller, strategy_id)
    return {"success": True, "message": message, "strategyId": strategy_id, "status": "running"}


@router.post("/{strategy_id}/stop")
def stop_strategy(strategy_id: str, caller: BotManager, ctx: Ctx) -> dict[str, Any]:
    ctx.own_bot(caller, strategy_id)
    ctx.send(StopBot(bot_id=strategy_id, user_id=caller.user_id))
    return {"success": True, "message": "Strategy stopped", "strategyId": strategy_id, "status": "stopped"}


# --- what it did ---------------------------------------------------------------------------------


@router.get("/{strategy_id}/signals")
def strategy_signals(
    strategy_id: str,
    caller: Reader,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The strategy's recorded signals, newest first, with the indicator values behind each."""
    ctx.own_bot(caller, strategy_id)
    out = []
    for rec in reversed(ctx.system.store.read_stream(Bot.stream_id_for(strategy_id))):
        e = rec.event
        if not isinstance(e, SignalGenerated):
            continue
        if since is not None and e.bar_time < since:
            break
        out.append(
            {
                "id": rec.event_id,
                "barTime": e.bar_time.isoformat(),
                "symbol": e.symbol,
                "action": e.action,
                "confidence": str(e.confidence),
                "strength": str(e.strength),
                "price": None if e.price is None else str(e.price),
                "indicators": e.indicators,
                "createdAt": e.at.isoformat(),
            }
        )
        if len(out) >= limit:
            break
    return out


@router.get("/{strategy_id}/history")
def strategy_history(
    strategy_id: str,
    caller: Reader,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    event_type: str | None = None,
) -> list[dict[str, Any]]:
    """The strategy's own events (created, updated, started, stopped, signals), newest first."""
    ctx.own_bot(caller, strategy_id)
    recs = [
        r
        for r in ctx.system.store.read_stream(Bot.stream_id_for(strategy_id))
        if event_type is None or r.type == event_type
    ]
    return [r.to_dict() for r in reversed(recs[-limit:])]


@router.get("/{strategy_id}/performance")
def strategy_performance(
    strategy_id: str,
    caller: Reader,
    ctx: Ctx,
    reads: Reads,
    period: Annotated[str, Query(pattern=r"^(1d|7d|30d|90d|1y|all)$")] = "all",
) -> dict[str, Any]:
    """Return, Sharpe, Sortino, Calmar, drawdown, win rate, profit factor of the strategy's trades."""
    ctx.own_bot(caller, strategy_id)
    try:
        row: dict[str, Any] = queries.performance(reads, "bot", strategy_id, period, ctx.system.clock.now())
    except ValueError as exc:
        raise ApiError("VALIDATION_ERROR", str(exc)) from None
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}


@router.post("/{strategy_id}/backtest")
def backtest_strategy(strategy_id: str, body: BacktestOptions, caller: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Backtest the strategy's configuration over stored bars (seed 002 request)."""
    c = ctx.own_bot(caller, strategy_id).config
    spec = spec_for(
        body,
        strategy=c.strategy,
        parameters=dict(c.parameters),
        symbol=str(c.symbol),
        timeframe=c.timeframe,
        risk_per_trade=c.risk_per_trade_pct,
        stop_loss=c.stop_loss_pct,
        take_profit=c.take_profit_pct,
    )
    doc = run_and_store(ctx, caller, spec, body)
    doc["strategyId"] = strategy_id
    return doc
