"""Ensembles: several strategies voting with weights.

Each member's stance is its last signal carried forward (+1 after a buy, -1 after a
sell, 0 before any); the ensemble's score at a bar is the weighted mean of the members'
stances times their confidence at that signal. The ensemble buys when the score rises to
``+threshold`` and sells when it falls to ``-threshold``; its confidence is ``|score|``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from domain.strategies.base import (
    Bars,
    RiskLevel,
    SignalFrame,
    Strategy,
    StrategyCategory,
    StrategyParams,
)


class Member(StrategyParams):
    strategy: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        from domain.strategies.registry import REGISTRY

        if v == Ensemble.name:
            raise ValueError("an ensemble cannot contain an ensemble")
        if v not in REGISTRY:
            raise ValueError(f"unknown strategy {v!r}")
        return v


class EnsembleParams(StrategyParams):
    members: list[Member] = Field(min_length=2, max_length=10)
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5


def _carry_forward(action: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Stance at each bar: the last non-zero action times its confidence (0 before any)."""
    idx = np.where(action != 0, np.arange(action.size), -1)
    last = np.maximum.accumulate(idx) if idx.size else idx
    out = np.zeros(action.size)
    has = last >= 0
    out[has] = action[last[has]] * confidence[last[has]]
    return out


class Ensemble(Strategy):
    name = "ensemble"
    title = "Weighted ensemble"
    description = "Several strategies vote with weights; trade when the weighted stance reaches the threshold."
    category = StrategyCategory.ENSEMBLE
    risk_level = RiskLevel.MEDIUM
    Params = EnsembleParams
    tags = ("ensemble", "portfolio")
    params: EnsembleParams

    def __init__(self, params: StrategyParams) -> None:
        super().__init__(params)
        from domain.strategies.registry import build

        self.members = [(m.weight, build(m.strategy, m.parameters)) for m in self.params.members]

    def warmup(self) -> int:
        return max(s.warmup() for _, s in self.members)

    def compute(self, bars: Bars) -> SignalFrame:
        total = sum(w for w, _ in self.members)
        score = np.zeros(len(bars))
        indicators: dict[str, np.ndarray] = {"close": bars.close}
        for k, (w, strat) in enumerate(self.members):
            frame = strat.compute(bars)
            score += w * _carry_forward(frame.action, frame.confidence)
            for name, values in frame.indicators.items():
                if name != "close":
                    indicators[f"{k}.{strat.name}.{name}"] = values
        score /= total
        indicators["score"] = score
        th = self.params.threshold
        prev = np.concatenate(([0.0], score[:-1]))
        buy = (prev < th) & (score >= th)
        sell = (prev > -th) & (score <= -th)
        return SignalFrame.from_masks(buy, sell, np.abs(score), indicators)
