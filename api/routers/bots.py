"""Trading bots: list, create, get, update, delete, start, stop (seed 004 shapes).

Configuration and status come from the bot's own stream (exact, so a bot just created or
started reads back at once); trading figures come from the bots read model.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import AliasChoices, Field

from api.context import ApiContext, Caller
from api.deps import BotManager, Ctx, IdempotencyKey, Reader, Reads
from api.errors import ApiError
from api.schemas import ApiModel, RequestModel
from commands.messages import CreateBot, DeleteBot, StartBot, StopBot, UpdateBot
from domain.bot import Bot
from domain.values import TradingMode, derived_id, new_id
from projections import queries

router = APIRouter(prefix="/bots", tags=["bots"])

Pct = Annotated[Decimal, Field(gt=0, le=100, allow_inf_nan=False)]
TakeProfitPct = Annotated[Decimal, Field(gt=0, le=1000, allow_inf_nan=False)]
StopLossPct = Annotated[Decimal, Field(gt=0, lt=100, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=100)]
Strategy = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$", examples=["momentum"])]
Timeframe = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}[mhdw]$", examples=["1h"])]
Pair = Annotated[str, Field(min_length=3, max_length=30, examples=["BTC/USDT"])]
Param = str | int | bool | None | list[str | int | bool | None]


class BotCreate(RequestModel):
    name: Name
    trading_pair: Pair = Field(validation_alias=AliasChoices("tradingPair", "trading_pair", "symbol"))
    strategy: Strategy
    mode: TradingMode = TradingMode.PAPER
    timeframe: Timeframe = "1h"
    risk_per_trade: Pct = Decimal(2)
    stop_loss: StopLossPct | None = Field(default=None, description="percent below/above entry")
    take_profit: TakeProfitPct | None = Field(default=None, description="percent above/below entry")
    indicators: list[Annotated[str, Field(max_length=50)]] | None = Field(default=None, max_length=50)
    parameters: dict[Annotated[str, Field(max_length=64)], Param] = Field(default_factory=dict, max_length=100)


class BotUpdate(RequestModel):
    name: Name | None = None
    trading_pair: Pair | None = Field(
        default=None, validation_alias=AliasChoices("tradingPair", "trading_pair", "symbol")
    )
    strategy: Strategy | None = None
    mode: TradingMode | None = None
    timeframe: Timeframe | None = None
    risk_per_trade: Pct | None = None
    stop_loss: StopLossPct | None = None
    take_profit: TakeProfitPct | None = None
    indicators: list[Annotated[str, Field(max_length=50)]] | None = Field(default=None, max_length=50)
    parameters: dict[Annotated[str, Field(max_length=64)], Param] | None = Field(default=None, max_length=100)


class BotOut(ApiModel):
    id: str
    name: str
    trading_pair: str
    strategy: str
    mode: str
    status: str
    timeframe: str
    risk_per_trade: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    parameters: dict[str, Any]
    account_id: str
    created_at: datetime | None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    last_signal: str | None = None
    last_signal_at: datetime | None = None
    last_trade_at: datetime | None = None
    last_trade_price: Decimal | None = None
    orders_count: int = 0
    trades_count: int = 0
    open_positions: int = 0
    closed_positions: int = 0
    wins: int = 0
    losses: int = 0
    realised_pnl: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    pnl: Decimal = Decimal(0)
    win_rate: float | None = None


class BotAction(ApiModel):
    success: bool = True
    message: str
    bot_id: str
    status: str


def bot_from_row(row: dict[str, Any]) -> BotOut:
    closed = row.get("closed_positions") or 0
    return BotOut(
        id=row["bot_id"],
        name=row["name"] or "",
        trading_pair=row["symbol"] or "",
        strategy=row["strategy"] or "",
        mode=row["mode"] or "paper",
        status=row["status"] or "stopped",
        timeframe=row["timeframe"] or "",
        risk_per_trade=row["risk_per_trade_pct"] or Decimal(0),
        stop_loss=row["stop_loss_pct"],
        take_profit=row["take_profit_pct"],
        parameters=row["parameters"] or {},
        account_id=row["account_id"] or "",
        created_at=row["created_at"],
        started_at=row["started_at"],
        stopped_at=row["stopped_at"],
        last_signal=row["last_signal"],
        last_signal_at=row["last_signal_at"],
        last_trade_at=row["last_trade_at"],
        last_trade_price=row["last_trade_price"],
        orders_count=row["orders_count"],
        trades_count=row["trades_count"],
        open_positions=row["open_positions"],
        closed_positions=closed,
        wins=row["wins"],
        losses=row["losses"],
        realised_pnl=row["realised_pnl"],
        fees=row["fees"],
        pnl=row["net_pnl"],
        win_rate=row["wins"] / closed if closed else None,
    )


def bot_out(ctx: ApiContext, bot: Bot) -> BotOut:
    """The bot's exact configuration and status, with its figures from the read model."""
    c = bot.config
    row = queries.bot(ctx.read_store, bot.id)
    base = bot_from_row(row).model_dump() if row is not None else {}
    base.update(
        id=bot.id,
        name=c.name,
        trading_pair=str(c.symbol),
        strategy=c.strategy,
        mode=c.mode.value,
        status=bot.s.status.value,
        timeframe=c.timeframe,
        risk_per_trade=c.risk_per_trade_pct,
        stop_loss=c.stop_loss_pct,
        take_profit=c.take_profit_pct,
        parameters=dict(c.parameters),
        account_id=c.account_id,
        created_at=bot.s.created_at,
        started_at=bot.s.started_at,
        stopped_at=bot.s.stopped_at,
    )
    return BotOut.model_validate(base)


