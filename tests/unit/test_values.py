"""Value objects: exact amounts, symbols, sides, identifiers, risk limits, the manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.clock import ManualClock
from domain.errors import ValidationFailed
from domain.risk import RiskLimits
from domain.values import (
    Money,
    PositionSide,
    Price,
    Quantity,
    Side,
    Symbol,
    derived_id,
    new_id,
)

# --- Price / Quantity / Money ---------------------------------------------------------------


def test_price_keeps_the_exact_decimal_it_was_given():
    price = Price("64250.50000001")

    assert price == Decimal("64250.50000001")
    assert str(price) == "64250.50000001"
    assert isinstance(price, Decimal)


def test_amounts_built_from_strings_add_exactly():
    total = Money("0.1") + Money("0.2")

    assert total == Decimal("0.3")
    assert str(total) == "0.3"


def test_price_accepts_int_and_decimal_input():
    assert Price(5) == Decimal(5)
    assert Price(Decimal("0.00000001")) == Decimal("0.00000001")


@pytest.mark.parametrize("value", ["0", "-1", "-0.00000001", 0, Decimal("-3")])
def test_price_must_be_strictly_positive(value):
    with pytest.raises(ValidationFailed):
        Price(value)


@pytest.mark.parametrize("cls", [Price, Quantity, Money])
def test_float_amounts_are_refused_because_they_lost_exactness(cls):
    with pytest.raises(ValidationFailed, match="float"):
        cls(0.1)


@pytest.mark.parametrize("cls", [Price, Quantity, Money])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "abc", "", "1,5"])
def test_non_finite_or_non_numeric_amounts_are_refused(cls, value):
    with pytest.raises(ValidationFailed) as info:
        cls(value)

    assert info.value.code == "VALIDATION_ERROR"


def test_quantity_may_be_zero_but_not_negative():
    assert Quantity("0") == Decimal(0)
    with pytest.raises(ValidationFailed):
        Quantity("-0.1")


def test_money_is_signed():
    assert Money("-12.34") == Decimal("-12.34")
    assert Money("0") == Decimal(0)


# --- Symbol -----------------------------------------------------------------------------------


def test_symbol_is_normalised_to_upper_case_without_spaces():
    sym = Symbol("  btc/usdt ")

    assert sym == "BTC/USDT"
    assert sym.base == "BTC"
    assert sym.quote == "USDT"


def test_symbol_of_a_symbol_is_the_same_object():
    sym = Symbol("ETH/USDT")

    assert Symbol(sym) is sym


def test_symbol_allows_digits_in_codes():
    assert Symbol("1000PEPE/USDT").base == "1000PEPE"


@pytest.mark.parametrize(
    "text", ["BTCUSDT", "BTC-USDT", "BTC/", "/USDT", "B/USDT", "BTC/USDT/X", "BT C/USDT", ""]
)
def test_malformed_symbol_is_refused_with_invalid_symbol_code(text):
    with pytest.raises(ValidationFailed) as info:
        Symbol(text)

    assert info.value.code == "INVALID_SYMBOL"


# --- sides ---------------------------------------------------------------------------------------


def test_side_sign_and_opposite():
    assert Side.BUY.sign == 1
    assert Side.SELL.sign == -1
    assert Side.BUY.opposite is Side.SELL
    assert Side.SELL.opposite is Side.BUY


def test_position_side_opening_and_closing_sides():
    assert PositionSide.LONG.opening_side is Side.BUY
    assert PositionSide.LONG.closing_side is Side.SELL
    assert PositionSide.SHORT.opening_side is Side.SELL
    assert PositionSide.SHORT.closing_side is Side.BUY


# --- identifiers -----------------------------------------------------------------------------


def test_derived_id_is_stable_for_the_same_parts():
    assert derived_id("ord", "acc-1", "key-1") == derived_id("ord", "acc-1", "key-1")


def test_derived_id_differs_for_other_parts_and_has_the_prefix():
    first = derived_id("ord", "acc-1", "key-1")
    other = derived_id("ord", "acc-1", "key-2")

    assert first != other
    assert first.startswith("ord_")


def test_new_id_is_unique_and_prefixed():
    ids = {new_id("bot") for _ in range(100)}

    assert len(ids) == 100
    assert all(i.startswith("bot_") for i in ids)


# --- risk limits -------------------------------------------------------------------------------


def test_default_risk_limits_are_the_documented_ones():
    lim = RiskLimits()

    assert lim.max_position_size_pct == Decimal(50)
    assert lim.max_open_positions == 20
    assert lim.max_daily_loss_pct == Decimal(5)
    assert lim.max_drawdown_pct == Decimal(15)
    assert lim.max_leverage == Decimal(3)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_position_size_pct": Decimal("100.01")},
        {"max_position_size_pct": Decimal("-1")},
        {"max_daily_loss_pct": Decimal("101")},
        {"max_drawdown_pct": Decimal("NaN")},
        {"max_drawdown_pct": 10},  # not a Decimal
        {"max_open_positions": -1},
        {"max_open_positions": 1001},
        {"max_leverage": Decimal("0.5")},
        {"max_leverage": Decimal("10.5")},
        {"max_leverage": 3},  # not a Decimal
    ],
)
def test_risk_limits_out_of_range_are_refused(overrides):
    with pytest.raises(ValidationFailed):
        RiskLimits(**overrides)


def test_risk_limits_bounds_are_inclusive():
    lim = RiskLimits(
        max_position_size_pct=Decimal(100), max_open_positions=0, max_daily_loss_pct=Decimal(0),
        max_drawdown_pct=Decimal(100), max_leverage=Decimal(10),
    )

    assert lim.max_leverage == Decimal(10)


# --- manual clock --------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told():
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))

    assert clock.now() == datetime(2026, 3, 1, tzinfo=UTC)
    assert clock.advance(timedelta(minutes=5)) == datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    assert clock.now() == datetime(2026, 4, 1, tzinfo=UTC)


def test_manual_clock_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        ManualClock(datetime(2026, 3, 1))
    clock = ManualClock()
    with pytest.raises(ValueError):
        clock.set(datetime(2026, 3, 1))


def test_derived_id_is_the_hex_of_uuid5_over_the_joined_parts():
    import uuid

    for parts in [("a",), ("backtest", "bot:b:2020-01-01T00:00:00+00:00:order"), ("ü", "", "x/y")]:
        expected = uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)).hex
        assert derived_id("ord", *parts) == f"ord_{expected}"


@pytest.mark.parametrize("cls, text", [(Price, "64250.50"), (Quantity, "0"), (Money, "-1.25")])
def test_an_amount_of_its_own_type_is_handed_back_and_a_plain_decimal_is_wrapped(cls, text):
    amount = cls(Decimal(text))

    assert type(amount) is cls and str(amount) == text
    assert cls(amount) is amount
