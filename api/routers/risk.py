"""Risk management: metrics, limits (get / set with seed 004 ranges), alerts, acknowledge."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from api.context import ApiContext, Caller
from api.deps import Ctx, IdPath, Reader, Trader
from api.errors import ApiError
from api.schemas import ApiModel, RequestModel
from commands.messages import SetRiskLimits
from commands.user_handlers import AcknowledgeRiskAlert
from domain.risk import RiskLimits
from projections import queries
from projections import risk as _risk

router = APIRouter(prefix="/risk-management", tags=["risk-management"])

PercentLimit = Annotated[Decimal, Field(ge=0, le=100, allow_inf_nan=False, max_digits=12)]
LeverageLimit = Annotated[Decimal, Field(ge=1, le=10, allow_inf_nan=False, max_digits=12)]


_LIMIT_FIELDS = {
    _risk.POSITION_SIZE: "max_position_size_pct",
    _risk.DAILY_LOSS: "max_daily_loss_pct",
    _risk.DRAWDOWN: "max_drawdown_pct",
    _risk.LEVERAGE: "max_leverage",
    _risk.OPEN_POSITIONS: "max_open_positions",
}


class RiskLimitsOut(ApiModel):
    max_position_size: Decimal = Field(description="margin of one position, % of equity (0-100)")
    max_daily_loss: Decimal = Field(description="% of day-start equity (0-100)")
    max_drawdown: Decimal = Field(description="% below the high-water mark (0-100)")
    max_leverage: Decimal = Field(description="exposure / equity, and per order (1-10)")
    max_open_positions: int


class RiskLimitsIn(RequestModel):
    max_position_size: PercentLimit | None = None
    max_daily_loss: PercentLimit | None = None
    max_drawdown: PercentLimit | None = None
    max_leverage: LeverageLimit | None = None
    max_open_positions: Annotated[int, Field(ge=0, le=1000)] | None = None


class LimitsUpdated(ApiModel):
    status: str = "success"
    limits: RiskLimitsOut


class LimitUsage(ApiModel):
    value: Decimal | None
    limit: Decimal
    usage_pct: Decimal | None
    level: int = Field(description="0 ok, 1 near (>= 80%), 2 breached")


class RiskMetricsOut(ApiModel):
    total_exposure: Decimal
    equity: Decimal
    margin: Decimal
    leverage: Decimal | None
    open_positions: int
    max_drawdown: float | None = Field(description="fraction of the time-weighted equity index")
    current_drawdown: float | None
    value_at_risk: Decimal | None = Field(description="1-day historical VaR 95%, in account currency")
    value_at_risk_99: Decimal | None
    expected_shortfall: Decimal | None
    var_95: float | None = Field(description="as a fraction of equity")
    var_99: float | None
    returns_observed: int
    limit_usage: dict[str, LimitUsage]
    active_alerts: int
    timestamp: datetime


class AlertOut(ApiModel):
    id: str
    type: str
    severity: str
    level: str
    message: str
    value: Decimal | None
    limit: Decimal
    usage_pct: Decimal | None
    timestamp: datetime
    acknowledged: bool
    acknowledged_at: datetime | None
    read: bool


class AlertAcknowledged(ApiModel):
    id: str
    acknowledged: bool = True
    acknowledged_at: datetime


def limits_out(limits: RiskLimits) -> RiskLimitsOut:
    return RiskLimitsOut(
        max_position_size=limits.max_position_size_pct,
        max_daily_loss=limits.max_daily_loss_pct,
        max_drawdown=limits.max_drawdown_pct,
        max_leverage=limits.max_leverage,
        max_open_positions=limits.max_open_positions,
    )


def alert_from_row(r: dict[str, Any]) -> AlertOut:
    return AlertOut(
        id=r["id"], type=r["type"], severity=r["severity"], level=r["level"], message=r["message"],
        value=r["value"], limit=r["limit"], usage_pct=r["usage_pct"], timestamp=r["ts"],
        acknowledged=r["acknowledged"], acknowledged_at=r["acknowledged_at"], read=r["read"],
    )


def risk_summary(ctx: ApiContext, caller: Caller) -> dict[str, Any] | None:
    return queries.risk(ctx.read_store, caller.paper_account_id, ctx.system.clock.now())


def set_limits(ctx: ApiContext, caller: Caller, body: RiskLimitsIn) -> RiskLimits:
    account = ctx.account(caller)
    cur = account.s.limits

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    ctx.send(
        SetRiskLimits(
            account_id=account.id,
            max_position_size_pct=pick(body.max_position_size, cur.max_position_size_pct),
            max_daily_loss_pct=pick(body.max_daily_loss, cur.max_daily_loss_pct),
            max_drawdown_pct=pick(body.max_drawdown, cur.max_drawdown_pct),
            max_leverage=pick(body.max_leverage, cur.max_leverage),
            max_open_positions=pick(body.max_open_positions, cur.max_open_positions),
            user_id=caller.user_id,
        )
    )
    return ctx.account(caller).s.limits


@router.get("/metrics", response_model=RiskMetricsOut)
def risk_metrics(caller: Reader, ctx: Ctx) -> RiskMetricsOut:
    """Exposure, drawdown, VaR and expected shortfall, and how much of each limit is used."""
    r = risk_summary(ctx, caller)
    now = ctx.system.clock.now()
    if r is None:
        limits = ctx.account(caller).s.limits
        return RiskMetricsOut(
            total_exposure=Decimal(0), equity=Decimal(0), margin=Decimal(0), leverage=None, open_positions=0,
            max_drawdown=None, current_drawdown=None, value_at_risk=None, value_at_risk_99=None,
            expected_shortfall=None, var_95=None, var_99=None, returns_observed=0,
            limit_usage={
                t: LimitUsage(value=None, limit=Decimal(getattr(limits, f)), usage_pct=None, level=0)
                for t, f in _LIMIT_FIELDS.items()
            },
            active_alerts=0, timestamp=now,
        )
    return RiskMetricsOut(
        total_exposure=r["exposure"], equity=r["equity"], margin=r["margin"], leverage=r["leverage"],
        open_positions=r["open_positions"], max_drawdown=r["max_drawdown"], current_drawdown=r["current_drawdown"],
        value_at_risk=r["var_95_amount"], value_at_risk_99=r["var_99_amount"],
        expected_shortfall=r["expected_shortfall_95_amount"], var_95=r["var_95"], var_99=r["var_99"],
        returns_observed=r["returns_observed"],
        limit_usage={
            t: LimitUsage(value=u["value"], limit=Decimal(u["limit"]), usage_pct=u["usage_pct"], level=u["level"])
            for t, u in r["limit_usage"].items()
        },
        active_alerts=len(r["active_alerts"]), timestamp=now,
    )


@router.get("/limits", response_model=RiskLimitsOut)
def get_limits(caller: Reader, ctx: Ctx) -> RiskLimitsOut:
    """The risk limits every new order of the caller's account is checked against."""
    return limits_out(ctx.account(caller).s.limits)


