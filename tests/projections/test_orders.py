"""Orders and trades of the scripted session (see projections_session), computed by hand."""

from __future__ import annotations

from decimal import Decimal as D

from projections_session import Session, at

from projections import queries
from projections.memory import InMemoryReadModel
from projections.orders import ORDERS, TRADES, OrdersProjection


def test_partially_filled_then_filled_limit_order(session: Session, model: InMemoryReadModel) -> None:
    partial = InMemoryReadModel.for_projections(OrdersProjection)
    proj = OrdersProjection()
    for rec in session.events(until=16):  # the first ETH fill
        proj.apply(partial, rec)
    o = partial.get(ORDERS, session.ids["eth_order"])
    assert o is not None
    assert (o["status"], o["filled_quantity"], o["remaining_quantity"], o["avg_price"]) == (
        "partially_filled", D(1), D(1), D(1950))
    o = model.get(ORDERS, session.ids["eth_order"])
    assert o is not None
    assert (o["type"], o["side"], o["symbol"], o["mode"], o["bot_id"]) == ("limit", "buy", "ETH/USDT", "paper", None)
    assert (o["quantity"], o["limit_price"], o["stop_loss"], o["reserved"]) == (D(2), D(1950), D(1800), D("3939.00"))
    assert (o["status"], o["filled_quantity"], o["remaining_quantity"], o["fills"]) == ("filled", D(2), D(0), 2)
    assert o["avg_price"] == D(1945)  # (1950 + 1940) / 2
    assert o["fees"] == D("3.89")
    assert (o["created_at"], o["closed_at"]) == (at(3, 9), at(3, 9, 20))


def test_rejected_and_cancelled_orders_keep_their_reasons(session: Session, model: InMemoryReadModel) -> None:
    r = model.get(ORDERS, session.ids["rejected_order"])
    assert r is not None
    assert (r["status"], r["reason_code"], r["reason"]) == (
        "rejected", "TRADING_HALTED", "trading halted by u1: volatility"
    )
    assert r["created_at"] == at(4, 12, 5)
    c = model.get(ORDERS, session.ids["cancel_order"])
    assert c is not None
    assert (c["status"], c["reason"], c["reserved"], c["closed_at"]) == (
        "cancelled", "USER_REQUEST", D("606.0000"), at(6, 9, 40)
    )
    assert queries.orders(model, account_id="a1").total == 10
    assert queries.orders(model, status="rejected").total == 1
    assert queries.orders(model, bot_id="b1").total == 5  # buy, TP close, short, reduce, manual close


def test_trades_carry_realised_pnl_of_the_fills_that_reduced_or_closed(
    session: Session, model: InMemoryReadModel
) -> None:
    rows = {t["order_id"]: t for _, t in model.find(TRADES, account_id="a1") if t["realised_pnl"] is not None}
    assert sorted(rows[o]["realised_pnl"] for o in rows) == [D(-290), D(40), D(60), D(400)]
    reduce = rows[session.ids["btc_reduce_order"]]
    assert (reduce["side"], reduce["quantity"], reduce["price"], reduce["fee"]) == (
        "buy", D("0.02"), D(48000), D("0.96")
    )
    assert (reduce["notional"], reduce["position_id"], reduce["bot_id"]) == (D(960), session.ids["btc_short"], "b1")
    f1 = model.get(TRADES, "f-eth-1")
    assert f1 is not None
    assert (f1["quantity"], f1["price"], f1["fee"], f1["realised_pnl"], f1["ts"]) == (
        D(1), D(1950), D("1.95"), None, at(3, 9, 10)
    )


def test_trade_filters_time_range_and_paging(model: InMemoryReadModel) -> None:
    assert queries.trades(model, account_id="a1").total == 9
    assert queries.trades(model, bot_id="b1").total == 5
    assert queries.trades(model, mode="paper").total == 9 and queries.trades(model, mode="live").total == 0
    assert queries.trades(model, symbol="ETH/USDT").total == 4
    assert queries.trades(model, side="sell").total == 3
    day3 = queries.trades(model, start=at(4, 0), end=at(4, 23, 59))
    assert [t["ts"] for t in day3.items] == [at(4, 11), at(4, 10), at(4, 9)]
    page = queries.trades(model, account_id="a1", limit=2, offset=1)
    assert page.total == 9 and [t["ts"] for t in page.items] == [at(4, 11), at(4, 10)]
