"""The built-in strategies: SMA and EMA crossovers, MACD, RSI, Bollinger bands and momentum."""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
from pydantic import AliasChoices, Field, model_validator

from domain.strategies import indicators as ind
from domain.strategies.base import (
    Bars,
    RiskLevel,
    SignalFrame,
    Strategy,
    StrategyCategory,
    StrategyParams,
    gap_confidence,
)

Period = Annotated[int, Field(ge=1, le=1000)]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class CrossParams(StrategyParams):
    fast: Period = Field(10, validation_alias=_alias("fast", "fast_period"), description="fast average, bars")
    slow: Period = Field(30, validation_alias=_alias("slow", "slow_period"), description="slow average, bars")

    @model_validator(mode="after")
    def _ordered(self) -> CrossParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        return self


class SmaCross(Strategy):
    name = "sma_cross"
    title = "SMA crossover"
    description = "Buy when the fast simple moving average crosses above the slow one; sell when it crosses below."
    category = StrategyCategory.TREND_FOLLOWING
    risk_level = RiskLevel.MEDIUM
    Params = CrossParams
    tags: ClassVar[tuple[str, ...]] = ("trend", "moving-average", "crossover")
    params: CrossParams

    def warmup(self) -> int:
        return self.params.slow

    def _lines(self, close: ind.Array) -> tuple[ind.Array, ind.Array]:
        return ind.sma(close, self.params.fast), ind.sma(close, self.params.slow)

    def compute(self, bars: Bars) -> SignalFrame:
        fast, slow = self._lines(bars.close)
        return SignalFrame.from_masks(
            ind.crossed_above(fast, slow),
            ind.crossed_below(fast, slow),
            gap_confidence(fast, slow, bars.close, 100.0),
            {"close": bars.close, "fast": fast, "slow": slow},
        )


class EmaCross(SmaCross):
    name = "ema_cross"
    title = "EMA crossover"
    description = "Buy when the fast exponential moving average crosses above the slow one; sell when below."
    Params = CrossParams
    tags = ("trend", "moving-average", "crossover", "exponential")

    def _lines(self, close: ind.Array) -> tuple[ind.Array, ind.Array]:
        return ind.ema(close, self.params.fast), ind.ema(close, self.params.slow)


class MacdParams(StrategyParams):
    fast: Period = Field(12, validation_alias=_alias("fast", "fast_period"))
    slow: Period = Field(26, validation_alias=_alias("slow", "slow_period"))
    signal: Period = Field(9, validation_alias=_alias("signal", "signal_period"))

    @model_validator(mode="after")
    def _ordered(self) -> MacdParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        return self


class Macd(Strategy):
    name = "macd"
    title = "MACD"
    description = "Buy when the MACD line crosses above its signal line; sell when it crosses below."
    category = StrategyCategory.TREND_FOLLOWING
    risk_level = RiskLevel.MEDIUM
    Params = MacdParams
    tags = ("trend", "momentum", "macd")
    params: MacdParams

    def warmup(self) -> int:
        return self.params.slow + self.params.signal

    def compute(self, bars: Bars) -> SignalFrame:
        p = self.params
        line, sig, hist = ind.macd(bars.close, p.fast, p.slow, p.signal)
        return SignalFrame.from_masks(
            ind.crossed_above(line, sig),
            ind.crossed_below(line, sig),
            gap_confidence(line, sig, bars.close, 1000.0),
            {"close": bars.close, "macd": line, "signal": sig, "histogram": hist},
        )


class RsiParams(StrategyParams):
    period: Period = Field(14, validation_alias=_alias("period", "rsi_period"))
    oversold: float = Field(30.0, gt=0, lt=100)
    overbought: float = Field(70.0, gt=0, lt=100)

    @model_validator(mode="after")
    def _ordered(self) -> RsiParams:
        if self.oversold >= self.overbought:
            raise ValueError("oversold must be below overbought")
        return self


class Rsi(Strategy):
    name = "rsi"
    title = "RSI reversal"
    description = "Buy when RSI climbs back above the oversold level; sell when it falls back below overbought."
    category = StrategyCategory.MEAN_REVERSION
    risk_level = RiskLevel.MEDIUM
    Params = RsiParams
    tags = ("oscillator", "mean-reversion", "rsi")
    params: RsiParams

    def warmup(self) -> int:
        return self.params.period + 1

    def compute(self, bars: Bars) -> SignalFrame:
        p = self.params
        r = ind.rsi(bars.close, p.period)
        buy = ind.crossed_above(r, p.oversold)
        sell = ind.crossed_below(r, p.overbought)
        # Deeper excursions beyond the level give more confidence.
        prev = np.concatenate(([np.nan], r[:-1]))
        with np.errstate(invalid="ignore"):
            depth = np.where(buy, (p.oversold - prev) / p.oversold, (prev - p.overbought) / (100.0 - p.overbought))
        conf = np.clip(0.5 + 0.5 * np.nan_to_num(depth), 0.0, 1.0)
        return SignalFrame.from_masks(buy, sell, conf, {"close": bars.close, "rsi": r})


class BollingerParams(StrategyParams):
    period: Period = Field(20, validation_alias=_alias("period", "bb_period"))
    std_dev: float = Field(2.0, gt=0, le=10, validation_alias=_alias("std_dev", "std", "num_std"))


class Bollinger(Strategy):
    name = "bollinger"
    title = "Bollinger bands reversion"
    description = (
        "Buy when the close crosses back above the lower band; sell when it crosses back below the upper band."
    )
    category = StrategyCategory.MEAN_REVERSION
    risk_level = RiskLevel.LOW
    Params = BollingerParams
    tags = ("volatility", "mean-reversion", "bands")
    params: BollingerParams

    def warmup(self) -> int:
        return self.params.period + 1

    def compute(self, bars: Bars) -> SignalFrame:
        p = self.params
        mid, upper, lower = ind.bollinger(bars.close, p.period, p.std_dev)
        c = bars.close
        buy = ind.crossed_above(c, lower)
        sell = ind.crossed_below(c, upper)
        with np.errstate(invalid="ignore", divide="ignore"):
            width = (upper - lower) / mid
        conf = np.clip(0.5 + 5.0 * np.nan_to_num(width), 0.0, 1.0)
        return SignalFrame.from_masks(buy, sell, conf, {"close": c, "middle": mid, "upper": upper, "lower": lower})


class MomentumParams(StrategyParams):
    period: Period = Field(10, validation_alias=_alias("period", "lookback"))
    threshold: float = Field(0.0, ge=0, lt=1, description="rate of change that counts, e.g. 0.01 for 1%")


class Momentum(Strategy):
    name = "momentum"
    title = "Price momentum"
    description = (
        "Buy when the rate of change over the period rises above +threshold; sell when it falls below -threshold."
    )
    category = StrategyCategory.MOMENTUM
    risk_level = RiskLevel.HIGH
    Params = MomentumParams
    tags = ("momentum", "rate-of-change")
    params: MomentumParams

    def warmup(self) -> int:
        return self.params.period + 1

    def compute(self, bars: Bars) -> SignalFrame:
        p = self.params
        roc = ind.momentum(bars.close, p.period)
        buy = ind.crossed_above(roc, p.threshold)
        sell = ind.crossed_below(roc, -p.threshold)
        conf = np.clip(0.5 + 10.0 * np.abs(np.nan_to_num(roc)), 0.0, 1.0)
        return SignalFrame.from_masks(buy, sell, conf, {"close": bars.close, "momentum": roc})


BUILTIN: tuple[type[Strategy], ...] = (SmaCross, EmaCross, Macd, Rsi, Bollinger, Momentum)