def _parameters(parameters: dict[str, Any] | None, indicators: list[str] | None) -> dict[str, Any] | None:
    if parameters is None and indicators is None:
        return None
    out = dict(parameters or {})
    if indicators is not None:
        out["indicators"] = list(indicators)
    return out


def _paper_only(mode: TradingMode | None) -> None:
    if mode is TradingMode.LIVE:
        raise ApiError("LIVE_TRADING_DISABLED", "live trading is not enabled; bots run in paper mode")


@router.get("", response_model=list[BotOut])
def list_bots(
    caller: Reader,
    reads: Reads,
    response: Response,
    status_: Annotated[str | None, Query(alias="status", pattern="^(running|stopped)$")] = None,
    mode: TradingMode | None = None,
    strategy: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[BotOut]:
    """The caller's bots (deleted ones left out), newest first."""
    page = queries.bots(
        reads,
        owner_id=caller.user_id,
        status=status_,
        mode=mode.value if mode else None,
        strategy=strategy,
        limit=1_000_000,
    )
    rows = [r for r in page.items if r["status"] not in (None, "deleted")]
    response.headers["X-Total-Count"] = str(len(rows))
    return [bot_from_row(r) for r in rows[offset : offset + limit]]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BotOut)
def create_bot(body: BotCreate, caller: BotManager, ctx: Ctx, idempotency_key: IdempotencyKey = None) -> BotOut:
    """Create a stopped bot trading the caller's paper account."""
    _paper_only(body.mode)
    account = ctx.account(caller, body.mode)
    key = caller.key(idempotency_key)
    bot_id = derived_id("bot", key) if key else new_id("bot")
    result = ctx.send(
        CreateBot(
            bot_id=bot_id,
            owner_id=caller.user_id,
            account_id=account.id,
            name=body.name,
            symbol=body.trading_pair,
            strategy=body.strategy,
            parameters=_parameters(body.parameters, body.indicators) or {},
            mode=body.mode,
            timeframe=body.timeframe,
            risk_per_trade_pct=body.risk_per_trade,
            stop_loss_pct=body.stop_loss,
            take_profit_pct=body.take_profit,
            idempotency_key=key,
            user_id=caller.user_id,
        )
    )
    return bot_out(ctx, ctx.own_bot(caller, result["bot_id"]))


@router.get("/{bot_id}", response_model=BotOut)
def get_bot(bot_id: str, caller: Reader, ctx: Ctx) -> BotOut:
    """One of the caller's bots."""
    return bot_out(ctx, ctx.own_bot(caller, bot_id))


def _update(bot_id: str, body: BotUpdate, caller: Caller, ctx: ApiContext) -> BotOut:
    ctx.own_bot(caller, bot_id)
    _paper_only(body.mode)
    names = {
        "name": "name",
        "trading_pair": "symbol",
        "strategy": "strategy",
        "mode": "mode",
        "timeframe": "timeframe",
        "risk_per_trade": "risk_per_trade_pct",
        "stop_loss": "stop_loss_pct",
        "take_profit": "take_profit_pct",
    }
    changes: dict[str, Any] = {}
    for field in body.model_fields_set:
        if field in names:
            value = getattr(body, field)
            if value is None and field not in ("stop_loss", "take_profit"):
                continue
            changes[names[field]] = value.value if isinstance(value, TradingMode) else value
    bot = ctx.own_bot(caller, bot_id)
    params = _parameters(body.parameters, body.indicators)
    if params is not None:
        merged = dict(bot.config.parameters) if body.parameters is None else {}
        merged.update(params)
        changes["parameters"] = merged
    if changes:
        ctx.send(UpdateBot(bot_id=bot_id, changes=changes, user_id=caller.user_id))
    return bot_out(ctx, ctx.own_bot(caller, bot_id))


@router.put("/{bot_id}", response_model=BotOut)
def update_bot(bot_id: str, body: BotUpdate, caller: BotManager, ctx: Ctx) -> BotOut:
    """Change a bot's configuration (fields left out stay as they are)."""
    return _update(bot_id, body, caller, ctx)


@router.patch("/{bot_id}", response_model=BotOut)
def patch_bot(bot_id: str, body: BotUpdate, caller: BotManager, ctx: Ctx) -> BotOut:
    """Same as PUT: a partial update."""
    return _update(bot_id, body, caller, ctx)


@router.delete("/{bot_id}", response_model=BotAction)
def delete_bot(bot_id: str, caller: BotManager, ctx: Ctx) -> BotAction:
    """Delete a stopped bot."""
    ctx.own_bot(caller, bot_id)
    ctx.send(DeleteBot(bot_id=bot_id, user_id=caller.user_id))
    return BotAction(message="Bot deleted successfully", bot_id=bot_id, status="deleted")


@router.post("/{bot_id}/start", response_model=BotAction)
def start_bot(bot_id: str, caller: BotManager, ctx: Ctx) -> BotAction:
    """Start a bot; refused while its account is halted by an emergency stop.

    The app's bot supervisor reacts to the recorded ``BotStarted`` by starting its runner.
    """
    bot = ctx.own_bot(caller, bot_id)
    account = ctx.account(caller, bot.config.mode)
    if account.s.halted:
        raise ApiError("TRADING_HALTED", "trading is halted by an emergency stop; resume trading first")
    ctx.send(StartBot(bot_id=bot_id, user_id=caller.user_id))
    return BotAction(message="Bot started successfully", bot_id=bot_id, status="running")


@router.post("/{bot_id}/stop", response_model=BotAction)
def stop_bot(bot_id: str, caller: BotManager, ctx: Ctx) -> BotAction:
    """Stop a running bot."""
    ctx.own_bot(caller, bot_id)
    ctx.send(StopBot(bot_id=bot_id, user_id=caller.user_id))
    return BotAction(message="Bot stopped successfully", bot_id=bot_id, status="stopped")
