"""Events a running bot records in its own stream (``bot-<id>``) besides its lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from domain.events import Event


@dataclass(frozen=True, kw_only=True, slots=True)
class SignalGenerated(Event):
    """The bot's strategy decided ``action`` at the close of the bar opened at ``bar_time``.

    ``indicators`` holds the values that led to it, as strings (audit: what did the bot
    know and decide at that bar?). ``confidence`` and ``strength`` are in [0, 1].
    """

    bot_id: str
    bar_time: datetime
    symbol: str
    action: str
    confidence: Decimal
    strength: Decimal = Decimal(0)
    price: Decimal | None = None
    indicators: dict[str, str] = field(default_factory=dict)
    at: datetime
