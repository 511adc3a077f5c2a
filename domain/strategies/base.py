"""What a strategy sees (``Bars``), what it says (``Signal``/``SignalFrame``) and its base class.

A strategy is pure decision code: ``compute(bars)`` returns, for every bar at once, the
action it would take at that bar's close, computed from that bar and earlier ones only.
Prices arrive as float64 arrays (analytics, never balances); the bot runner turns the
decision into orders with exact Decimal amounts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from domain.errors import ValidationFailed


class Action(IntEnum):
    SELL = -1
    HOLD = 0
    BUY = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class StrategyCategory(StrEnum):
    TREND_FOLLOWING = "trend_following"
    MEAN_REVERSION = "mean_reversion"
    MOMENTUM = "momentum"
    ENSEMBLE = "ensemble"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Bars:
    """OHLCV columns of one symbol and timeframe, oldest first; ``time`` is the bar open (ns since epoch, UTC)."""

    time: NDArray[np.int64]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.float64]

    def __post_init__(self) -> None:
        n = self.time.size
        for name in ("open", "high", "low", "close", "volume"):
            if getattr(self, name).size != n:
                raise ValueError(f"column {name} has {getattr(self, name).size} rows, time has {n}")

    def __len__(self) -> int:
        return int(self.time.size)

    def head(self, n: int) -> Bars:
        """The first ``n`` bars (what a strategy could see at bar ``n - 1``)."""
        return Bars(self.time[:n], self.open[:n], self.high[:n], self.low[:n], self.close[:n], self.volume[:n])

    def slice(self, start: int, stop: int) -> Bars:
        s = slice(start, stop)
        return Bars(self.time[s], self.open[s], self.high[s], self.low[s], self.close[s], self.volume[s])

    @classmethod
    def from_arrays(
        cls,
        time: Any,
        open: Any,
        high: Any,
        low: Any,
        close: Any,
        volume: Any | None = None,
    ) -> Bars:
        c = np.ascontiguousarray(close, dtype=np.float64)
        return cls(
            time=np.ascontiguousarray(time, dtype=np.int64),
            open=np.ascontiguousarray(open, dtype=np.float64),
            high=np.ascontiguousarray(high, dtype=np.float64),
            low=np.ascontiguousarray(low, dtype=np.float64),
            close=c,
            volume=np.zeros_like(c) if volume is None else np.ascontiguousarray(volume, dtype=np.float64),
        )


def _fmt(v: float) -> str:
    return "nan" if v != v else repr(float(v))  # (only NaN differs from itself)


@dataclass(frozen=True, slots=True)
class Signal:
    """One decision at one bar's close, with the indicator values that led to it (for audit)."""

    index: int
    action: Action
    strength: float
    confidence: float
    indicators: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignalFrame:
    """Decisions for every bar: ``action`` in {-1, 0, 1}, strength and confidence in [0, 1]."""

    action: NDArray[np.int8]
    strength: NDArray[np.float64]
    confidence: NDArray[np.float64]
    indicators: dict[str, NDArray[np.float64]]

    def __len__(self) -> int:
        return int(self.action.size)

    def signal_indices(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.action)

    def at(self, i: int) -> Signal | None:
        """The signal at bar ``i``, or None when the strategy holds there."""
        a = self.action.item(i)
        if a == 0:
            return None
        return Signal(
            index=i,
            action=Action(a),
            strength=self.strength.item(i),
            confidence=self.confidence.item(i),
            indicators={k: _fmt(v.item(i)) for k, v in self.indicators.items()},
        )

    @classmethod
    def from_masks(
        cls,
        buy: NDArray[np.bool_],
        sell: NDArray[np.bool_],
        confidence: NDArray[np.float64],
        indicators: dict[str, NDArray[np.float64]],
        strength: NDArray[np.float64] | None = None,
    ) -> SignalFrame:
        action = np.zeros(buy.shape, dtype=np.int8)
        action[buy] = 1
        action[sell & ~buy] = -1
        conf = np.where(action != 0, np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0), 0.0)
        st = conf if strength is None else np.where(action != 0, np.clip(np.nan_to_num(strength), 0.0, 1.0), 0.0)
        return cls(action=action, strength=st, confidence=conf, indicators=indicators)


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: typed, validated, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def gap_confidence(
    a: NDArray[np.float64], b: NDArray[np.float64], ref: NDArray[np.float64], scale: float
) -> NDArray[np.float64]:
    """Confidence from how far apart two lines are, relative to price: 0.5 at a touch, 1 at ``1/scale``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(0.5 + 0.5 * scale * np.abs(a - b) / np.abs(ref), 0.0, 1.0)


class Strategy(ABC):
    """Pure decision code: vectorised, causal signals from bars."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    category: ClassVar[StrategyCategory]
    risk_level: ClassVar[RiskLevel]
    Params: ClassVar[type[StrategyParams]]
    tags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: StrategyParams) -> None:
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} takes {self.Params.__name__}")
        self.params = params

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any] | None = None) -> Strategy:
        """Validate raw parameters (from a bot's config or an API request) and build the strategy."""
        try:
            params = cls.Params.model_validate(parameters or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}" for e in exc.errors()
            )
            raise ValidationFailed(f"invalid parameters for {cls.name}: {problems}") from None
        return cls(params)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.params.model_dump()

    @abstractmethod
    def warmup(self) -> int:
        """Bars needed before the first possible signal."""

    @abstractmethod
    def compute(self, bars: Bars) -> SignalFrame:
        """Signals for every bar; bar ``i``'s from bars ``<= i`` only."""

    def latest(self, bars: Bars) -> Signal | None:
        """The signal at the last bar (what a live runner asks after each closed bar)."""
        if len(bars) == 0:
            return None
        return self.compute(bars).at(len(bars) - 1)
