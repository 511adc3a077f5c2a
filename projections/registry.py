"""Every read model the system builds, by name."""

from __future__ import annotations

from projections.base import Projection
from projections.bots import BotsProjection
from projections.notifications import NotificationsProjection
from projections.orders import OrdersProjection
from projections.performance import PerformanceProjection
from projections.portfolio import PortfolioProjection
from projections.positions import PositionsProjection
from projections.risk import RiskProjection

ALL_PROJECTIONS: list[type[Projection]] = [
    PortfolioProjection,
    PositionsProjection,
    OrdersProjection,
    RiskProjection,
    PerformanceProjection,
    BotsProjection,
    NotificationsProjection,
]


def get(name: str) -> type[Projection]:
    """The projection class called ``name`` (``KeyError`` listing the known names)."""
    for cls in ALL_PROJECTIONS:
        if cls.name == name:
            return cls
    raise KeyError(f"no projection {name!r}; known: {', '.join(c.name for c in ALL_PROJECTIONS)}")


def names() -> list[str]:
    return [cls.name for cls in ALL_PROJECTIONS]
