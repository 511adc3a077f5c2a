"""Positions of the scripted session (see projections_session), computed by hand."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

from projections_session import Session, apply_all, at, bare_system

from commands.messages import CancelOrder, ClosePosition, Deposit, OpenAccount, PlaceOrder, RecordFill
from projections import queries
from projections.memory import InMemoryReadModel
from projections.positions import POSITIONS, PositionsProjection
from projections.registry import ALL_PROJECTIONS


def replay(s: Session, until: int | None = None) -> InMemoryReadModel:
    model = InMemoryReadModel.for_projections(PositionsProjection)
    p = PositionsProjection()
    for rec in s.events(until=until):
        p.apply(model, rec)
    return model


def test_take_profit_position(session: Session, model: InMemoryReadModel) -> None:
    p = model.get(POSITIONS, session.ids["btc_long"])
    assert p is not None
    assert (p["account_id"], p["mode"], p["bot_id"], p["symbol"], p["side"]) == (
        "a1", "paper", "b1", "BTC/USDT", "long"
    )
    assert (p["entry_price"], p["quantity"], p["leverage"]) == (D(40000), D("0.1"), D(2))
    assert p["stake"] == D(2000)  # 0.1 * 40000 / 2
    assert (p["tp_price"], p["sl_price"]) == (D(44000), D(38000))
    assert (p["status"], p["close_reason"]) == ("CLOSED", "TAKE_PROFIT")
    assert (p["opened_at"], p["closed_at"]) == (at(2, 9, 5), at(2, 10))
    assert p["exit_price"] == D(44000)
    assert (p["realised_pnl"], p["fees"], p["unrealised_pnl"]) == (D(400), D("8.4"), D(0))
    assert p["pnl"] == D("391.6") and p["pnl_pct"] == D("19.58")  # 391.6 / 2000
    assert p["margin"] == 0


def test_stop_loss_position_built_from_two_partial_fills(session: Session, model: InMemoryReadModel) -> None:
    p = model.get(POSITIONS, session.ids["eth_long"])
    assert p is not None
    assert p["bot_id"] is None
    assert (p["entry_price"], p["quantity"], p["stake"]) == (D(1945), D(2), D(3890))  # 1 @ 1950 + 1 @ 1940
    assert (p["tp_price"], p["sl_price"]) == (None, D(1800))
    assert (p["status"], p["close_reason"], p["exit_price"]) == ("CLOSED", "STOP_LOSS", D(1800))
    # (1800 - 1945) * 2 = -290; fees 1.95 + 1.94 + 3.6
    assert (p["realised_pnl"], p["fees"], p["pnl"]) == (D(-290), D("7.49"), D("-297.49"))
    assert p["pnl_pct"] == D("-7.6476")  # -297.49 / 3890 = -7.647557...%


def test_manually_closed_short_after_a_partial_reduction(session: Session, model: InMemoryReadModel) -> None:
    p = model.get(POSITIONS, session.ids["btc_short"])
    assert p is not None
    assert (p["side"], p["entry_price"], p["stake"], p["leverage"]) == ("short", D(50000), D(2500), D(1))
    assert (p["status"], p["close_reason"], p["closing_by"]) == ("CLOSED", "MANUAL", "u1")
    # 0.02 and then 0.03 bought back at 48000: (50000 - 48000) * 0.05 = 100; fees 2.5 + 0.96 + 1.44
    assert (p["exit_quantity"], p["exit_price"]) == (D("0.05"), D(48000))
    assert (p["realised_pnl"], p["fees"], p["pnl"], p["pnl_pct"]) == (D(100), D("4.9"), D("95.1"), D("3.804"))


def test_position_is_closing_while_its_close_order_works(session: Session) -> None:
    m = replay(session, 30)  # PositionClosing of the short, before the close fill
    p = m.get(POSITIONS, session.ids["btc_short"])
    assert p is not None
    assert (p["status"], p["close_reason"], p["closing_at"]) == ("CLOSING", "MANUAL", at(4, 11))
    assert p["quantity"] == D("0.03") and p["margin"] == D(1500)
    # after the reduction at 48000: realised 40, unrealised (50000 - 48000) * 0.03 = 60, fees 3.46
    assert (p["realised_pnl"], p["unrealised_pnl"], p["fees"]) == (D(40), D(60), D("3.46"))
    assert p["pnl"] == D("96.54")


def test_open_position_and_filtered_queries(session: Session, model: InMemoryReadModel) -> None:
    p = model.get(POSITIONS, session.ids["eth2"])
    assert p is not None
    assert (p["status"], p["tp_price"], p["unrealised_pnl"], p["pnl"]) == ("OPEN", D(2500), D(0), D("-2.1"))
    page = queries.positions(model, account_id="a1", status="OPEN")
    assert page.total == 1
    eth = page.items[0]
    # revalued at the ETH mark of 2200: unrealised 100, net 97.9 on a 2100 stake
    assert (eth["last_price"], eth["unrealised_pnl"], eth["pnl"], eth["pnl_pct"]) == (
        D(2200), D(100), D("97.9"), D("4.6619")
    )
    assert queries.positions(model, bot_id="b1").total == 2
    assert queries.positions(model, mode="live").total == 0
    closed = queries.positions(model, account_id="a1", status="CLOSED")
    assert [r["position_id"] for r in closed.items] == [
        session.ids["btc_short"], session.ids["eth_long"], session.ids["btc_long"],  # newest first
    ]


def test_a_cancelled_close_order_leaves_the_position_open_again() -> None:
    bus, store, clock, prices = bare_system()
    bus.handle(OpenAccount(account_id="a9", owner_id="u9"))
    bus.handle(Deposit(account_id="a9", amount=D(10000)))
    prices.update("BTC/USDT", D(40000))
    order = bus.handle(PlaceOrder(account_id="a9", symbol="BTC/USDT", side="buy", quantity=D("0.1")))["order_id"]
    bus.handle(RecordFill(account_id="a9", order_id=order, fill_id="f1", quantity=D("0.1"), price=D(40000)))
    pos = next(r.event.position_id for r in store.read_all(0, 100) if r.type == "PositionOpened")  # type: ignore[attr-defined]
    closing = bus.handle(ClosePosition(account_id="a9", position_id=pos))
    model = InMemoryReadModel.for_projections(*ALL_PROJECTIONS)
    apply_all(model, store.read_all(0, 100))
    assert model.get(POSITIONS, pos)["status"] == "CLOSING"  # type: ignore[index]
    last = store.last_position()
    clock.advance(timedelta(minutes=1))
    bus.handle(CancelOrder(account_id="a9", order_id=closing["close_order_id"]))
    apply_all(model, store.read_all(last, 100))
    p = model.get(POSITIONS, pos)
    assert p is not None
    assert (p["status"], p["close_reason"], p["close_order_id"]) == ("OPEN", None, None)
