"""Properties of the Account aggregate over random sequences of deposits, orders and fills.

- a refused command (DomainError) changes nothing and emits nothing;
- no other exception ever escapes a decision;
- reserved funds are exactly what the working orders still hold;
- every fill fee lands in exactly one position event;
- cash plus position margins equals deposits - withdrawals + realised P&L - fees;
- replaying the emitted events, or restoring a snapshot, gives the live state;
- the running order totals behind the O(1) risk check equal the sums over the open orders.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from factories import BTC, ETH, T0, new_account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.account import Account
from domain.account_events import (
    FundsDeposited,
    FundsWithdrawn,
    OrderFilled,
    OrderPartiallyFilled,
    PositionClosed,
    PositionIncreased,
    PositionOpened,
    PositionReduced,
)
from domain.errors import DomainError
from domain.risk import RiskLimits
from domain.values import OrderType, Side

BASE = {BTC: Decimal("50000"), ETH: Decimal("3000")}
QTY = {BTC: ["0.01", "0.05", "0.1", "0.3"], ETH: ["0.5", "1", "3", "7"]}
LEDGER_TOLERANCE = Decimal("1e-12")
PRICE_MOVES = [Decimal(x) for x in ("0.9", "0.97", "1", "1.01", "1.05", "1.2")]

amounts = st.sampled_from(["10", "250.5", "1000", "5000", "0.01"]).map(Decimal)
place_ops = st.tuples(
    st.just("place"),
    st.sampled_from([BTC, ETH]),
    st.sampled_from(list(Side)),
    st.sampled_from(list(OrderType)),
    st.integers(0, 3),  # quantity index
    st.sampled_from(PRICE_MOVES),  # limit/stop price vs base
    # leverages whose divisions terminate; 3x is covered by an explicit test of
    # reserve rounding in test_account.py
    st.sampled_from(["1", "2", "4", "5"]),
    st.sampled_from([False, False, False, True]),  # reduce-only
)
fill_ops = st.tuples(st.just("fill"), st.integers(0, 9), st.sampled_from(["0.25", "0.5", "1", "1"]),
                     st.sampled_from(PRICE_MOVES), st.sampled_from(["0", "0.001"]))
builders = {
    "place": place_ops,
    "fill": fill_ops,
    "deposit": st.tuples(st.just("deposit"), amounts),
    "withdraw": st.tuples(st.just("withdraw"), amounts),
    "cancel": st.tuples(st.just("cancel"), st.integers(0, 9)),
    "close": st.tuples(st.just("close"), st.integers(0, 3)),
    "halt": st.tuples(st.just("halt")),
    "resume": st.tuples(st.just("resume")),
    "liquidate": st.tuples(st.just("liquidate")),
    "tick": st.tuples(st.just("tick"), st.sampled_from([1, 6, 24])),
}
# Mostly orders and fills; the rest now and then.
kinds = ["place"] * 6 + ["fill"] * 8 + ["deposit", "withdraw", "cancel", "close", "halt",
                                        "resume", "liquidate", "tick"]
ops = st.sampled_from(kinds).flatmap(builders.__getitem__)


def _run(acc: Account, op: tuple, step: int, now) -> None:
    kind = op[0]
    if kind == "deposit":
        acc.deposit(op[1], now)
    elif kind == "withdraw":
        acc.withdraw(op[1], now)
    elif kind == "place":
        _, sym, side, otype, qi, move, lev, reduce_only = op
        price = (BASE[sym] * move).normalize()
        acc.place_order(
            order_id=f"o{step}", client_order_id=f"o{step}", symbol=sym, side=side,
            order_type=otype, quantity=Decimal(QTY[sym][qi]),
            limit_price=price if otype is OrderType.LIMIT else None,
            stop_price=price if otype is OrderType.STOP else None,
            leverage=Decimal(lev), reduce_only=reduce_only, last_price=BASE[sym],
            marks=BASE, tradable=True, now=now,
        )
    elif kind == "fill":
        orders = acc.open_orders()
        if not orders:
            return
        _, idx, frac, move, fee_rate = op
        order = orders[idx % len(orders)]
        qty = order.remaining if frac == "1" else order.remaining * Decimal(frac)
        price = BASE[order.symbol] * move
        acc.record_fill(order_id=order.order_id, fill_id=f"f{step}", quantity=qty, price=price,
                        fee=qty * price * Decimal(fee_rate), now=now)
    elif kind == "cancel":
        orders = acc.open_orders()
        if orders:
            acc.cancel_order(orders[op[1] % len(orders)].order_id, "TEST", now)
    elif kind == "close":
        positions = list(acc.s.positions.values())
        if positions:
            pos = positions[op[1] % len(positions)]
            acc.close_position(position_id=pos.position_id, close_order_id=f"c{step}",
                               reason="TEST", by="prop", last_price=BASE[pos.symbol], now=now)
    elif kind == "halt":
        acc.emergency_stop(by="prop", reason="test", now=now)
    elif kind == "resume":
        acc.resume(by="prop", now=now)
    elif kind == "liquidate":
        acc.liquidate_all(by="prop", reason="test", order_id_seed=f"l{step}", marks=BASE, now=now)


def _check_invariants(acc: Account) -> None:
    s = acc.s
    assert s.reserved == sum((o.reserved for o in s.orders.values()), Decimal(0))
    assert all(o.reserved >= 0 for o in s.orders.values())
    assert all(0 < o.remaining <= o.quantity for o in s.orders.values())
    assert all(p.quantity > 0 for p in s.positions.values())
    _check_order_totals(acc)

    events = acc.pending
    fill_fees = sum((e.fee for e in events if isinstance(e, OrderFilled | OrderPartiallyFilled)),
                    Decimal(0))
    position_fees = sum(
        (e.fee for e in events
         if isinstance(e, PositionOpened | PositionIncreased | PositionReduced | PositionClosed)),
        Decimal(0),
    )
    assert position_fees == fill_fees

    deposits = sum((e.amount for e in events if isinstance(e, FundsDeposited)), Decimal(0))
    withdrawals = sum((e.amount for e in events if isinstance(e, FundsWithdrawn)), Decimal(0))
    realised = sum((e.realised_pnl for e in events if isinstance(e, PositionReduced | PositionClosed)),
                   Decimal(0))
    # Weighted entry prices are rounded at 28 significant digits, so realised P&L carries
    # digits below any currency unit; the books must agree far above that.
    assert abs(acc.book_equity() - (deposits - withdrawals + realised - fill_fees)) < LEDGER_TOLERANCE


def _check_order_totals(acc: Account) -> None:
    orders = acc.s.orders.values()
    assert set(acc._book) == {(o.symbol, o.side) for o in orders}
    for (sym, side), totals in acc._book.items():
        mine = [o for o in orders if o.symbol == sym and o.side is side]
        ref = BASE[sym] * Decimal("1.03")
        assert totals.remaining == sum((o.remaining for o in mine), Decimal(0))
        assert totals.opening == sum(1 for o in mine if not o.reduce_only)
        # The leverages drawn here divide exactly, so the totals must match to the last digit.
        assert totals.margin(ref) == sum(
            (o.remaining * (o.limit_price or o.stop_price or ref) / o.leverage
             for o in mine if not o.reduce_only),
            Decimal(0),
        )
    assert Account.from_snapshot(acc.id, acc.version, acc.to_snapshot())._book == acc._book


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=40))
def test_random_sessions_keep_the_books_and_replay_to_the_same_state(sequence):
    acc = new_account(cash="100000", risk=RiskLimits(max_position_size_pct=Decimal(100),
                                                     max_leverage=Decimal(5)))
    now = T0
    for step, op in enumerate(sequence):
        if op[0] == "tick":
            now = now + timedelta(hours=op[1])
            continue
        before_events = len(acc.pending)
        before_state = acc.to_snapshot()
        try:
            _run(acc, op, step, now)
        except DomainError:
            assert len(acc.pending) == before_events, op
            assert acc.to_snapshot() == before_state, op
        _check_invariants(acc)

    replayed = Account(acc.id)
    replayed.replay(acc.pending)
    assert replayed.s == acc.s
    restored = Account.from_snapshot(acc.id, acc.version, acc.to_snapshot())
    assert restored.s == acc.s
