"""Strategies: pure, vectorised, causal decision code (numpy for indicators only)."""

from domain.strategies.base import (
    Action,
    Bars,
    RiskLevel,
    Signal,
    SignalFrame,
    Strategy,
    StrategyCategory,
    StrategyParams,
)
from domain.strategies.registry import REGISTRY, build, categories, strategy_class, templates

__all__ = [
    "REGISTRY",
    "Action",
    "Bars",
    "RiskLevel",
    "Signal",
    "SignalFrame",
    "Strategy",
    "StrategyCategory",
    "StrategyParams",
    "build",
    "categories",
    "strategy_class",
    "templates",
]
