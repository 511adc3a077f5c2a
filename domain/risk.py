"""Risk limits of an account (percentages as in the risk-management API) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from domain.errors import ValidationFailed
from domain.values import HUNDRED, ONE, ZERO


@dataclass(frozen=True, kw_only=True, slots=True)
class RiskLimits:
    """Checked before every order that opens or increases exposure.

    - ``max_position_size_pct``: margin (stake) of one position as % of equity, 0-100.
    - ``max_open_positions``: number of open positions.
    - ``max_daily_loss_pct``: net realised loss of the current UTC day as % of the equity
      the day started with, 0-100.
    - ``max_drawdown_pct``: fall of marked equity from its high-water mark, 0-100.
    - ``max_leverage``: per order, and total notional exposure / equity, 1-10.
    """

    max_position_size_pct: Decimal = Decimal(50)
    max_open_positions: int = 20
    max_daily_loss_pct: Decimal = Decimal(5)
    max_drawdown_pct: Decimal = Decimal(15)
    max_leverage: Decimal = Decimal(3)

    def __post_init__(self) -> None:
        for name in ("max_position_size_pct", "max_daily_loss_pct", "max_drawdown_pct"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or not ZERO <= value <= HUNDRED:
                raise ValidationFailed(f"{name} must be a percentage between 0 and 100: {value!r}")
        if not isinstance(self.max_open_positions, int) or not 0 <= self.max_open_positions <= 1000:
            raise ValidationFailed(f"max_open_positions must be between 0 and 1000: {self.max_open_positions!r}")
        lev = self.max_leverage
        if not isinstance(lev, Decimal) or not lev.is_finite() or not ONE <= lev <= Decimal(10):
            raise ValidationFailed(f"max_leverage must be between 1 and 10: {lev!r}")
