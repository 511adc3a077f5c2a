"""Commands the bot runner sends besides orders, and their handlers (``RUNNER_HANDLERS``).

Register with ``CommandBus(..., handlers={**HANDLERS, **RUNNER_HANDLERS})``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, field_validator

from commands.handlers import Result, UnitOfWork
from commands.messages import BotCommand, Command
from domain.clock import Clock

Unit = Annotated[Decimal, Field(ge=0, le=1, allow_inf_nan=False)]


class RecordSignal(BotCommand):
    """Record what the bot's strategy decided at the close of the bar opened at ``bar_time``."""

    bar_time: datetime
    action: Literal["buy", "sell"]
    confidence: Unit
    strength: Unit = Decimal(0)
    price: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] | None = None
    indicators: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("bar_time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("bar_time needs a time zone")
        return v


def record_signal(cmd: RecordSignal, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    recorded = bot.record_signal(
        bar_time=cmd.bar_time,
        action=cmd.action,
        confidence=cmd.confidence,
        strength=cmd.strength,
        price=cmd.price,
        indicators=cmd.indicators,
        now=clock.now(),
    )
    return {
        "bot_id": cmd.bot_id,
        "bar_time": cmd.bar_time.isoformat(),
        "action": cmd.action,
        "recorded": recorded,
    }


RUNNER_HANDLERS: dict[type[Command], Callable[..., Result]] = {
    RecordSignal: record_signal,
}