@router.post("/limits", response_model=LimitsUpdated)
def post_limits(body: RiskLimitsIn, caller: Trader, ctx: Ctx) -> LimitsUpdated:
    """Set risk limits (fields left out stay): percentages 0-100, leverage 1-10."""
    return LimitsUpdated(limits=limits_out(set_limits(ctx, caller, body)))


@router.put("/limits", response_model=LimitsUpdated)
def put_limits(body: RiskLimitsIn, caller: Trader, ctx: Ctx) -> LimitsUpdated:
    """Same as POST."""
    return LimitsUpdated(limits=limits_out(set_limits(ctx, caller, body)))


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(
    caller: Reader,
    ctx: Ctx,
    response: Response,
    acknowledged: bool | None = Query(default=False, description="false: active alerts (default)"),
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[AlertOut]:
    """Risk alerts of the caller's account, newest first."""
    page = queries.risk_alerts(ctx.read_store, caller.paper_account_id, acknowledged, limit, offset)
    response.headers["X-Total-Count"] = str(page.total)
    return [alert_from_row(r) for r in page.items]


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertAcknowledged)
def acknowledge(alert_id: IdPath, caller: Trader, ctx: Ctx) -> AlertAcknowledged:
    """Acknowledge an alert (repeating it changes nothing)."""
    row = ctx.read_store.get(_risk.ALERTS, alert_id)
    if row is None or not caller.owns_account(row["account_id"]):
        raise ApiError("NOT_FOUND", f"alert {alert_id} not found")
    result = ctx.send(
        AcknowledgeRiskAlert(
            subject_id=caller.user_id, account_id=row["account_id"], alert_id=alert_id, user_id=caller.user_id
        )
    )
    at = row["acknowledged_at"] or datetime.fromisoformat(result["at"])
    return AlertAcknowledged(id=alert_id, acknowledged_at=at)
