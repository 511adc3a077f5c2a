"""Command messages: imperative, immutable, validated at construction (the edge)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domain.values import OrderType, Side, Symbol, TradingMode, derived_id, new_id, uuid4_str

PositiveDecimal = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
Percent = Annotated[Decimal, Field(ge=0, le=100, allow_inf_nan=False)]
Id = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]

_ENVELOPE_FIELDS = {"command_id", "idempotency_key", "correlation_id", "user_id"}


class Command(BaseModel):
    """Base of every command: who sent it, and the key that makes retries safe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream_prefix: ClassVar[str] = "account"

    command_id: str = Field(default_factory=uuid4_str)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    correlation_id: str | None = None
    user_id: str = "system"

    @property
    def aggregate_id(self) -> str:
        raise NotImplementedError

    @property
    def stream_id(self) -> str:
        return f"{self.stream_prefix}-{self.aggregate_id}"

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """Build from values taken from validated state or exact arithmetic, without validation.

        Every field must be given (a missing one raises ``KeyError``). What it builds equals
        the validated command (same fields, same order, same fingerprint); it skips both the
        validation and the per-field alias handling of ``model_construct`` (hot paths: the
        bot runner and the paper venue send one or more commands per trade).
        """
        m = cls.__new__(cls)
        object.__setattr__(m, "__dict__", {name: values[name] for name in cls.__pydantic_fields__})
        object.__setattr__(m, "__pydantic_fields_set__", set(values))
        object.__setattr__(m, "__pydantic_extra__", None)
        object.__setattr__(m, "__pydantic_private__", None)
        return m

    def fingerprint(self) -> str:
        """Hash of what the command asks for, to detect a key reused for another request."""
        # The serializer itself (what ``model_dump_json`` calls), as bytes: half the cost.
        body = type(self).__pydantic_serializer__.to_json(self, exclude=_ENVELOPE_FIELDS)
        return hashlib.sha256(type(self).__name__.encode() + b":" + body).hexdigest()


class AccountCommand(Command):
    account_id: Id

    @property
    def aggregate_id(self) -> str:
        return self.account_id


class OpenAccount(AccountCommand):
    owner_id: Id
    mode: TradingMode = TradingMode.PAPER
    currency: str = Field(default="USDT", pattern=r"^[A-Z0-9]{2,12}$")


class Deposit(AccountCommand):
    amount: PositiveDecimal


class Withdraw(AccountCommand):
    amount: PositiveDecimal


class SetRiskLimits(AccountCommand):
    max_position_size_pct: Percent
    max_open_positions: Annotated[int, Field(ge=0, le=1000)]
    max_daily_loss_pct: Percent
    max_drawdown_pct: Percent
    max_leverage: Annotated[Decimal, Field(ge=1, le=10, allow_inf_nan=False)]


class PlaceOrder(AccountCommand):
    order_id: Id | None = None
    symbol: str
    side: Side
    order_type: OrderType = OrderType.MARKET
    quantity: PositiveDecimal
    limit_price: PositiveDecimal | None = None
    stop_price: PositiveDecimal | None = None
    take_profit: PositiveDecimal | None = None
    stop_loss: PositiveDecimal | None = None
    leverage: Annotated[Decimal, Field(ge=1, le=100, allow_inf_nan=False)] = Decimal(1)
    reduce_only: bool = False
    bot_id: Id | None = None
    expires_at: datetime | None = None
    reserve_buffer: Annotated[Decimal, Field(ge=0, le=1, allow_inf_nan=False)] | None = None

    @field_validator("symbol")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.strip().upper()

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at needs a time zone")
        return v

    def resolved_order_id(self) -> str:
        """The order id: given, derived from the idempotency key (stable across retries), or new."""
        if self.order_id:
            return self.order_id
        if self.idempotency_key:
            return derived_id("ord", self.account_id, self.idempotency_key)
        return derived_id("ord", self.command_id)


class CancelOrder(AccountCommand):
    order_id: Id
    reason: str = Field(default="USER_REQUEST", max_length=200)


class ExpireOrder(AccountCommand):
    order_id: Id


class RecordFill(AccountCommand):
    order_id: Id
    fill_id: Id
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] = Decimal(0)
    ts_event: datetime | None = None


class ClosePosition(AccountCommand):
    position_id: Id
    reason: str = Field(default="MANUAL", max_length=50)

    def close_order_id(self) -> str:
        # One close order per position and request wave: repeated clicks reuse it.
        return derived_id("ord", self.account_id, self.position_id, "close", self.idempotency_key or self.command_id)


class EmergencyStop(AccountCommand):
    reason: str = Field(min_length=1, max_length=500)


class ResumeTrading(AccountCommand):
    pass


class LiquidateAll(AccountCommand):
    reason: str = Field(default="LIQUIDATE_ALL", max_length=500)


class BotCommand(Command):
    stream_prefix: ClassVar[str] = "bot"
    bot_id: Id

    @property
    def aggregate_id(self) -> str:
        return self.bot_id


class CreateBot(BotCommand):
    bot_id: Id = Field(default_factory=lambda: new_id("bot"))
    owner_id: Id
    account_id: Id
    name: str = Field(min_length=1, max_length=100)
    symbol: str
    strategy: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    mode: TradingMode = TradingMode.PAPER
    timeframe: str = "1h"
    risk_per_trade_pct: Annotated[Decimal, Field(gt=0, le=100, allow_inf_nan=False)] = Decimal(2)
    stop_loss_pct: Annotated[Decimal, Field(gt=0, lt=100, allow_inf_nan=False)] | None = None
    take_profit_pct: Annotated[Decimal, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, v: str) -> str:
        return str(Symbol(v))


class UpdateBot(BotCommand):
    changes: dict[str, Any]

    @model_validator(mode="after")
    def _not_empty(self) -> UpdateBot:
        if not self.changes:
            raise ValueError("nothing to update")
        return self


class StartBot(BotCommand):
    pass


class StopBot(BotCommand):
    reason: str = Field(default="USER_REQUEST", max_length=200)


class DeleteBot(BotCommand):
    pass
