"""One handler per command. A handler loads one aggregate, asks it to decide, returns a result.

Handlers are plain functions whose dependencies are named parameters; the bus injects
them and commits what the aggregate decided, retrying on a concurrency conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from decimal import Decimal
from typing import Any, TypeVar

from commands.messages import (
    CancelOrder,
    ClosePosition,
    Command,
    CreateBot,
    DeleteBot,
    Deposit,
    EmergencyStop,
    ExpireOrder,
    LiquidateAll,
    OpenAccount,
    PlaceOrder,
    RecordFill,
    ResumeTrading,
    SetRiskLimits,
    StartBot,
    StopBot,
    UpdateBot,
    Withdraw,
)
from commands.ports import Markets, PriceSource
from domain.account import Account
from domain.account_events import OrderRejected
from domain.aggregate import Aggregate
from domain.bot import Bot, BotConfig
from domain.clock import Clock
from domain.errors import ValidationFailed
from domain.risk import RiskLimits
from domain.values import Symbol, TradingMode

Result = dict[str, Any]


A = TypeVar("A", bound=Aggregate)


class UnitOfWork:
    """The aggregate one command works on; the bus appends what it decided."""

    def __init__(self, load: Callable[[type[Aggregate], str], Aggregate]) -> None:
        self._load = load
        self.aggregate: Aggregate | None = None

    def _get(self, cls: type[Aggregate], aggregate_id: str) -> Aggregate:
        if self.aggregate is not None:
            raise RuntimeError("a command changes exactly one aggregate")
        self.aggregate = self._load(cls, aggregate_id)
        return self.aggregate

    def get(self, cls: type[A], aggregate_id: str) -> A:
        """Load the one aggregate of ``cls`` this command changes (for handlers outside this module)."""
        agg = self._get(cls, aggregate_id)
        assert isinstance(agg, cls)
        return agg

    def account(self, account_id: str) -> Account:
        agg = self._get(Account, account_id)
        assert isinstance(agg, Account)
        return agg

    def bot(self, bot_id: str) -> Bot:
        agg = self._get(Bot, bot_id)
        assert isinstance(agg, Bot)
        return agg


def _marks(account: Account, prices: PriceSource) -> dict[str, Decimal]:
    out = {}
    for symbol in account.s.positions:
        p = prices.last_price(Symbol(symbol))
        if p is not None:
            out[symbol] = p
    return out


def open_account(cmd: OpenAccount, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.open(owner_id=cmd.owner_id, mode=cmd.mode, currency=cmd.currency, limits=RiskLimits(), now=clock.now())
    return {"account_id": cmd.account_id, "mode": cmd.mode.value, "currency": cmd.currency}


def deposit(cmd: Deposit, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.deposit(cmd.amount, clock.now())
    return {"account_id": cmd.account_id, "cash": str(account.s.cash), "available": str(account.available)}


def withdraw(cmd: Withdraw, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.withdraw(cmd.amount, clock.now())
    return {"account_id": cmd.account_id, "cash": str(account.s.cash), "available": str(account.available)}


def set_risk_limits(cmd: SetRiskLimits, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    limits = RiskLimits(
        max_position_size_pct=cmd.max_position_size_pct,
        max_open_positions=cmd.max_open_positions,
        max_daily_loss_pct=cmd.max_daily_loss_pct,
        max_drawdown_pct=cmd.max_drawdown_pct,
        max_leverage=cmd.max_leverage,
    )
    account.set_risk_limits(limits, cmd.user_id, clock.now())
    return {"account_id": cmd.account_id, "limits": {f.name: str(getattr(limits, f.name)) for f in fields(limits)}}


def place_order(cmd: PlaceOrder, uow: UnitOfWork, clock: Clock, prices: PriceSource, markets: Markets) -> Result:
    account = uow.account(cmd.account_id)
    order_id = cmd.resolved_order_id()
    try:
        symbol: Symbol | None = Symbol(cmd.symbol)
    except ValidationFailed:
        symbol = None
    ev = account.place_order(
        order_id=order_id,
        client_order_id=order_id,
        symbol=cmd.symbol if symbol is None else symbol,  # the Symbol: not parsed twice
        side=cmd.side,
        order_type=cmd.order_type,
        quantity=cmd.quantity,
        limit_price=cmd.limit_price,
        stop_price=cmd.stop_price,
        take_profit=cmd.take_profit,
        stop_loss=cmd.stop_loss,
        leverage=cmd.leverage,
        reduce_only=cmd.reduce_only,
        bot_id=cmd.bot_id,
        expires_at=cmd.expires_at,
        reserve_buffer=cmd.reserve_buffer,
        last_price=prices.last_price(symbol) if symbol else None,
        marks=_marks(account, prices),
        tradable=symbol is not None and markets.is_tradable(symbol),
        now=clock.now(),
    )
    if isinstance(ev, OrderRejected):
        return {"order_id": order_id, "status": "rejected", "reason_code": ev.reason_code, "reason": ev.reason}
    return {"order_id": order_id, "status": "accepted", "reserved": str(ev.reserved)}


def cancel_order(cmd: CancelOrder, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.cancel_order(cmd.order_id, cmd.reason, clock.now())
    return {"order_id": cmd.order_id, "status": "cancelled"}


def expire_order(cmd: ExpireOrder, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.expire_order(cmd.order_id, clock.now())
    return {"order_id": cmd.order_id, "status": "expired"}


def record_fill(cmd: RecordFill, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    applied = account.record_fill(
        order_id=cmd.order_id,
        fill_id=cmd.fill_id,
        quantity=cmd.quantity,
        price=cmd.price,
        fee=cmd.fee,
        now=cmd.ts_event or clock.now(),
    )
    status = account.s.order_status[cmd.order_id].value
    return {"order_id": cmd.order_id, "fill_id": cmd.fill_id, "applied": applied, "status": status}


def close_position(cmd: ClosePosition, uow: UnitOfWork, clock: Clock, prices: PriceSource) -> Result:
    account = uow.account(cmd.account_id)
    pos = account.position_by_id(cmd.position_id)
    last = prices.last_price(Symbol(pos.symbol)) if pos is not None else None
    return account.close_position(
        position_id=cmd.position_id,
        close_order_id=cmd.close_order_id(),
        reason=cmd.reason,
        by=cmd.user_id,
        last_price=last,
        now=clock.now(),
    )


def emergency_stop(cmd: EmergencyStop, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.emergency_stop(by=cmd.user_id, reason=cmd.reason, now=clock.now())
    s = account.s
    return {
        "account_id": cmd.account_id,
        "halted": True,
        "halted_by": s.halted_by,
        "reason": s.halt_reason,
        "halted_at": s.halted_at.isoformat() if s.halted_at else None,
    }


def resume_trading(cmd: ResumeTrading, uow: UnitOfWork, clock: Clock) -> Result:
    account = uow.account(cmd.account_id)
    account.resume(by=cmd.user_id, now=clock.now())
    return {"account_id": cmd.account_id, "halted": False}


def liquidate_all(cmd: LiquidateAll, uow: UnitOfWork, clock: Clock, prices: PriceSource) -> Result:
    account = uow.account(cmd.account_id)
    close_orders = account.liquidate_all(
        by=cmd.user_id,
        reason=cmd.reason,
        order_id_seed=cmd.idempotency_key or cmd.command_id,
        marks=_marks(account, prices),
        now=clock.now(),
    )
    return {"account_id": cmd.account_id, "close_order_ids": close_orders}


def _bot_result(bot: Bot) -> Result:
    c = bot.config
    return {
        "bot_id": bot.id,
        "name": c.name,
        "symbol": str(c.symbol),
        "strategy": c.strategy,
        "mode": c.mode.value,
        "status": bot.s.status.value,
    }


def create_bot(cmd: CreateBot, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    config = BotConfig(
        name=cmd.name,
        account_id=cmd.account_id,
        symbol=Symbol(cmd.symbol),
        strategy=cmd.strategy,
        parameters=dict(cmd.parameters),
        mode=cmd.mode,
        timeframe=cmd.timeframe,
        risk_per_trade_pct=cmd.risk_per_trade_pct,
        stop_loss_pct=cmd.stop_loss_pct,
        take_profit_pct=cmd.take_profit_pct,
    )
    bot.create(owner_id=cmd.owner_id, config=config, now=clock.now())
    return _bot_result(bot)


_DECIMAL_FIELDS = {"risk_per_trade_pct", "stop_loss_pct", "take_profit_pct"}


def _coerce_bot_changes(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key in _DECIMAL_FIELDS and value is not None:
            if isinstance(value, float):
                value = str(value)
            try:
                value = Decimal(str(value))
            except ArithmeticError as exc:
                raise ValidationFailed(f"{key} is not a number: {value!r}") from exc
        elif key == "mode":
            try:
                value = TradingMode(value)
            except ValueError as exc:
                raise ValidationFailed(f"mode must be paper or live: {value!r}") from exc
        elif key == "parameters" and not isinstance(value, dict):
            raise ValidationFailed("parameters must be an object")
        elif key in {"name", "strategy", "timeframe", "symbol"} and not isinstance(value, str):
            raise ValidationFailed(f"{key} must be a string")
        out[key] = value
    return out


def update_bot(cmd: UpdateBot, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    bot.update(changes=_coerce_bot_changes(cmd.changes), by=cmd.user_id, now=clock.now())
    return _bot_result(bot)


def start_bot(cmd: StartBot, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    bot.start(by=cmd.user_id, now=clock.now())
    return _bot_result(bot)


def stop_bot(cmd: StopBot, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    bot.stop(by=cmd.user_id, reason=cmd.reason, now=clock.now())
    return _bot_result(bot)


def delete_bot(cmd: DeleteBot, uow: UnitOfWork, clock: Clock) -> Result:
    bot = uow.bot(cmd.bot_id)
    bot.delete(by=cmd.user_id, now=clock.now())
    return {"bot_id": cmd.bot_id, "status": "deleted"}


HANDLERS: dict[type[Command], Callable[..., Result]] = {
    OpenAccount: open_account,
    Deposit: deposit,
    Withdraw: withdraw,
    SetRiskLimits: set_risk_limits,
    PlaceOrder: place_order,
    CancelOrder: cancel_order,
    ExpireOrder: expire_order,
    RecordFill: record_fill,
    ClosePosition: close_position,
    EmergencyStop: emergency_stop,
    ResumeTrading: resume_trading,
    LiquidateAll: liquidate_all,
    CreateBot: create_bot,
    UpdateBot: update_bot,
    StartBot: start_bot,
    StopBot: stop_bot,
    DeleteBot: delete_bot,
}
