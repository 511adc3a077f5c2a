"""The ``Bot`` aggregate (stream ``bot-<id>``): configuration, strategy, mode and lifecycle."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from domain.aggregate import Aggregate
from domain.bot_events import SignalGenerated
from domain.errors import BotAlreadyActive, BotNotActive, Conflict, NotFound, ValidationFailed
from domain.events import Event, _compile_decoder, _compile_encoder
from domain.values import HUNDRED, ZERO, Symbol, TradingMode

_STRATEGY = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_TIMEFRAME = re.compile(r"^[1-9][0-9]*[mhdw]$")


class BotStatus(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    DELETED = "deleted"


@dataclass(frozen=True, kw_only=True, slots=True)
class BotConfig:
    """What a bot trades and how; percentages are of equity (risk) or of entry price (SL/TP)."""

    name: str
    account_id: str
    symbol: Symbol
    strategy: str
    parameters: dict[str, Any] = field(default_factory=dict)
    mode: TradingMode = TradingMode.PAPER
    timeframe: str = "1h"
    risk_per_trade_pct: Decimal = Decimal(2)
    stop_loss_pct: Decimal | None = None
    take_profit_pct: Decimal | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 100:
            raise ValidationFailed("bot name must be 1-100 characters")
        if not _STRATEGY.match(self.strategy):
            raise ValidationFailed(f"strategy must be a lower-case identifier: {self.strategy!r}")
        if not _TIMEFRAME.match(self.timeframe):
            raise ValidationFailed(f"timeframe must look like 1m, 15m, 1h, 1d: {self.timeframe!r}")
        if not ZERO < self.risk_per_trade_pct <= HUNDRED:
            raise ValidationFailed("risk per trade must be in (0, 100] percent")
        if self.stop_loss_pct is not None and not ZERO < self.stop_loss_pct < HUNDRED:
            raise ValidationFailed("stop-loss must be in (0, 100) percent")
        if self.take_profit_pct is not None and not ZERO < self.take_profit_pct <= Decimal(1000):
            raise ValidationFailed("take-profit must be in (0, 1000] percent")
        for key, value in self.parameters.items():
            if not isinstance(key, str) or not isinstance(value, str | int | bool | type(None) | list):
                raise ValidationFailed(
                    f"strategy parameter {key!r} must be a string, integer, boolean or list (decimals as strings)"
                )


@dataclass(frozen=True, kw_only=True, slots=True)
class BotCreated(Event):
    bot_id: str
    owner_id: str
    config: BotConfig
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class BotUpdated(Event):
    bot_id: str
    config: BotConfig
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class BotStarted(Event):
    bot_id: str
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class BotStopped(Event):
    bot_id: str
    by: str
    reason: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class BotDeleted(Event):
    bot_id: str
    by: str
    at: datetime


@dataclass(kw_only=True, slots=True)
class BotState:
    created: bool = False
    owner_id: str = ""
    config: BotConfig | None = None
    status: BotStatus = BotStatus.STOPPED
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    last_signal_bar: datetime | None = None
    last_signal_action: str | None = None
    signals: int = 0


_encode_state = _compile_encoder(BotState)
_decode_state = _compile_decoder(BotState)
_UPDATABLE = {f.name for f in fields(BotConfig)} - {"account_id"}


class Bot(Aggregate):
    stream_prefix = "bot"
    snapshot_schema = "bot-2"

    def __init__(self, bot_id: str) -> None:
        super().__init__(bot_id)
        self.s = BotState()

    @property
    def config(self) -> BotConfig:
        if self.s.config is None:
            raise NotFound(f"bot {self.id} not found")
        return self.s.config

    def _require_live(self) -> None:
        if not self.s.created or self.s.status is BotStatus.DELETED:
            raise NotFound(f"bot {self.id} not found")

    def create(self, *, owner_id: str, config: BotConfig, now: datetime) -> None:
        if self.s.created:
            raise Conflict(f"bot {self.id} already exists", code="BOT_EXISTS")
        self._emit(BotCreated(bot_id=self.id, owner_id=owner_id, config=config, at=now))

    def update(self, *, changes: dict[str, Any], by: str, now: datetime) -> BotConfig:
        """Apply ``changes`` to the configuration; the mode cannot change while running."""
        self._require_live()
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValidationFailed(f"cannot update {sorted(unknown)}")
        current = self.config
        values = {f.name: getattr(current, f.name) for f in fields(BotConfig)}
        values.update(changes)
        if "symbol" in changes:
            values["symbol"] = Symbol(values["symbol"])
        new = BotConfig(**values)
        if self.s.status is BotStatus.RUNNING and (new.mode != current.mode or new.symbol != current.symbol):
            raise BotAlreadyActive(f"stop bot {self.id} before changing its mode or pair")
        if new != current:
            self._emit(BotUpdated(bot_id=self.id, config=new, by=by, at=now))
        return new

    def start(self, *, by: str, now: datetime) -> None:
        self._require_live()
        if self.s.status is BotStatus.RUNNING:
            raise BotAlreadyActive(f"bot {self.id} is already running")
        self._emit(BotStarted(bot_id=self.id, by=by, at=now))

    def stop(self, *, by: str, reason: str, now: datetime) -> None:
        self._require_live()
        if self.s.status is not BotStatus.RUNNING:
            raise BotNotActive(f"bot {self.id} is not running")
        self._emit(BotStopped(bot_id=self.id, by=by, reason=reason, at=now))

    def delete(self, *, by: str, now: datetime) -> None:
        self._require_live()
        if self.s.status is BotStatus.RUNNING:
            raise BotAlreadyActive(f"stop bot {self.id} before deleting it")
        self._emit(BotDeleted(bot_id=self.id, by=by, at=now))

    def record_signal(
        self,
        *,
        bar_time: datetime,
        action: str,
        confidence: Decimal,
        strength: Decimal,
        price: Decimal | None,
        indicators: dict[str, str],
        now: datetime,
    ) -> bool:
        """Record the strategy's decision for the bar opened at ``bar_time``.

        Only a running bot decides. One signal per bar: a second one for the same or an
        earlier bar (a replayed bar after a crash) records nothing and returns ``False``.
        """
        self._require_live()
        if self.s.status is not BotStatus.RUNNING:
            raise BotNotActive(f"bot {self.id} is not running")
        if action not in ("buy", "sell"):
            raise ValidationFailed(f"signal action must be buy or sell, not {action!r}")
        if self.s.last_signal_bar is not None and bar_time <= self.s.last_signal_bar:
            return False
        self._emit(
            SignalGenerated(
                bot_id=self.id,
                bar_time=bar_time,
                symbol=str(self.config.symbol),
                action=action,
                confidence=confidence,
                strength=strength,
                price=price,
                indicators=dict(indicators),
                at=now,
            )
        )
        return True

    def _apply_SignalGenerated(self, e: SignalGenerated) -> None:
        self.s.last_signal_bar = e.bar_time
        self.s.last_signal_action = e.action
        self.s.signals += 1

    def _apply_BotCreated(self, e: BotCreated) -> None:
        self.s.created = True
        self.s.owner_id = e.owner_id
        self.s.config = e.config
        self.s.created_at = e.at

    def _apply_BotUpdated(self, e: BotUpdated) -> None:
        self.s.config = e.config

    def _apply_BotStarted(self, e: BotStarted) -> None:
        self.s.status = BotStatus.RUNNING
        self.s.started_at = e.at

    def _apply_BotStopped(self, e: BotStopped) -> None:
        self.s.status = BotStatus.STOPPED
        self.s.stopped_at = e.at

    def _apply_BotDeleted(self, e: BotDeleted) -> None:
        self.s.status = BotStatus.DELETED

    def to_snapshot(self) -> dict[str, Any]:
        return _encode_state(self.s)

    @classmethod
    def from_snapshot(cls, bot_id: str, version: int, state: dict[str, Any]) -> Bot:
        bot = cls(bot_id)
        bot.s = _decode_state(state)
        bot.version = version
        return bot
