"""Paper funds: balance, deposit, withdraw."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter

from api.deps import Ctx, IdempotencyKey, Reader, Trader
from api.schemas import Amount, ApiModel, RequestModel
from commands.messages import Deposit, Withdraw

router = APIRouter(prefix="/funds", tags=["funds"])


class AmountRequest(RequestModel):
    amount: Amount


class Balance(ApiModel):
    account_id: str
    mode: str
    currency: str
    cash: Decimal
    reserved: Decimal
    available: Decimal


def _balance(account_id: str, mode: str, currency: str, cash: Decimal, available: Decimal) -> Balance:
    return Balance(
        account_id=account_id, mode=mode, currency=currency, cash=cash, reserved=cash - available, available=available
    )


@router.get("", response_model=Balance)
def balance(caller: Reader, ctx: Ctx) -> Balance:
    """Cash, reserved and available funds of the caller's paper account (exact)."""
    a = ctx.account(caller)
    return _balance(a.id, a.s.mode.value, a.s.currency, a.s.cash, a.available)


@router.post("/deposit", response_model=Balance)
def deposit(body: AmountRequest, caller: Trader, ctx: Ctx, idempotency_key: IdempotencyKey = None) -> Balance:
    """Add paper funds."""
    a = ctx.account(caller)
    r = ctx.send(
        Deposit(account_id=a.id, amount=body.amount, idempotency_key=caller.key(idempotency_key),
                user_id=caller.user_id)
    )
    return _balance(a.id, a.s.mode.value, a.s.currency, Decimal(r["cash"]), Decimal(r["available"]))


@router.post("/withdraw", response_model=Balance)
def withdraw(body: AmountRequest, caller: Trader, ctx: Ctx, idempotency_key: IdempotencyKey = None) -> Balance:
    """Take paper funds out (at most what is available)."""
    a = ctx.account(caller)
    r = ctx.send(
        Withdraw(account_id=a.id, amount=body.amount, idempotency_key=caller.key(idempotency_key),
                 user_id=caller.user_id)
    )
    return _balance(a.id, a.s.mode.value, a.s.currency, Decimal(r["cash"]), Decimal(r["available"]))
