"""Trading control (seed 003): emergency stop, resume, liquidate all, status, safety status.

The emergency stop halts the account (new orders that add exposure are refused, working
ones cancelled) and stops every running bot of the account.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import structlog
from fastapi import APIRouter, Body
from pydantic import Field

from api.context import ApiContext, Caller
from api.deps import Ctx, IdempotencyKey, Reader, Trader
from api.errors import ApiError
from api.routers.risk import LimitUsage, RiskLimitsOut, limits_out
from api.schemas import ApiModel, RequestModel
from commands.messages import EmergencyStop, LiquidateAll, ResumeTrading, StopBot
from domain.errors import DomainError
from projections import queries

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/trading", tags=["trading"])


class StopRequest(RequestModel):
    reason: str = Field(default="EMERGENCY_STOP", min_length=1, max_length=500)


class LiquidateRequest(RequestModel):
    confirm: bool = Field(description="must be true")
    reason: str = Field(default="LIQUIDATE_ALL", min_length=1, max_length=500)


class HaltResult(ApiModel):
    success: bool = True
    message: str
    halted: bool
    halted_by: str | None = None
    reason: str | None = None
    halted_at: datetime | None = None
    stopped_bots: list[str] = []


class LiquidateResult(ApiModel):
    success: bool = True
    message: str
    close_order_ids: list[str]


class TradingStatus(ApiModel):
    account_id: str
    mode: str
    currency: str
    halted: bool
    halted_by: str | None
    halt_reason: str | None
    halted_at: datetime | None
    cash: Decimal
    reserved: Decimal
    available: Decimal
    open_positions: int
    open_orders: int
    closing_positions: int
    running_bots: int


class SafetyStatus(ApiModel):
    trading_allowed: bool
    halted: bool
    limits: RiskLimitsOut
    limit_usage: dict[str, LimitUsage]
    breached: list[str]
    daily_pnl: Decimal
    day_start_equity: Decimal
    high_water_mark: Decimal


def _running_bots(ctx: ApiContext, caller: Caller, account_id: str) -> list[str]:
    page = queries.bots(ctx.read_store, owner_id=caller.user_id, account_id=account_id, status="running",
                        limit=1_000_000)
    return [r["bot_id"] for r in page.items]


@router.post("/emergency-stop", response_model=HaltResult)
def emergency_stop(
    caller: Trader, ctx: Ctx, body: Annotated[StopRequest | None, Body()] = None
) -> HaltResult:
    """Halt trading: refuse new orders that add exposure, cancel working ones, stop every bot."""
    account = ctx.account(caller)
    reason = body.reason if body else "EMERGENCY_STOP"
    result = ctx.send(EmergencyStop(account_id=account.id, reason=reason, user_id=caller.user_id))
    # Bots are found on the read side: let it catch up with the halt first.
    ctx.wait_for_read_side()
    stopped = []
    for bot_id in _running_bots(ctx, caller, account.id):
        try:
            ctx.send(StopBot(bot_id=bot_id, reason="EMERGENCY_STOP", user_id=caller.user_id))
            stopped.append(bot_id)
        except DomainError as exc:  # stopped meanwhile
            log.info("emergency_stop.bot_not_stopped", bot_id=bot_id, code=exc.code)
    return HaltResult(
        message="Trading halted",
        halted=True,
        halted_by=result["halted_by"],
        reason=result["reason"],
        halted_at=result["halted_at"],
        stopped_bots=stopped,
    )


@router.post("/resume", response_model=HaltResult)
def resume(caller: Trader, ctx: Ctx) -> HaltResult:
    """Lift the emergency stop (bots stay stopped until started again)."""
    account = ctx.account(caller)
    ctx.send(ResumeTrading(account_id=account.id, user_id=caller.user_id))
    return HaltResult(message="Trading resumed", halted=False)


@router.post("/liquidate-all", response_model=LiquidateResult)
def liquidate_all(
    body: LiquidateRequest, caller: Trader, ctx: Ctx, idempotency_key: IdempotencyKey = None
) -> LiquidateResult:
    """Cancel orders that add exposure and close every open position at market (needs confirm)."""
    if not body.confirm:
        raise ApiError("CONFIRMATION_REQUIRED", 'liquidating every position needs {"confirm": true}')
    account = ctx.account(caller)
    result = ctx.send(
        LiquidateAll(
            account_id=account.id, reason=body.reason, idempotency_key=caller.key(idempotency_key),
            user_id=caller.user_id,
        )
    )
    ids = list(result["close_order_ids"])
    return LiquidateResult(message=f"closing {len(ids)} position(s)", close_order_ids=ids)


@router.get("/status", response_model=TradingStatus)
def status(caller: Reader, ctx: Ctx) -> TradingStatus:
    """The account's trading state, exact (read from its stream)."""
    account = ctx.account(caller)
    s = account.s
    return TradingStatus(
        account_id=account.id,
        mode=s.mode.value,
        currency=s.currency,
        halted=s.halted,
        halted_by=s.halted_by if s.halted else None,
        halt_reason=s.halt_reason if s.halted else None,
        halted_at=s.halted_at if s.halted else None,
        cash=s.cash,
        reserved=s.reserved,
        available=account.available,
        open_positions=len(s.positions),
        open_orders=len(s.orders),
        closing_positions=sum(1 for p in s.positions.values() if p.closing_order_id is not None),
        running_bots=len(_running_bots(ctx, caller, account.id)),
    )


@router.get("/safety-status", response_model=SafetyStatus)
def safety_status(caller: Reader, ctx: Ctx) -> SafetyStatus:
    """Limits, how much of each is used, and whether new orders are allowed."""
    account = ctx.account(caller)
    r = queries.risk(ctx.read_store, account.id, ctx.system.clock.now())
    usage = {} if r is None else {
        t: LimitUsage(value=u["value"], limit=Decimal(u["limit"]), usage_pct=u["usage_pct"], level=u["level"])
        for t, u in r["limit_usage"].items()
    }
    breached = sorted(t for t, u in usage.items() if u.level >= 2)
    s = account.s
    return SafetyStatus(
        trading_allowed=not s.halted,
        halted=s.halted,
        limits=limits_out(s.limits),
        limit_usage=usage,
        breached=breached,
        daily_pnl=s.day_pnl,
        day_start_equity=s.day_start_equity,
        high_water_mark=s.high_water_mark,
    )
