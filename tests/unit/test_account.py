"""The Account aggregate: funds, orders, risk checks, fills, positions, closing, halting.

Every expected amount below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from factories import (
    BTC,
    ETH,
    SOL,
    T0,
    D,
    emitted_since,
    fill,
    limits,
    new_account,
    open_position,
    place,
    types_of,
)

from domain.account import (
    _TRANSITIONS,
    Account,
    OrderStatus,
    transition,
)
from domain.account_events import (
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    PositionClosed,
    PositionClosing,
    PositionIncreased,
    PositionOpened,
    PositionReduced,
)
from domain.errors import (
    Conflict,
    InsufficientFunds,
    InvalidTransition,
    NotFound,
    ValidationFailed,
)
from domain.events import EVENT_TYPES
from domain.risk import RiskLimits
from domain.values import OrderType, PositionSide, Side, TradingMode

# --- account lifecycle and funds ---------------------------------------------------------------


def test_open_account_records_owner_mode_currency_and_limits():
    acc = new_account(cash=None, risk=limits(max_leverage="2"))

    assert acc.s.opened
    assert acc.s.owner_id == "user-1"
    assert acc.s.mode is TradingMode.PAPER
    assert acc.s.currency == "USDT"
    assert acc.s.limits.max_leverage == D("2")
    assert types_of(acc.pending) == ["AccountOpened"]


def test_opening_an_account_twice_conflicts():
    acc = new_account(cash=None)

    with pytest.raises(Conflict) as info:
        acc.open(owner_id="x", mode=TradingMode.PAPER, currency="USDT", limits=RiskLimits(), now=T0)

    assert info.value.code == "ACCOUNT_EXISTS"


@pytest.mark.parametrize("currency", ["usdt", "US-D", ""])
def test_account_currency_must_be_an_upper_case_code(currency):
    with pytest.raises(ValidationFailed):
        Account("a").open(owner_id="x", mode=TradingMode.PAPER, currency=currency,
                          limits=RiskLimits(), now=T0)


def test_commands_on_an_account_that_was_never_opened_are_not_found():
    acc = Account("ghost")

    with pytest.raises(NotFound):
        acc.deposit(D("1"), T0)
    with pytest.raises(NotFound):
        place(acc)
    assert acc.pending == []


def test_deposit_adds_to_cash_and_available():
    acc = new_account(cash="100.25")

    acc.deposit(D("0.50"), T0)

    assert acc.s.cash == D("100.75")
    assert acc.available == D("100.75")
    assert types_of(acc.pending) == ["AccountOpened", "FundsDeposited", "FundsDeposited"]


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_non_positive_deposit_or_withdrawal_is_refused(amount):
    acc = new_account(cash="100")
    mark = len(acc.pending)

    with pytest.raises(ValidationFailed):
        acc.deposit(D(amount), T0)
    with pytest.raises(ValidationFailed):
        acc.withdraw(D(amount), T0)

    assert emitted_since(acc, mark) == []


def test_withdraw_reduces_cash():
    acc = new_account(cash="100")

    acc.withdraw(D("40.10"), T0)

    assert acc.s.cash == D("59.90")
    assert acc.available == D("59.90")


def test_withdrawing_more_than_available_is_refused_and_emits_nothing():
    acc = new_account(cash="100")
    mark = len(acc.pending)

    with pytest.raises(InsufficientFunds) as info:
        acc.withdraw(D("100.01"), T0)

    assert info.value.code == "INSUFFICIENT_FUNDS"
    assert emitted_since(acc, mark) == []
    assert acc.s.cash == D("100")


def test_reserved_funds_cannot_be_withdrawn():
    acc = new_account(cash="10000")
    # limit buy 0.1 @ 50000: reserve 0.1 * 50000 / 1 * 1.01 = 5050 -> available 4950
    place(acc, order_type=OrderType.LIMIT, limit_price="50000", last_price=None)

    with pytest.raises(InsufficientFunds):
        acc.withdraw(D("4950.01"), T0)
    acc.withdraw(D("4950"), T0)

    assert acc.s.cash == D("5050")
    assert acc.s.reserved == D("5050")
    assert acc.available == D("0")


def test_set_risk_limits_emits_only_when_they_change():
    acc = new_account()
    new = limits(max_open_positions=3)
    mark = len(acc.pending)

    acc.set_risk_limits(new, "risk-officer", T0)
    acc.set_risk_limits(new, "risk-officer", T0)

    assert types_of(emitted_since(acc, mark)) == ["RiskLimitsSet"]
    assert acc.s.limits.max_open_positions == 3


# --- placing orders: accepted -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reserved"),
    [
        # market buy 0.1 @ last 50000, x1: 5000 * 1.01
        ({"order_type": OrderType.MARKET, "quantity": "0.1"}, "5050"),
        # market buy 0.3 @ last 50000, x3: 15000 / 3 = 5000 * 1.01
        ({"order_type": OrderType.MARKET, "quantity": "0.3", "leverage": "3"}, "5050"),
        # limit buy 0.2 @ 40000, x2: 8000 / 2 = 4000 * 1.01
        ({"order_type": OrderType.LIMIT, "quantity": "0.2", "limit_price": "40000",
          "leverage": "2"}, "4040"),
        # stop buy 0.05 @ 55000, x1: 2750 * 1.01
        ({"order_type": OrderType.STOP, "quantity": "0.05", "stop_price": "55000"}, "2777.5"),
        # market sell (opens a short) 0.1 @ 50000, x1: 5000 * 1.01
        ({"order_type": OrderType.MARKET, "quantity": "0.1", "side": Side.SELL}, "5050"),
    ],
    ids=["market", "market-x3", "limit-x2", "stop", "market-short"],
)
def test_accepted_order_reserves_margin_plus_one_percent(kwargs, reserved):
    acc = new_account(cash="10000")

    ev = place(acc, **kwargs)

    assert isinstance(ev, OrderAccepted)
    assert ev.reserved == D(reserved)
    assert acc.s.reserved == D(reserved)
    assert acc.available == D("10000") - D(reserved)
    assert acc.s.cash == D("10000")
    assert acc.s.order_status[ev.order_id] is OrderStatus.ACCEPTED


def test_accepted_order_records_its_prices_and_reference():
    acc = new_account(cash="10000")
    expires = T0 + timedelta(hours=1)

    ev = place(acc, order_type=OrderType.LIMIT, limit_price="49000", take_profit="52000",
               stop_loss="48000", expires_at=expires)

    assert isinstance(ev, OrderAccepted)
    assert ev.reference_price == D("49000")
    assert ev.take_profit == D("52000")
    assert ev.stop_loss == D("48000")
    assert ev.expires_at == expires
    assert ev.symbol == BTC


def test_order_id_already_used_conflicts():
    acc = new_account()
    place(acc, order_id="o-1")

    with pytest.raises(Conflict) as info:
        place(acc, order_id="o-1")

    assert info.value.code == "ORDER_EXISTS"


def test_reducing_order_reserves_nothing():
    acc = new_account(cash="10000")
    open_position(acc, quantity="0.1", price="50000")

    ev = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True)

    assert isinstance(ev, OrderAccepted)
    assert ev.reserved == D("0")


# --- placing orders: every rejection is recorded with its reason code ---------------------------


def _assert_rejected(acc, ev, code, *, match=None):
    assert isinstance(ev, OrderRejected), ev
    assert ev.reason_code == code
    if match is not None:
        assert match in ev.reason
    assert acc.pending[-1] is ev
    assert acc.s.order_status[ev.order_id] is OrderStatus.REJECTED
    assert ev.order_id not in acc.s.orders


def test_rejection_records_exactly_one_event_and_reserves_nothing():
    acc = new_account(cash="10000")
    mark = len(acc.pending)

    ev = place(acc, quantity="0.11")  # 5500 margin = 55% of equity

    assert emitted_since(acc, mark) == [ev]
    assert acc.s.reserved == D("0")
    assert acc.s.cash == D("10000")


def test_insufficient_funds_is_rejected():
    acc = new_account(cash="1000", risk=limits(max_position_size_pct="100"))

    # 0.02 @ 50000 = 1000 margin (100% of equity, allowed); reserve 1010 > 1000
    ev = place(acc, quantity="0.02")

    _assert_rejected(acc, ev, "INSUFFICIENT_FUNDS")


def test_order_exactly_covered_by_available_funds_is_accepted():
    acc = new_account(cash="1010", risk=limits(max_position_size_pct="100"))

    ev = place(acc, quantity="0.02")  # reserve 1010 == available

    assert isinstance(ev, OrderAccepted)
    assert acc.available == D("0")


def test_max_position_size_is_enforced():
    acc = new_account(cash="10000")

    ev = place(acc, quantity="0.11")  # margin 5500 = 55% > 50%

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="position margin")


def test_max_position_size_counts_working_orders_on_the_same_pair():
    acc = new_account(cash="10000")
    first = place(acc, order_type=OrderType.LIMIT, limit_price="50000", quantity="0.06")  # 3000 = 30%

    ev = place(acc, quantity="0.05")  # 3000 + 2500 = 5500 = 55%

    assert isinstance(first, OrderAccepted)
    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="position margin")


def test_position_exactly_at_the_size_limit_is_accepted():
    acc = new_account(cash="10000")

    ev = place(acc, quantity="0.1")  # 5000 = 50%

    assert isinstance(ev, OrderAccepted)


def test_max_open_positions_is_enforced():
    acc = new_account(cash="10000", risk=limits(max_open_positions=1))
    open_position(acc, symbol=BTC, quantity="0.01", price="50000")

    ev = place(acc, symbol=ETH, quantity="0.1", last_price="3000")

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="positions")


def test_max_open_positions_counts_working_opening_orders():
    acc = new_account(cash="10000", risk=limits(max_open_positions=1))
    place(acc, symbol=ETH, order_type=OrderType.LIMIT, limit_price="2900", quantity="0.1")

    ev = place(acc, symbol=SOL, quantity="1", last_price="100")

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="positions")


def test_adding_to_an_existing_position_does_not_count_as_a_new_position():
    acc = new_account(cash="10000", risk=limits(max_open_positions=1))
    open_position(acc, symbol=BTC, quantity="0.01", price="50000")

    ev = place(acc, symbol=BTC, quantity="0.01")

    assert isinstance(ev, OrderAccepted)


def test_max_daily_loss_is_enforced():
    acc = new_account(cash="10000")
    open_position(acc, quantity="0.1", price="50000")
    close = place(acc, side=Side.SELL, quantity="0.1", last_price="44000")
    fill(acc, close.order_id, "0.1", "44000")  # realised (44000 - 50000) * 0.1 = -600 = 6% of 10000

    ev = place(acc, quantity="0.01", last_price="44000")

    assert acc.s.day_pnl == D("-600")
    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="daily loss")


def test_daily_loss_limit_resets_on_the_next_day():
    acc = new_account(cash="10000")
    open_position(acc, quantity="0.1", price="50000")
    close = place(acc, side=Side.SELL, quantity="0.1", last_price="44000")
    fill(acc, close.order_id, "0.1", "44000")

    ev = place(acc, quantity="0.01", last_price="44000", now=T0 + timedelta(days=1))

    assert isinstance(ev, OrderAccepted)


def test_max_drawdown_is_enforced_at_marked_equity():
    acc = new_account(cash="10000")
    open_position(acc, quantity="0.1", price="50000")

    # equity at BTC 35000: cash 5000 + margin 5000 - 1500 unrealised = 8500; 15% below 10000
    ev = place(acc, symbol=ETH, quantity="0.1", last_price="3000", marks={BTC: "35000"})

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="drawdown")


def test_drawdown_just_under_the_limit_is_accepted():
    acc = new_account(cash="10000")
    open_position(acc, quantity="0.1", price="50000")

    # equity at BTC 35001: 8500.1, drawdown 14.999%
    ev = place(acc, symbol=ETH, quantity="0.1", last_price="3000", marks={BTC: "35001"})

    assert isinstance(ev, OrderAccepted)


def test_leverage_above_the_limit_is_rejected():
    acc = new_account(cash="10000")

    ev = place(acc, quantity="0.1", leverage="5")

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="leverage")


def test_total_exposure_above_max_leverage_times_equity_is_rejected():
    acc = new_account(cash="10000", risk=limits(max_position_size_pct="100"))
    # 0.3 BTC @ 50000 x2: notional 15000, margin 7500; equity stays 10000
    open_position(acc, quantity="0.3", price="50000", leverage="2")

    # 5.1 ETH @ 3000 x3: notional 15300, margin 5100 (51%); exposure 30300 / 10000 = 3.03x > 3x
    ev = place(acc, symbol=ETH, quantity="5.1", last_price="3000", leverage="3")

    _assert_rejected(acc, ev, "RISK_LIMIT_EXCEEDED", match="exposure")


def test_opening_orders_are_rejected_while_trading_is_halted():
    acc = new_account()
    acc.emergency_stop(by="ops", reason="exchange outage", now=T0)

    ev = place(acc)

    _assert_rejected(acc, ev, "TRADING_HALTED", match="ops")


@pytest.mark.parametrize(
    ("symbol", "tradable"),
    [("BTCUSDT", True), ("DOGE/USDT", False), ("BTC/EUR", True)],
    ids=["malformed", "not-tradable", "other-quote-currency"],
)
def test_invalid_symbols_are_rejected(symbol, tradable):
    acc = new_account()

    ev = place(acc, symbol=symbol, tradable=tradable)

    _assert_rejected(acc, ev, "INVALID_SYMBOL")
    assert ev.symbol == symbol


def test_market_order_without_a_known_price_is_rejected():
    acc = new_account()

    ev = place(acc, last_price=None)

    _assert_rejected(acc, ev, "NO_MARKET_PRICE")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"side": Side.BUY, "take_profit": "49000"},  # TP below the entry of a long
        {"side": Side.BUY, "take_profit": "50000"},  # TP at the entry
        {"side": Side.BUY, "stop_loss": "51000"},  # SL above the entry of a long
        {"side": Side.SELL, "take_profit": "51000"},  # TP above the entry of a short
        {"side": Side.SELL, "stop_loss": "49000"},  # SL below the entry of a short
    ],
    ids=["long-tp-below", "long-tp-at-entry", "long-sl-above", "short-tp-above", "short-sl-below"],
)
def test_take_profit_or_stop_loss_on_the_wrong_side_is_invalid(kwargs):
    acc = new_account()

    ev = place(acc, **kwargs)

    _assert_rejected(acc, ev, "INVALID_ORDER", match="wrong side")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order_type": OrderType.LIMIT}, "limit price"),
        ({"order_type": OrderType.STOP}, "stop price"),
        ({"order_type": OrderType.MARKET, "limit_price": "50000"}, "market order"),
        ({"quantity": "0"}, "quantity"),
        ({"expires_at": T0}, "expiry"),
        ({"leverage": "0.5"}, "leverage"),
    ],
    ids=["limit-without-price", "stop-without-price", "market-with-limit", "zero-qty",
         "expired", "leverage-below-one"],
)
def test_malformed_orders_are_invalid(kwargs, match):
    acc = new_account()

    ev = place(acc, **kwargs)

    _assert_rejected(acc, ev, "INVALID_ORDER", match=match)


def test_reduce_only_order_bigger_than_the_position_is_invalid():
    acc = new_account()
    open_position(acc, quantity="0.1")

    ev = place(acc, side=Side.SELL, quantity="0.2", reduce_only=True)

    _assert_rejected(acc, ev, "INVALID_ORDER", match="reduce-only")


def test_reduce_only_order_without_a_position_is_invalid():
    acc = new_account()

    ev = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True)

    _assert_rejected(acc, ev, "INVALID_ORDER", match="reduce-only")


def test_reduce_only_orders_together_cannot_exceed_the_position():
    acc = new_account()
    open_position(acc, quantity="0.1")
    first = place(acc, side=Side.SELL, quantity="0.06", reduce_only=True,
                  order_type=OrderType.LIMIT, limit_price="60000")

    ev = place(acc, side=Side.SELL, quantity="0.05", reduce_only=True)  # 0.06 + 0.05 > 0.1

    assert isinstance(first, OrderAccepted)
    _assert_rejected(acc, ev, "INVALID_ORDER", match="reduce-only")


# --- the order lifecycle table ----------------------------------------------------------------

ALLOWED = [
    (OrderStatus.ACCEPTED, OrderPartiallyFilled, OrderStatus.PARTIALLY_FILLED),
    (OrderStatus.ACCEPTED, OrderFilled, OrderStatus.FILLED),
    (OrderStatus.PARTIALLY_FILLED, OrderPartiallyFilled, OrderStatus.PARTIALLY_FILLED),
    (OrderStatus.PARTIALLY_FILLED, OrderFilled, OrderStatus.FILLED),
    (OrderStatus.ACCEPTED, OrderCancelled, OrderStatus.CANCELLED),
    (OrderStatus.PARTIALLY_FILLED, OrderCancelled, OrderStatus.CANCELLED),
    (OrderStatus.ACCEPTED, OrderExpired, OrderStatus.EXPIRED),
    (OrderStatus.PARTIALLY_FILLED, OrderExpired, OrderStatus.EXPIRED),
]


@pytest.mark.parametrize(("status", "event", "after"), ALLOWED,
                         ids=[f"{s.value}-{e.__name__}" for s, e, _ in ALLOWED])
def test_allowed_transition(status, event, after):
    assert transition("o-1", status, event) is after


def test_the_transition_table_allows_nothing_else():
    assert {(s, e): a for s, e, a in ALLOWED} == _TRANSITIONS


ILLEGAL = [
    (status, event)
    for status in OrderStatus
    for event in (OrderPartiallyFilled, OrderFilled, OrderCancelled, OrderExpired)
    if (status, event) not in {(s, e) for s, e, _ in ALLOWED}
]


@pytest.mark.parametrize(("status", "event"), ILLEGAL,
                         ids=[f"{s.value}-{e.__name__}" for s, e in ILLEGAL])
def test_illegal_transition_raises_invalid_transition(status, event):
    with pytest.raises(InvalidTransition) as info:
        transition("o-1", status, event)

    assert info.value.code == "INVALID_TRANSITION"
    assert info.value.entity_id == "o-1"
    assert info.value.status == status.value
    assert info.value.event_type == event.__name__


def _limit_buy(acc, qty="1", price="50000", **kw):
    ev = place(acc, order_type=OrderType.LIMIT, limit_price=price, quantity=qty, **kw)
    assert isinstance(ev, OrderAccepted), ev
    return ev.order_id


def test_order_goes_accepted_partially_filled_filled():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc)

    fill(acc, oid, "0.25", "50000")
    assert acc.s.order_status[oid] is OrderStatus.PARTIALLY_FILLED
    fill(acc, oid, "0.25", "50000")
    assert acc.s.order_status[oid] is OrderStatus.PARTIALLY_FILLED
    fill(acc, oid, "0.5", "50000")

    assert acc.s.order_status[oid] is OrderStatus.FILLED
    assert oid not in acc.s.orders


def test_order_goes_accepted_filled_in_one_fill():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc)

    fill(acc, oid, "1", "50000")

    assert acc.s.order_status[oid] is OrderStatus.FILLED
    assert types_of(acc.pending[-2:]) == ["OrderFilled", "PositionOpened"]


@pytest.mark.parametrize("partial", [False, True], ids=["accepted", "partially-filled"])
def test_order_can_be_cancelled_releasing_what_it_still_reserves(partial):
    acc = new_account(cash="100000")
    oid = _limit_buy(acc)  # reserve 50500
    if partial:
        fill(acc, oid, "0.5", "50000")  # releases 25250

    acc.cancel_order(oid, "USER_REQUEST", T0)

    ev = acc.pending[-1]
    assert isinstance(ev, OrderCancelled)
    assert ev.released == (D("25250") if partial else D("50500"))
    assert acc.s.reserved == D("0")
    assert acc.s.order_status[oid] is OrderStatus.CANCELLED


@pytest.mark.parametrize("partial", [False, True], ids=["accepted", "partially-filled"])
def test_order_expires_once_its_time_has_come(partial):
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, expires_at=T0 + timedelta(minutes=10))
    if partial:
        fill(acc, oid, "0.5", "50000")

    acc.expire_order(oid, T0 + timedelta(minutes=10))

    assert isinstance(acc.pending[-1], OrderExpired)
    assert acc.s.order_status[oid] is OrderStatus.EXPIRED
    assert acc.s.reserved == D("0")


def test_order_cannot_expire_before_its_expiry():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, expires_at=T0 + timedelta(minutes=10))
    mark = len(acc.pending)

    with pytest.raises(Conflict) as info:
        acc.expire_order(oid, T0 + timedelta(minutes=9))

    assert info.value.code == "ORDER_NOT_EXPIRED"
    assert emitted_since(acc, mark) == []


def test_cancelling_a_filled_order_is_an_invalid_transition():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc)
    fill(acc, oid, "1", "50000")

    with pytest.raises(InvalidTransition) as info:
        acc.cancel_order(oid, "USER_REQUEST", T0)

    assert info.value.status == "filled"
    assert info.value.event_type == "OrderCancelled"


def test_filling_a_cancelled_order_is_an_invalid_transition():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc)
    acc.cancel_order(oid, "USER_REQUEST", T0)
    mark = len(acc.pending)

    with pytest.raises(InvalidTransition):
        fill(acc, oid, "1", "50000")

    assert emitted_since(acc, mark) == []


def test_cancelling_a_rejected_order_is_an_invalid_transition():
    acc = new_account()
    ev = place(acc, quantity="0.5")  # rejected: 50% limit

    with pytest.raises(InvalidTransition):
        acc.cancel_order(ev.order_id, "USER_REQUEST", T0)


def test_cancelling_an_unknown_order_is_not_found():
    acc = new_account()

    with pytest.raises(NotFound):
        acc.cancel_order("nope", "USER_REQUEST", T0)
    with pytest.raises(NotFound):
        fill(acc, "nope", "1", "1")


def test_reserved_is_exactly_zero_once_every_order_is_cancelled():
    acc = new_account(cash="10000")
    first = place(acc, quantity="0.01")  # reserve 0.01 * 50000 * 1.01 = 505
    # reserve 0.05 * 50000 / 3 * 1.01 = 841.666...: a non-terminating decimal
    second = place(acc, quantity="0.05", leverage="3")
    assert isinstance(first, OrderAccepted) and isinstance(second, OrderAccepted)

    acc.cancel_order(first.order_id, "USER_REQUEST", T0)
    acc.cancel_order(second.order_id, "USER_REQUEST", T0)

    assert acc.s.orders == {}
    assert acc.s.reserved == D("0")
    assert acc.available == acc.s.cash


# --- fills: reservation release, cash, fees --------------------------------------------------


def test_partial_fills_release_the_reservation_proportionally_then_fully():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, qty="1", price="50000")  # reserve 1 * 50000 * 1.01 = 50500

    # fill 1: 0.25 @ 50000, fee 12.5. released 50500 * 0.25 / 1 = 12625 -> reserved 37875.
    # margin 12500; cash 100000 - 12500 - 12.5 = 87487.5; available 87487.5 - 37875 = 49612.5
    fill(acc, oid, "0.25", "50000", "12.5")
    assert acc.pending[-2].released == D("12625")
    assert (acc.s.cash, acc.s.reserved, acc.available) == (D("87487.5"), D("37875"), D("49612.5"))

    # fill 2: 0.25 @ 49000, fee 12.25. released 37875 * 0.25 / 0.75 = 12625 -> reserved 25250.
    # margin 12250; cash 87487.5 - 12250 - 12.25 = 75225.25; available 49975.25
    fill(acc, oid, "0.25", "49000", "12.25")
    assert acc.pending[-2].released == D("12625")
    assert (acc.s.cash, acc.s.reserved, acc.available) == (D("75225.25"), D("25250"), D("49975.25"))

    # final fill: 0.5 @ 48000, fee 24. releases the remaining 25250 -> reserved 0.
    # margin 24000; cash 75225.25 - 24000 - 24 = 51201.25
    fill(acc, oid, "0.5", "48000", "24")
    assert isinstance(acc.pending[-2], OrderFilled)
    assert acc.pending[-2].released == D("25250")
    assert (acc.s.cash, acc.s.reserved, acc.available) == (D("51201.25"), D("0"), D("51201.25"))

    # entry (50000 * .25 + 49000 * .25) / .5 = 49500, then (49500 * .5 + 48000 * .5) / 1 = 48750
    pos = acc.s.positions[BTC]
    assert pos.quantity == D("1")
    assert pos.entry_price == D("48750")
    assert pos.margin == D("48750")
    assert pos.fees == D("48.75")
    # at cost, equity = deposits - fees
    assert acc.book_equity() == D("99951.25")


def test_fill_bigger_than_what_remains_is_refused():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, qty="1")
    fill(acc, oid, "0.4", "50000")
    mark = len(acc.pending)

    with pytest.raises(ValidationFailed, match="exceeds"):
        fill(acc, oid, "0.61", "50000")

    assert emitted_since(acc, mark) == []


def test_same_fill_id_twice_is_applied_once():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, qty="1")
    assert fill(acc, oid, "0.4", "50000", fill_id="f-1") is True
    mark = len(acc.pending)
    cash = acc.s.cash

    applied = fill(acc, oid, "0.4", "50000", fill_id="f-1")

    assert applied is False
    assert emitted_since(acc, mark) == []
    assert acc.s.cash == cash
    assert acc.s.orders[oid].filled == D("0.4")


def test_late_duplicate_of_the_completing_fill_is_ignored():
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, qty="1")
    fill(acc, oid, "1", "50000", fill_id="f-1")
    mark = len(acc.pending)

    assert fill(acc, oid, "1", "50000", fill_id="f-1") is False
    assert emitted_since(acc, mark) == []


@pytest.mark.parametrize(("qty", "price", "fee"), [("0.1", "0", "0"), ("0.1", "50000", "-1")])
def test_fill_with_non_positive_price_or_negative_fee_is_refused(qty, price, fee):
    acc = new_account(cash="100000")
    oid = _limit_buy(acc, qty="1")

    with pytest.raises(ValidationFailed):
        fill(acc, oid, qty, price, fee)


# --- positions: opened, increased, reduced, closed ----------------------------------------------


def test_fill_opens_a_long_position_paying_margin_and_fee_from_cash():
    acc = new_account(cash="10000")
    ev = place(acc, quantity="0.1", take_profit="55000", stop_loss="48000")

    fill(acc, ev.order_id, "0.1", "50010", "5.001")

    opened = acc.pending[-1]
    assert isinstance(opened, PositionOpened)
    assert opened.side is PositionSide.LONG
    assert opened.entry_price == D("50010")
    assert opened.margin == D("5001")  # 0.1 * 50010 / 1
    assert opened.fee == D("5.001")
    assert opened.take_profit == D("55000")
    assert opened.stop_loss == D("48000")
    # cash 10000 - 5001 - 5.001
    assert acc.s.cash == D("4993.999")
    assert acc.s.reserved == D("0")


def test_leveraged_position_moves_only_the_margin_out_of_cash():
    acc = new_account(cash="10000")

    open_position(acc, quantity="0.3", price="50000", leverage="3")

    pos = acc.s.positions[BTC]
    assert pos.margin == D("5000")  # 15000 / 3
    assert pos.leverage == D("3")
    assert acc.s.cash == D("5000")


def test_second_buy_increases_the_position_at_the_weighted_entry():
    acc = new_account(cash="250000")
    open_position(acc, quantity="1", price="50000", fee="50")

    ev = place(acc, quantity="1", last_price="52000")
    fill(acc, ev.order_id, "1", "52000", "52")

    inc = acc.pending[-1]
    assert isinstance(inc, PositionIncreased)
    assert inc.new_quantity == D("2")
    assert inc.new_entry_price == D("51000")  # (50000 + 52000) / 2
    assert inc.margin_added == D("52000")
    pos = acc.s.positions[BTC]
    assert (pos.quantity, pos.entry_price, pos.margin, pos.fees) == (
        D("2"), D("51000"), D("102000"), D("102"))
    # cash 250000 - 50050 - 52052
    assert acc.s.cash == D("147898")


def test_selling_part_of_a_long_realises_pnl_on_that_part():
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.2", price="50000", fee="10")  # margin 10000, cash 9990

    ev = place(acc, side=Side.SELL, quantity="0.05", last_price="52000")
    fill(acc, ev.order_id, "0.05", "52000", "2.6")

    red = acc.pending[-1]
    assert isinstance(red, PositionReduced)
    assert red.realised_pnl == D("100")  # (52000 - 50000) * 0.05
    assert red.margin_released == D("2500")  # 10000 * 0.05 / 0.2
    assert red.remaining == D("0.15")
    pos = acc.s.positions[BTC]
    assert (pos.quantity, pos.margin, pos.realised_pnl, pos.fees) == (
        D("0.15"), D("7500"), D("100"), D("12.6"))
    # cash 9990 + 2500 + 100 - 2.6
    assert acc.s.cash == D("12587.4")


def test_selling_the_rest_closes_the_position_with_total_pnl_and_fees():
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.2", price="50000", fee="10")
    part = place(acc, side=Side.SELL, quantity="0.05", last_price="52000")
    fill(acc, part.order_id, "0.05", "52000", "2.6")

    rest = place(acc, side=Side.SELL, quantity="0.15", last_price="51000")
    fill(acc, rest.order_id, "0.15", "51000", "7.65")

    closed = acc.pending[-1]
    assert isinstance(closed, PositionClosed)
    assert closed.realised_pnl == D("150")  # (51000 - 50000) * 0.15
    assert closed.total_realised_pnl == D("250")  # 100 + 150
    assert closed.fees == D("20.25")  # 10 + 2.6 + 7.65
    assert closed.margin_released == D("7500")
    assert closed.fee == D("7.65")
    assert closed.reason == "ORDER"
    assert BTC not in acc.s.positions
    # cash 12587.4 + 7500 + 150 - 7.65 = 20000 + 250 - 20.25
    assert acc.s.cash == D("20229.75")
    record = acc.s.closed_positions[closed.position_id]
    assert (record.realised_pnl, record.fees, record.exit_price) == (D("250"), D("20.25"), D("51000"))


def test_short_position_profits_when_the_price_falls():
    acc = new_account(cash="10000")
    open_position(acc, side=Side.SELL, quantity="0.1", price="50000", fee="5")

    pos = acc.s.positions[BTC]
    assert pos.side is PositionSide.SHORT
    assert acc.s.cash == D("4995")  # 10000 - 5000 - 5
    # unrealised at 49000: (49000 - 50000) * 0.1 * -1 = 100
    assert acc.equity({BTC: D("49000")}) == D("10095")

    ev = place(acc, side=Side.BUY, quantity="0.1", last_price="48000")
    fill(acc, ev.order_id, "0.1", "48000", "4.8")

    closed = acc.pending[-1]
    assert isinstance(closed, PositionClosed)
    assert closed.side is PositionSide.SHORT
    assert closed.realised_pnl == D("200")  # (48000 - 50000) * 0.1 * -1
    assert acc.s.cash == D("10190.2")  # 4995 + 5000 + 200 - 4.8


def test_short_position_loses_when_the_price_rises():
    acc = new_account(cash="10000")
    open_position(acc, side=Side.SELL, quantity="0.1", price="50000")

    ev = place(acc, side=Side.BUY, quantity="0.1", last_price="51000")
    fill(acc, ev.order_id, "0.1", "51000")

    assert acc.pending[-1].realised_pnl == D("-100")
    assert acc.s.cash == D("9900")


def test_one_fill_can_flip_a_long_into_a_short():
    acc = new_account(cash="200000", risk=limits(max_position_size_pct="100"))
    old_id = open_position(acc, quantity="1", price="50000")  # cash 150000
    mark = len(acc.pending)

    # sell 3: 1 closes the long, 2 open a short. reserve for the opening part only: 2 * 52000 * 1.01
    ev = place(acc, side=Side.SELL, quantity="3", last_price="52000", marks={BTC: "52000"})
    assert ev.reserved == D("105040")
    fill(acc, ev.order_id, "3", "52000", "3")

    assert types_of(emitted_since(acc, mark)) == [
        "OrderAccepted", "OrderFilled", "PositionClosed", "PositionOpened"]
    closed, opened = acc.pending[-2], acc.pending[-1]
    assert closed.position_id == old_id
    assert closed.realised_pnl == D("2000")  # (52000 - 50000) * 1
    assert closed.fee == D("1")  # 3 * 1 / 3
    assert opened.side is PositionSide.SHORT
    assert opened.position_id != old_id
    assert (opened.quantity, opened.entry_price, opened.margin, opened.fee) == (
        D("2"), D("52000"), D("104000"), D("2"))
    # cash 150000 + 50000 + 2000 - 1 - 104000 - 2
    assert acc.s.cash == D("97997")
    assert acc.s.reserved == D("0")
    assert acc.book_equity() == D("201997")  # 200000 + 2000 - 3


# --- closing positions: idempotent ------------------------------------------------------------


def _close(acc, position_id, close_order_id="close-1", *, reason="MANUAL", last="51000"):
    return acc.close_position(position_id=position_id, close_order_id=close_order_id,
                              reason=reason, by="alice", last_price=D(last) if last else None,
                              now=T0)


def test_close_position_places_a_reduce_only_market_order_for_the_whole_position():
    acc = new_account()
    pid = open_position(acc, quantity="0.1", price="50000")
    mark = len(acc.pending)

    result = _close(acc, pid)

    assert result == {"position_id": pid, "status": "closing", "close_order_id": "close-1"}
    closing, order = emitted_since(acc, mark)
    assert isinstance(closing, PositionClosing)
    assert (closing.reason, closing.by, closing.close_order_id) == ("MANUAL", "alice", "close-1")
    assert isinstance(order, OrderAccepted)
    assert (order.side, order.order_type, order.quantity, order.reduce_only, order.reserved) == (
        Side.SELL, OrderType.MARKET, D("0.1"), True, D("0"))
    assert order.reference_price == D("51000")


def test_close_position_twice_returns_the_same_close_order_and_emits_nothing():
    acc = new_account()
    pid = open_position(acc, quantity="0.1", price="50000")
    first = _close(acc, pid, "close-1")
    mark = len(acc.pending)

    second = _close(acc, pid, "close-2")

    assert second == first
    assert second["close_order_id"] == "close-1"
    assert emitted_since(acc, mark) == []


def test_closing_a_closed_position_returns_the_same_realised_pnl_and_emits_nothing():
    acc = new_account()
    pid = open_position(acc, quantity="0.1", price="50000")
    _close(acc, pid, "close-1")
    fill(acc, "close-1", "0.1", "51000", "5.1")
    assert acc.pending[-1].reason == "MANUAL"
    mark = len(acc.pending)

    again = _close(acc, pid, "close-2")
    and_again = _close(acc, pid, "close-3")

    assert again == and_again
    assert again["status"] == "closed"
    assert D(again["realised_pnl"]) == D("100")  # (51000 - 50000) * 0.1
    assert D(again["fees"]) == D("5.1")
    assert D(again["exit_price"]) == D("51000")
    assert again["reason"] == "MANUAL"
    assert emitted_since(acc, mark) == []


def test_closing_an_unknown_position_is_not_found():
    acc = new_account()

    with pytest.raises(NotFound):
        _close(acc, "pos_missing")


def test_close_supersedes_working_orders_on_the_closing_side():
    acc = new_account(cash="20000")
    pid = open_position(acc, quantity="0.2", price="50000")
    tp = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True,
               order_type=OrderType.LIMIT, limit_price="60000")
    mark = len(acc.pending)

    _close(acc, pid)

    cancelled, _, order = emitted_since(acc, mark)
    assert isinstance(cancelled, OrderCancelled)
    assert (cancelled.order_id, cancelled.reason) == (tp.order_id, "SUPERSEDED_BY_CLOSE")
    assert order.quantity == D("0.2")


def test_flattening_a_position_cancels_its_other_reduce_only_orders():
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.2", price="50000")
    tp = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True,
               order_type=OrderType.LIMIT, limit_price="60000")
    # two plain sells of 0.1 flatten the position while the reduce-only order still works
    sell = place(acc, side=Side.SELL, quantity="0.1", last_price="51000")
    fill(acc, sell.order_id, "0.1", "51000")
    other = place(acc, side=Side.SELL, quantity="0.1", last_price="51000",
                  order_type=OrderType.LIMIT, limit_price="51000")
    mark = len(acc.pending)
    fill(acc, other.order_id, "0.1", "51000")

    events = emitted_since(acc, mark)
    assert types_of(events) == ["OrderFilled", "PositionClosed", "OrderCancelled"]
    assert (events[-1].order_id, events[-1].reason) == (tp.order_id, "POSITION_CLOSED")
    assert acc.s.orders == {}


# --- emergency stop, resume, liquidation ------------------------------------------------------


def test_emergency_stop_halts_and_cancels_working_opening_orders():
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.1", price="50000")
    opening = place(acc, symbol=ETH, order_type=OrderType.LIMIT, limit_price="2900", quantity="1")
    reducing = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True,
                     order_type=OrderType.LIMIT, limit_price="60000")
    mark = len(acc.pending)

    acc.emergency_stop(by="risk-officer", reason="flash crash", now=T0)

    halted, cancelled = emitted_since(acc, mark)
    assert (halted.by, halted.reason) == ("risk-officer", "flash crash")
    assert (cancelled.order_id, cancelled.reason) == (opening.order_id, "EMERGENCY_STOP")
    assert cancelled.released == D("2929")  # 1 * 2900 * 1.01
    assert acc.s.halted is True
    assert (acc.s.halted_by, acc.s.halt_reason, acc.s.halted_at) == ("risk-officer", "flash crash", T0)
    assert list(acc.s.orders) == [reducing.order_id]
    assert acc.s.reserved == D("0")


def test_emergency_stop_keeps_a_plain_order_that_only_reduces_a_position():
    # The halt cancels "working orders that would add exposure"; a plain limit sell of part
    # of a long adds none (the halted account itself accepts such an order), so it stays.
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.2", price="50000")
    take_profit = place(acc, side=Side.SELL, quantity="0.1", order_type=OrderType.LIMIT,
                        limit_price="60000")
    assert isinstance(take_profit, OrderAccepted) and take_profit.reserved == D("0")
    mark = len(acc.pending)

    acc.emergency_stop(by="risk-officer", reason="flash crash", now=T0)

    assert types_of(emitted_since(acc, mark)) == ["TradingHalted"]
    assert list(acc.s.orders) == [take_profit.order_id]


def test_emergency_stop_twice_emits_once_and_keeps_the_first_reason():
    acc = new_account()
    acc.emergency_stop(by="a", reason="first", now=T0)
    mark = len(acc.pending)

    acc.emergency_stop(by="b", reason="second", now=T0)

    assert emitted_since(acc, mark) == []
    assert (acc.s.halted_by, acc.s.halt_reason) == ("a", "first")


def test_closing_is_still_allowed_while_halted():
    acc = new_account(cash="20000")
    pid = open_position(acc, quantity="0.2", price="50000")
    acc.emergency_stop(by="ops", reason="maintenance", now=T0)

    reduce_ev = place(acc, side=Side.SELL, quantity="0.1", reduce_only=True)
    plain_reduce = place(acc, side=Side.SELL, quantity="0.05")
    result = _close(acc, pid)

    assert isinstance(reduce_ev, OrderAccepted)
    assert isinstance(plain_reduce, OrderAccepted)
    assert result["status"] == "closing"


def test_resume_lets_orders_through_again():
    acc = new_account()
    acc.emergency_stop(by="ops", reason="maintenance", now=T0)
    mark = len(acc.pending)

    acc.resume(by="ops", now=T0)
    ev = place(acc)

    assert types_of(emitted_since(acc, mark)) == ["TradingResumed", "OrderAccepted"]
    assert acc.s.halted is False
    assert isinstance(ev, OrderAccepted)


def test_resume_when_not_halted_emits_nothing():
    acc = new_account()
    mark = len(acc.pending)

    acc.resume(by="ops", now=T0)

    assert emitted_since(acc, mark) == []


def test_liquidate_all_cancels_opening_orders_and_starts_closing_every_position():
    acc = new_account(cash="20000")
    btc = open_position(acc, symbol=BTC, quantity="0.1", price="50000")  # margin 5000
    eth = open_position(acc, symbol=ETH, side=Side.SELL, quantity="1", price="3000")  # margin 3000
    sol = place(acc, symbol=SOL, order_type=OrderType.LIMIT, limit_price="100", quantity="10")
    mark = len(acc.pending)

    started = acc.liquidate_all(by="ops", reason="margin call", order_id_seed="seed-1",
                                marks={BTC: D("51000"), ETH: D("2900")}, now=T0)

    events = emitted_since(acc, mark)
    assert types_of(events) == [
        "LiquidationRequested", "OrderCancelled",
        "PositionClosing", "OrderAccepted", "PositionClosing", "OrderAccepted"]
    assert (events[1].order_id, events[1].reason) == (sol.order_id, "LIQUIDATION")
    assert len(started) == 2
    closes = {e.symbol: e for e in events if isinstance(e, OrderAccepted)}
    assert (closes[BTC].side, closes[BTC].quantity, closes[BTC].reference_price) == (
        Side.SELL, D("0.1"), D("51000"))
    assert (closes[ETH].side, closes[ETH].quantity, closes[ETH].reference_price) == (
        Side.BUY, D("1"), D("2900"))
    assert acc.s.positions[BTC].closing_order_id == closes[BTC].order_id
    assert acc.s.positions[BTC].closing_reason == "LIQUIDATION"

    fill(acc, closes[BTC].order_id, "0.1", "51000")  # +100
    fill(acc, closes[ETH].order_id, "1", "2900")  # short: (2900 - 3000) * 1 * -1 = +100

    assert acc.s.positions == {}
    assert acc.s.closed_positions[btc].reason == "LIQUIDATION"
    assert acc.s.closed_positions[eth].reason == "LIQUIDATION"
    assert acc.s.cash == D("20200")
    assert acc.s.reserved == D("0")


def test_liquidate_all_twice_does_not_start_a_second_close():
    acc = new_account(cash="20000")
    open_position(acc, quantity="0.1", price="50000")
    first = acc.liquidate_all(by="ops", reason="x", order_id_seed="s1", marks={}, now=T0)
    mark = len(acc.pending)

    second = acc.liquidate_all(by="ops", reason="x", order_id_seed="s2", marks={}, now=T0)

    assert len(first) == 1
    assert second == []
    assert types_of(emitted_since(acc, mark)) == ["LiquidationRequested"]


# --- snapshots and replay ----------------------------------------------------------------------


def _busy_account() -> Account:
    acc = new_account(cash="50000", risk=limits(max_open_positions=5))
    open_position(acc, symbol=BTC, quantity="0.2", price="50000", fee="10", take_profit="60000",
                  stop_loss="45000")
    sell = place(acc, side=Side.SELL, quantity="0.05", last_price="52000")
    fill(acc, sell.order_id, "0.05", "52000", "2.6")
    eth = open_position(acc, symbol=ETH, side=Side.SELL, quantity="2", price="3000", fee="6")
    _close(acc, eth, "close-eth", last="2900")
    fill(acc, "close-eth", "2", "2900", "5.8")
    working = place(acc, symbol=SOL, order_type=OrderType.LIMIT, limit_price="100", quantity="5",
                    expires_at=T0 + timedelta(days=1))
    fill(acc, working.order_id, "2", "99.5", "0.2")
    place(acc, quantity="1")  # rejected
    acc.withdraw(D("123.45"), T0 + timedelta(hours=1))
    acc.emergency_stop(by="ops", reason="test", now=T0 + timedelta(hours=2))
    return acc


def test_snapshot_round_trip_equals_the_live_state():
    acc = _busy_account()

    restored = Account.from_snapshot(acc.id, acc.version, acc.to_snapshot())

    assert restored.s == acc.s
    assert restored.version == acc.version


def test_snapshot_survives_json_storage():
    acc = _busy_account()

    state = json.loads(json.dumps(acc.to_snapshot()))
    restored = Account.from_snapshot(acc.id, 7, state)

    assert restored.s == acc.s
    assert restored.to_snapshot() == acc.to_snapshot()


def test_an_open_order_adds_one_object_for_the_garbage_collector():
    # Accounts live long and every full collection walks what they hold: an open order keeps
    # plain str and Decimal values (untracked), not the events' value-type instances.
    import gc
    from enum import Enum

    acc = new_account()
    accepted = place(acc, order_type=OrderType.LIMIT, limit_price="49000", take_profit="60000", stop_loss="40000")

    order = acc.s.orders[accepted.order_id]
    values = {name: getattr(order, name) for name in order.__slots__}
    tracked = [name for name, v in values.items() if gc.is_tracked(v) and not isinstance(v, Enum)]  # enums: shared
    assert tracked == []
    assert order.symbol == BTC and order.quantity == D("0.1") and order.limit_price == D("49000")


def test_replaying_the_emitted_events_rebuilds_the_live_state():
    acc = _busy_account()

    replayed = Account(acc.id)
    replayed.replay(acc.pending)

    assert replayed.s == acc.s
    assert replayed.version == len(acc.pending)


def test_replaying_decoded_events_rebuilds_the_live_state():
    acc = _busy_account()
    decoded = [
        EVENT_TYPES.from_data(type(e).__name__, type(e).schema_version,
                              json.loads(json.dumps(EVENT_TYPES.to_data(e))))
        for e in acc.pending
    ]

    replayed = Account(acc.id)
    replayed.replay(decoded)

    assert replayed.s == acc.s
    assert replayed.to_snapshot() == acc.to_snapshot()


def test_clone_is_independent_of_the_original():
    acc = _busy_account()

    copy = acc.clone()
    copy.deposit(D("1"), T0)

    assert copy.s.cash == acc.s.cash + D("1")
