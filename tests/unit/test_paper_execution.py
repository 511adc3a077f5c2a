"""Paper execution: a simulated venue following the log and answering with commands.

Fee 10 bps and slippage 5 bps unless a test says otherwise; expected prices and fees are
worked out by hand next to each assertion.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from factories import ACCOUNT_ID, BTC, ETH, T0, D, Harness

from adapters.paper import PaperExecution
from commands.messages import Deposit, OpenAccount, PlaceOrder
from domain.account import Account
from domain.account_events import OrderFilled, PositionClosed, PositionOpened
from domain.values import OrderType, PositionSide, Side

STREAM = f"account-{ACCOUNT_ID}"


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))
    harness.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10000")))
    return harness


def venue(h: Harness, fee_bps: str = "10", slippage_bps: str = "5") -> PaperExecution:
    paper = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(fee_bps),
                           slippage_bps=D(slippage_bps))
    paper.catch_up()
    return paper


def order(h: Harness, paper: PaperExecution, *, side: Side = Side.BUY, qty: str = "0.1",
          order_type: OrderType = OrderType.MARKET, **kw: object) -> dict:
    result = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=kw.pop("symbol", BTC), side=side,
                                     quantity=D(qty), order_type=order_type, **kw))
    assert result["status"] == "accepted", result
    paper.catch_up()
    return result


def fills(h: Harness) -> list[OrderFilled]:
    return h.of_type("OrderFilled")  # type: ignore[return-value]


def state(h: Harness) -> Account:
    return h.bus.repo.load_at(Account, ACCOUNT_ID, h.store.read_stream(STREAM))


# --- market orders ---------------------------------------------------------------------------------


def test_market_buy_fills_at_last_plus_slippage_and_pays_the_fee(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))

    placed = order(h, paper, qty="0.1")

    (filled,) = fills(h)
    assert filled.order_id == placed["order_id"]
    assert filled.quantity == D("0.1")
    assert filled.price == D("50025")  # 50000 * (1 + 5 / 10000)
    assert filled.fee == D("5.0025")  # 0.1 * 50025 * 10 / 10000
    acc = state(h)
    assert acc.s.positions[BTC].entry_price == D("50025")
    assert acc.s.cash == D("4992.4975")  # 10000 - 5002.5 margin - 5.0025 fee
    assert acc.s.reserved == D("0")


def test_market_sell_fills_at_last_minus_slippage(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))

    order(h, paper, side=Side.SELL, qty="0.1")

    (filled,) = fills(h)
    assert filled.price == D("49975")  # 50000 * (1 - 5 / 10000)
    assert filled.fee == D("4.9975")  # 0.1 * 49975 * 0.001
    assert state(h).s.positions[BTC].side is PositionSide.SHORT


def test_fill_is_sent_as_an_idempotent_record_fill_command(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))

    order(h, paper)

    rec = next(r for r in h.store.read_stream(STREAM) if r.type == "OrderFilled")
    assert rec.metadata["idempotency_key"] == f"paper:{rec.event.fill_id}"
    assert rec.metadata["user_id"] == "system"


def test_catching_up_twice_or_repeating_a_price_does_not_fill_twice(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper)

    paper.catch_up()
    paper.on_price(BTC, D("50000"))
    paper.process(h.store.read_all(0))

    assert len(fills(h)) == 1


# --- limit and stop orders ---------------------------------------------------------------------------


def test_limit_buy_waits_until_the_price_reaches_the_limit(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, order_type=OrderType.LIMIT, limit_price=D("49000"))

    paper.on_price(BTC, D("49500"))
    assert fills(h) == []
    paper.on_price(BTC, D("49001"))
    assert fills(h) == []
    paper.on_price(BTC, D("48900"))

    (filled,) = fills(h)
    assert filled.price == D("48900")  # the last price, better than the limit; no slippage
    assert filled.fee == D("4.89")  # 0.1 * 48900 * 0.001


def test_limit_buy_fills_at_exactly_the_limit(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, order_type=OrderType.LIMIT, limit_price=D("49000"))

    paper.on_price(BTC, D("49000"))

    (filled,) = fills(h)
    assert filled.price == D("49000")
    assert filled.fee == D("4.9")


def test_limit_sell_waits_until_the_price_rises_to_the_limit(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, side=Side.SELL, qty="0.05", order_type=OrderType.LIMIT,
          limit_price=D("51000"))

    paper.on_price(BTC, D("50999"))
    assert fills(h) == []
    paper.on_price(BTC, D("51200"))

    (filled,) = fills(h)
    assert filled.price == D("51200")


def test_stop_sell_triggers_when_the_price_falls_to_the_stop(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, qty="0.1")  # long 0.1 @ 50025
    order(h, paper, side=Side.SELL, qty="0.1", order_type=OrderType.STOP, stop_price=D("48000"),
          reduce_only=True)

    paper.on_price(BTC, D("48500"))
    assert len(fills(h)) == 1
    paper.on_price(BTC, D("47900"))

    stop_fill = fills(h)[-1]
    assert stop_fill.price == D("47876.05")  # 47900 * (1 - 0.0005)
    assert stop_fill.fee == D("4.787605")  # 0.1 * 47876.05 * 0.001
    (closed,) = h.of_type("PositionClosed")
    assert closed.realised_pnl == D("-214.895")  # (47876.05 - 50025) * 0.1
    assert closed.reason == "ORDER"
    assert state(h).s.positions == {}


def test_reduce_only_stop_still_flattens_a_position_that_shrank_meanwhile(h):
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10000")))  # 20000 in all
    paper = venue(h, fee_bps="0", slippage_bps="0")
    paper.on_price(BTC, D("50000"))
    order(h, paper, qty="0.2")  # long 0.2 @ 50000
    order(h, paper, side=Side.SELL, qty="0.2", order_type=OrderType.STOP, stop_price=D("45000"),
          reduce_only=True)  # the stop-loss protects the whole position
    order(h, paper, side=Side.SELL, qty="0.1")  # sell half at market: long 0.1 left
    assert state(h).s.positions[BTC].quantity == D("0.1")

    paper.on_price(BTC, D("44900"))  # the stop triggers

    (closed,) = h.of_type("PositionClosed")
    assert closed.quantity == D("0.1")
    assert closed.exit_price == D("44900")
    assert state(h).s.positions == {}


def test_stop_buy_triggers_when_the_price_rises_to_the_stop(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, qty="0.05", order_type=OrderType.STOP, stop_price=D("51000"))

    paper.on_price(BTC, D("50900"))
    assert fills(h) == []
    paper.on_price(BTC, D("51000"))

    (filled,) = fills(h)
    assert filled.price == D("51025.5")  # 51000 * 1.0005


# --- take-profit and stop-loss ---------------------------------------------------------------------


def _long_with_exits(h: Harness, paper: PaperExecution) -> str:
    paper.on_price(BTC, D("50000"))
    order(h, paper, qty="0.1", take_profit=D("52000"), stop_loss=D("48000"))  # entry 50025
    opened = h.of_type("PositionOpened")[-1]
    assert isinstance(opened, PositionOpened)
    assert (opened.take_profit, opened.stop_loss) == (D("52000"), D("48000"))
    return opened.position_id


def test_take_profit_hit_closes_the_position(h):
    paper = venue(h)
    pid = _long_with_exits(h, paper)

    paper.on_price(BTC, D("51999"))
    assert h.of_type("PositionClosing") == []
    paper.on_price(BTC, D("52000"))

    (closing,) = h.of_type("PositionClosing")
    assert (closing.position_id, closing.reason, closing.by) == (pid, "TAKE_PROFIT", "paper-venue")
    (closed,) = h.of_type("PositionClosed")
    assert isinstance(closed, PositionClosed)
    assert closed.reason == "TAKE_PROFIT"
    assert closed.exit_price == D("51974")  # 52000 * (1 - 0.0005)
    assert closed.realised_pnl == D("194.9")  # (51974 - 50025) * 0.1
    assert closed.fees == D("10.1999")  # 5.0025 opening + 5.1974 closing
    acc = state(h)
    assert acc.s.positions == {}
    assert acc.s.cash == D("10184.7001")  # 10000 + 194.9 - 10.1999


def test_stop_loss_hit_closes_the_position(h):
    paper = venue(h)
    _long_with_exits(h, paper)

    paper.on_price(BTC, D("48001"))
    assert h.of_type("PositionClosing") == []
    paper.on_price(BTC, D("47990"))

    (closed,) = h.of_type("PositionClosed")
    assert closed.reason == "STOP_LOSS"
    assert closed.exit_price == D("47966.005")  # 47990 * 0.9995
    assert closed.realised_pnl == D("-205.8995")  # (47966.005 - 50025) * 0.1


def test_take_profit_of_a_short_triggers_when_the_price_falls(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, side=Side.SELL, qty="0.1", take_profit=D("48000"), stop_loss=D("51000"))

    paper.on_price(BTC, D("48000"))

    (closed,) = h.of_type("PositionClosed")
    assert closed.reason == "TAKE_PROFIT"
    assert closed.exit_price == D("48024")  # buying back: 48000 * 1.0005
    assert closed.realised_pnl == D("195.1")  # (48024 - 49975) * 0.1 * -1


def test_exit_triggered_twice_closes_once(h):
    paper = venue(h)
    _long_with_exits(h, paper)

    paper.on_price(BTC, D("52000"))
    paper.on_price(BTC, D("53000"))
    paper.on_price(BTC, D("47000"))

    assert len(h.of_type("PositionClosing")) == 1
    assert len(h.of_type("PositionClosed")) == 1
    assert len(fills(h)) == 2


# --- expiry --------------------------------------------------------------------------------------------


def test_limit_order_expires_at_its_expiry_time(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    placed = order(h, paper, order_type=OrderType.LIMIT, limit_price=D("45000"),
                   expires_at=T0 + timedelta(minutes=10))

    h.clock.advance(timedelta(minutes=9))
    paper.on_price(BTC, D("49000"))
    assert h.of_type("OrderExpired") == []
    h.clock.advance(timedelta(minutes=1))
    paper.on_price(BTC, D("49000"))

    (expired,) = h.of_type("OrderExpired")
    assert expired.order_id == placed["order_id"]
    assert expired.released == D("4545")  # 0.1 * 45000 * 1.01
    assert state(h).s.reserved == D("0")
    assert fills(h) == []


def test_order_expiring_when_the_price_crosses_expires_rather_than_fills(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, order_type=OrderType.LIMIT, limit_price=D("45000"),
          expires_at=T0 + timedelta(minutes=10))

    h.clock.advance(timedelta(minutes=10))
    paper.on_price(BTC, D("44000"))

    assert len(h.of_type("OrderExpired")) == 1
    assert fills(h) == []


def test_prices_of_other_pairs_do_not_fill_an_order(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    order(h, paper, order_type=OrderType.LIMIT, limit_price=D("49000"))

    paper.on_price(ETH, D("100"))

    assert fills(h) == []


# --- a scripted session, then crash-only recovery -----------------------------------------------------


def _scripted_session(h: Harness, paper: PaperExecution) -> None:
    paper.on_price(BTC, D("50000"))
    order(h, paper, qty="0.05")  # market fill @ 50025
    order(h, paper, qty="0.01", order_type=OrderType.LIMIT, limit_price=D("49000"))
    paper.on_price(BTC, D("48900"))  # limit fills @ 48900
    paper.on_price(ETH, D("3000"))
    order(h, paper, symbol=ETH, qty="1", take_profit=D("3300"))  # long ETH @ 3001.5, TP open
    order(h, paper, qty="0.01", order_type=OrderType.LIMIT, limit_price=D("40000"))  # working
    order(h, paper, side=Side.SELL, qty="0.06", order_type=OrderType.STOP, stop_price=D("45000"),
          reduce_only=True)  # working stop on the whole BTC position


def test_scripted_session_then_recover_on_a_fresh_venue_does_not_fill_twice(h):
    paper = venue(h)
    _scripted_session(h, paper)
    assert len(fills(h)) == 3
    before = h.count()

    fresh = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    fresh.recover()

    assert len(fills(h)) == 3
    assert h.count() == before
    assert fresh.position == h.store.last_position()


def test_recovered_venue_goes_on_filling_working_orders_exactly_once(h):
    paper = venue(h)
    _scripted_session(h, paper)
    fresh = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    fresh.recover()

    fresh.on_price(BTC, D("39000"))  # the working limit buy fills, then the stop triggers

    new_fills = fills(h)[3:]
    assert [f.price for f in new_fills] == [D("39000"), D("38980.5")]  # 39000 * 0.9995
    assert [f.quantity for f in new_fills] == [D("0.01"), D("0.06")]
    paper.on_price(BTC, D("39000"))  # the old instance, if still alive, adds nothing
    assert len(fills(h)) == 5


def test_order_placed_while_the_venue_was_down_is_filled_once_on_recovery(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY, quantity=D("0.1")))
    # the venue crashed before it saw the order

    first = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    first.recover()
    second = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    second.recover()

    (filled,) = fills(h)
    assert filled.price == D("50025")


def test_take_profit_reached_while_the_venue_was_down_closes_once_on_recovery(h):
    paper = venue(h)
    _long_with_exits(h, paper)
    h.prices.update(BTC, D("53000"))  # price moved while the venue was down

    fresh = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    fresh.recover()
    fresh.catch_up()
    again = PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=D(10), slippage_bps=D(5))
    again.recover()
    again.catch_up()

    (closed,) = h.of_type("PositionClosed")
    assert closed.reason == "TAKE_PROFIT"
    assert closed.exit_price == D("52973.5")  # 53000 * 0.9995
    assert len(fills(h)) == 2


def test_negative_fee_or_slippage_is_refused(h):
    with pytest.raises(ValueError):
        PaperExecution(h.bus, h.store, h.prices, h.clock, fee_bps=Decimal(-1))
    with pytest.raises(ValueError):
        PaperExecution(h.bus, h.store, h.prices, h.clock, slippage_bps=Decimal(-1))


# --- what a price would act on (the runner skips the others in simulated time) ---------------------


def test_venue_watches_a_pair_while_a_working_order_could_fill(h):
    paper = venue(h)
    assert not paper.watches(BTC)  # nothing working, nothing open

    paper.on_price(BTC, D("50000"))
    order(h, paper, order_type=OrderType.LIMIT, limit_price=D("49000"))
    assert paper.watches(BTC)
    paper.on_price(BTC, D("49000"))

    assert len(fills(h)) == 1
    assert not paper.watches(BTC)  # a position without take-profit or stop-loss reacts to no price


def test_venue_watches_a_pair_while_a_position_exit_could_trigger(h):
    paper = venue(h)
    _long_with_exits(h, paper)
    assert paper.watches(BTC) and not paper.watches(ETH)

    paper.on_price(BTC, D("52000"))

    assert len(h.of_type("PositionClosed")) == 1
    assert not paper.watches(BTC)


def test_venue_watches_while_events_are_left_to_catch_up_on(h):
    paper = venue(h)
    paper.on_price(BTC, D("50000"))
    h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY, quantity=D("0.1")))
    assert paper.watches(BTC)  # the order is in the log, not yet seen by the venue
    paper.catch_up()
    assert fills(h) and not paper.watches(BTC)
