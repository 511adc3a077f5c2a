"""Trading configuration (seed 001): get, put, validate.

The document has a read-only ``trading`` part (what this deployment trades, and how paper
fills are simulated) and the account's ``risk`` limits, which PUT changes. Validation
reports every problem as ``{"field", "error"}`` (seed 001); PUT refuses an invalid
document with the same list in the error details.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from api.context import ApiContext, Caller
from api.deps import Ctx, Reader, Trader
from api.errors import ApiError
from api.routers.risk import RiskLimitsIn, RiskLimitsOut, limits_out, set_limits
from api.schemas import ApiModel, RequestModel

router = APIRouter(prefix="/config", tags=["config"])

_RANGES: dict[str, tuple[Decimal, Decimal]] = {
    "maxPositionSize": (Decimal(0), Decimal(100)),
    "maxDailyLoss": (Decimal(0), Decimal(100)),
    "maxDrawdown": (Decimal(0), Decimal(100)),
    "maxLeverage": (Decimal(1), Decimal(10)),
    "maxOpenPositions": (Decimal(0), Decimal(1000)),
}
_SNAKE = {
    "max_position_size": "maxPositionSize",
    "max_daily_loss": "maxDailyLoss",
    "max_drawdown": "maxDrawdown",
    "max_leverage": "maxLeverage",
    "max_open_positions": "maxOpenPositions",
}


class TradingConfig(ApiModel):
    mode: str
    live_trading_enabled: bool
    quote_currency: str
    symbols: list[str]
    paper_fee_bps: Decimal
    paper_slippage_bps: Decimal


class ConfigOut(ApiModel):
    trading: TradingConfig
    risk: RiskLimitsOut


class ConfigIn(RequestModel):
    trading: dict[str, Any] | None = Field(default=None, description="only mode (paper) may be given")
    risk: dict[str, Any] | None = Field(default=None, description="risk limits, as /api/risk-management/limits")


class ValidationIssue(ApiModel):
    field: str
    error: str


class ValidationReport(ApiModel):
    valid: bool
    errors: list[ValidationIssue]


def check(doc: ConfigIn) -> tuple[list[ValidationIssue], RiskLimitsIn]:
    """Every problem of ``doc``, and its risk part as limits to set."""
    issues: list[ValidationIssue] = []
    for key, value in (doc.trading or {}).items():
        if key != "mode":
            issues.append(ValidationIssue(field=f"trading.{key}", error="read-only or unknown setting"))
        elif value != "paper":
            issues.append(ValidationIssue(field="trading.mode", error="only paper mode is enabled"))
    values: dict[str, Any] = {}
    for key, value in (doc.risk or {}).items():
        name = _SNAKE.get(key, key)
        if name not in _RANGES:
            issues.append(ValidationIssue(field=f"risk.{key}", error="unknown setting"))
            continue
        lo, hi = _RANGES[name]
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            number = Decimal(str(value))
            if not number.is_finite():
                raise InvalidOperation
        except (TypeError, InvalidOperation, ValueError):
            issues.append(ValidationIssue(field=f"risk.{key}", error="must be a number"))
            continue
        if name == "maxOpenPositions" and number != number.to_integral_value():
            issues.append(ValidationIssue(field=f"risk.{key}", error="must be a whole number"))
        elif number < lo:
            issues.append(ValidationIssue(field=f"risk.{key}", error=f"Value is below the minimum allowed ({lo})"))
        elif number > hi:
            issues.append(ValidationIssue(field=f"risk.{key}", error=f"Value exceeds maximum allowed ({hi})"))
        else:
            values[name] = int(number) if name == "maxOpenPositions" else number
    limits = RiskLimitsIn.model_validate(values) if not issues else RiskLimitsIn()
    return issues, limits


def config_out(ctx: ApiContext, caller: Caller) -> ConfigOut:
    s = ctx.settings
    return ConfigOut(
        trading=TradingConfig(
            mode="paper",
            live_trading_enabled=False,
            quote_currency=s.quote_currency,
            symbols=ctx.system.markets.symbols(),
            paper_fee_bps=s.paper_fee_bps,
            paper_slippage_bps=s.paper_slippage_bps,
        ),
        risk=limits_out(ctx.account(caller).s.limits),
    )


@router.get("", response_model=ConfigOut)
def get_config(caller: Reader, ctx: Ctx) -> ConfigOut:
    """The trading configuration and the account's risk limits."""
    return config_out(ctx, caller)


@router.put("", response_model=ConfigOut)
def put_config(body: ConfigIn, caller: Trader, ctx: Ctx) -> ConfigOut:
    """Change the risk limits (the trading part is read-only)."""
    issues, limits = check(body)
    if issues:
        raise ApiError(
            "VALIDATION_ERROR",
            f"{issues[0].field}: {issues[0].error}",
            details={"errors": [i.model_dump() for i in issues]},
        )
    if limits.model_fields_set:
        set_limits(ctx, caller, limits)
    return config_out(ctx, caller)


@router.post("/validate", response_model=ValidationReport)
def validate_config(body: ConfigIn, caller: Reader) -> ValidationReport:
    """Check a configuration document without applying it."""
    issues, _ = check(body)
    return ValidationReport(valid=not issues, errors=issues)
