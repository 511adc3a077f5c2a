"""Bars from ticks: bucket boundaries, gaps, late / out-of-order / repeated ticks, the timer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from adapters.bars import BarBuilder, bucket_start
from adapters.marketdata import Bar

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)


def D(x: str | int) -> Decimal:
    return Decimal(x)


def feed(b: BarBuilder, ticks: list[tuple[timedelta, str]]) -> list[Bar]:
    out = []
    for dt, price in ticks:
        bar = b.on_tick(D(price), T0 + dt)
        if bar is not None:
            out.append(bar)
    return out


def test_bar_closes_when_a_tick_opens_the_next_bucket() -> None:
    b = BarBuilder("BTC/USDT", "1m")
    bars = feed(b, [(0 * S, "100"), (10 * S, "103"), (20 * S, "98"), (59 * S, "101"), (M, "102")])
    assert bars == [Bar(T0, D(100), D(103), D(98), D(101), D(4))]
    assert b.last_closed == T0


def test_tick_on_the_boundary_belongs_to_the_later_bucket() -> None:
    b = BarBuilder("BTC/USDT", "1m")
    assert feed(b, [(0 * S, "100"), (M - timedelta(microseconds=1), "101")]) == []
    (bar,) = feed(b, [(M, "200")])
    assert (bar.time, bar.close) == (T0, D(101))
    (bar,) = feed(b, [(2 * M, "300")])
    assert (bar.time, bar.open, bar.close, bar.volume) == (T0 + M, D(200), D(200), D(1))


def test_gap_closes_the_open_bar_and_invents_no_bars() -> None:
    b = BarBuilder("BTC/USDT", "1m")
    bars = feed(b, [(0 * S, "100"), (5 * M + 3 * S, "110"), (6 * M, "111")])
    assert [x.time for x in bars] == [T0, T0 + 5 * M]
    assert bars[1].open == bars[1].close == D(110)


def test_late_out_of_order_and_repeated_ticks_are_ignored() -> None:
    b = BarBuilder("BTC/USDT", "1m")
    feed(b, [(0 * S, "100"), (30 * S, "105")])
    assert feed(b, [(20 * S, "1"), (30 * S, "105")]) == []  # older than the last; a redelivery
    assert feed(b, [(30 * S, "104")]) == []  # same time, another price: a second trade, kept
    (bar,) = feed(b, [(M + 1 * S, "107")])
    assert bar == Bar(T0, D(100), D(105), D(100), D(104), D(3))
    assert feed(b, [(50 * S, "1")]) == []  # its bucket has closed
    assert b.ignored == 3
    (bar,) = feed(b, [(2 * M, "108")])
    assert (bar.time, bar.low, bar.volume) == (T0 + M, D(107), D(1))


def test_timer_closes_a_quiet_bar_after_the_grace_and_later_ticks_of_it_are_ignored() -> None:
    b = BarBuilder("ETH/USDT", "1m")
    feed(b, [(5 * S, "10")])
    assert b.close_due(T0 + M, grace=2 * S) is None
    bar = b.close_due(T0 + M + 2 * S, grace=2 * S)
    assert bar == Bar(T0, D(10), D(10), D(10), D(10), D(1))
    assert b.close_due(T0 + 10 * M) is None  # nothing open
    assert feed(b, [(59 * S, "11")]) == []
    assert feed(b, [(M + 30 * S, "12"), (2 * M, "13")])[0].time == T0 + M


def test_buckets_align_to_the_epoch_and_weeks_to_monday() -> None:
    ts = datetime(2026, 3, 4, 13, 47, 12, tzinfo=UTC)  # a Wednesday
    assert bucket_start(ts, timedelta(hours=4)) == datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    assert bucket_start(ts, timedelta(days=1)) == datetime(2026, 3, 4, tzinfo=UTC)
    assert bucket_start(ts, timedelta(weeks=1)) == datetime(2026, 3, 2, tzinfo=UTC)
    with pytest.raises(ValueError):
        bucket_start(ts.replace(tzinfo=None), timedelta(hours=1))


def test_rejects_prices_that_are_not_positive_decimals() -> None:
    b = BarBuilder("BTC/USDT", "1h")
    with pytest.raises(ValueError):
        b.on_tick(D(0), T0)
    with pytest.raises(ValueError):
        b.on_tick(1.5, T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.on_tick(D(1), datetime(9999, 12, 31, 23, 30, tzinfo=UTC))  # its bucket ends past the calendar
