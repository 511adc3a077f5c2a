"""Analytics: summary of the caller's bots, performance over a period, portfolio risk."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from api.deps import Analyst, Ctx, Reader
from api.errors import ApiError
from api.schemas import ApiModel
from projections import queries

router = APIRouter(prefix="/analytics", tags=["analytics"])

Period = Literal["1d", "7d", "30d", "90d", "1y", "all"]


class BestBot(ApiModel):
    id: str
    name: str | None
    pnl: Decimal


class SummaryOut(ApiModel):
    total_bots: int
    active_bots: int
    total_trades: int
    total_pnl: Decimal = Field(alias="totalPnL")
    win_rate: float | None
    best_performing_bot: BestBot | None


class PerformanceOut(ApiModel):
    scope: str
    key: str
    period: str
    as_of: datetime
    start_day: str | None
    end_day: str
    days: int
    total_return: float | None = Field(description="fraction, compounded daily returns")
    annualized_return: float | None
    sharpe_ratio: float | None
    sortino_ratio: float | None
    calmar_ratio: float | None
    volatility: float | None
    max_drawdown: float | None = Field(description="positive fraction")
    total_trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None
    profit_factor: float | None
    net_pnl: Decimal
    gross_profit: Decimal
    gross_loss: Decimal
    average_trade: Decimal | None
    best_trade: Decimal | None
    worst_trade: Decimal | None


class RiskAnalyticsOut(ApiModel):
    equity: Decimal
    exposure: Decimal
    leverage: Decimal | None
    value_at_risk: Decimal | None = Field(description="1-day historical VaR 95%, account currency")
    value_at_risk_99: Decimal | None
    expected_shortfall: Decimal | None
    expected_shortfall_99: Decimal | None
    var_95: float | None
    var_99: float | None
    expected_shortfall_95_pct: float | None
    expected_shortfall_99_pct: float | None
    max_drawdown: float | None
    current_drawdown: float | None
    returns_observed: int
    high_water_mark: Decimal
    day_pnl: Decimal


@router.get("/summary", response_model=SummaryOut)
def summary(caller: Reader, ctx: Ctx) -> SummaryOut:
    """Bots, trades, P&L and win rate of the caller's bots, and the best of them."""
    s = queries.analytics_summary(ctx.read_store, caller.user_id)
    best = s["best_performing_bot"]
    return SummaryOut(
        total_bots=s["total_bots"],
        active_bots=s["active_bots"],
        total_trades=s["total_trades"],
        totalPnL=s["total_pnl"],
        win_rate=s["win_rate"],
        best_performing_bot=BestBot(**best) if best else None,
    )


@router.get("/performance", response_model=PerformanceOut)
def performance(
    caller: Reader,
    ctx: Ctx,
    period: Period = "30d",
    bot_id: Annotated[str | None, Query(alias="botId", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = None,
) -> PerformanceOut:
    """Return, Sharpe, Sortino, Calmar, drawdown, win rate and profit factor over ``period``."""
    if bot_id is not None:
        ctx.own_bot(caller, bot_id)
        scope, key = "bot", bot_id
    else:
        scope, key = "account", caller.paper_account_id
    row: dict[str, Any] = queries.performance(ctx.read_store, scope, key, period, ctx.system.clock.now())
    return PerformanceOut.model_validate(row)


@router.get("/risk", response_model=RiskAnalyticsOut)
def risk(caller: Analyst, ctx: Ctx) -> RiskAnalyticsOut:
    """Historical VaR and expected shortfall (95%, 99%) of daily returns, drawdowns, leverage."""
    r = queries.risk(ctx.read_store, caller.paper_account_id, ctx.system.clock.now())
    if r is None:
        raise ApiError("NOT_FOUND", "no risk figures yet for this account")
    return RiskAnalyticsOut(
        equity=r["equity"], exposure=r["exposure"], leverage=r["leverage"],
        value_at_risk=r["var_95_amount"], value_at_risk_99=r["var_99_amount"],
        expected_shortfall=r["expected_shortfall_95_amount"], expected_shortfall_99=r["expected_shortfall_99_amount"],
        var_95=r["var_95"], var_99=r["var_99"], expected_shortfall_95_pct=r["expected_shortfall_95"],
        expected_shortfall_99_pct=r["expected_shortfall_99"], max_drawdown=r["max_drawdown"],
        current_drawdown=r["current_drawdown"], returns_observed=r["returns_observed"],
        high_water_mark=r["high_water_mark"], day_pnl=r["day_pnl"],
    )
