"""The strategy registry: templates (name, category, risk level, parameter schema) and categories."""

from __future__ import annotations

from typing import Any

from domain.errors import NotFound
from domain.strategies.base import RiskLevel, Strategy, StrategyCategory
from domain.strategies.ensemble import Ensemble
from domain.strategies.library import BUILTIN

_ALL: tuple[type[Strategy], ...] = (*BUILTIN, Ensemble)
REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in _ALL}

CATEGORY_DESCRIPTIONS: dict[StrategyCategory, str] = {
    StrategyCategory.TREND_FOLLOWING: "Follow established trends: moving-average crossovers, MACD.",
    StrategyCategory.MEAN_REVERSION: "Fade stretched prices back toward a mean: RSI, Bollinger bands.",
    StrategyCategory.MOMENTUM: "Ride the rate of change of price.",
    StrategyCategory.ENSEMBLE: "Weighted votes of several strategies.",
}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise NotFound(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}", code="NOT_FOUND") from None


def build(name: str, parameters: dict[str, Any] | None = None) -> Strategy:
    """Validate ``parameters`` for strategy ``name`` and build it (``ValidationFailed`` on bad input)."""
    return strategy_class(name).from_parameters(parameters)


def template(cls: type[Strategy]) -> dict[str, Any]:
    schema = cls.Params.model_json_schema()
    defaults: dict[str, Any] = {}
    for fname, f in cls.Params.model_fields.items():
        if not f.is_required():
            defaults[fname] = f.get_default(call_default_factory=True)
    return {
        "id": cls.name,
        "name": cls.title,
        "description": cls.description,
        "category": cls.category.value,
        "risk_level": cls.risk_level.value,
        "tags": list(cls.tags),
        "parameters": defaults,
        "parameter_schema": schema,
    }


def templates(category: str | None = None, risk_level: str | None = None) -> list[dict[str, Any]]:
    """Every strategy template, optionally filtered by category and risk level."""
    out = []
    for cls in REGISTRY.values():
        if category is not None and cls.category.value != category:
            continue
        if risk_level is not None and cls.risk_level.value != risk_level:
            continue
        out.append(template(cls))
    return out


def categories(usage: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every category with its templates and, when given, how many bots use it."""
    usage = usage or {}
    out = []
    for cat in StrategyCategory:
        names = [cls.name for cls in REGISTRY.values() if cls.category is cat]
        out.append(
            {
                "id": cat.value,
                "description": CATEGORY_DESCRIPTIONS[cat],
                "strategies": names,
                "template_count": len(names),
                "usage_count": sum(usage.get(n, 0) for n in names),
            }
        )
    return out


RISK_LEVELS = [r.value for r in RiskLevel]
