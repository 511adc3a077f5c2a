"""Notifications of the scripted session (see projections_session)."""

from __future__ import annotations

from decimal import Decimal as D

from projections_session import Session, at, run_session

from domain.alerts import NotificationRead
from domain.envelope import NewEvent
from projections import queries
from projections.memory import InMemoryReadModel
from projections.notifications import NOTIFICATIONS, NotificationsProjection


def by_type(model: InMemoryReadModel) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for _, n in model.find(NOTIFICATIONS, account_id="a1"):
        out.setdefault(n["type"], []).append(n)
    return out


def test_trading_and_system_notifications(session: Session, model: InMemoryReadModel) -> None:
    kinds = by_type(model)
    assert {k: len(v) for k, v in kinds.items()} == {
        "order_filled": 8, "position_closed": 3, "emergency_stop": 1, "order_rejected": 1, "trading_resumed": 1,
    }
    closed = {n["position_id"]: n for n in kinds["position_closed"]}
    eth = closed[session.ids["eth_long"]]
    assert (eth["pnl"], eth["severity"], eth["reason_code"], eth["ts"]) == (
        D("-297.49"), "warning", "STOP_LOSS", at(3, 14)
    )
    assert eth["message"] == "ETH/USDT long position closed (STOP_LOSS) at 1800: net P&L -297.490"
    assert closed[session.ids["btc_long"]]["pnl"] == D("391.6")
    stop = kinds["emergency_stop"][0]
    assert (stop["category"], stop["severity"], stop["message"]) == (
        "system", "critical", "Trading halted by u1: volatility"
    )
    assert all(n["owner_id"] == "u1" and n["mode"] == "paper" and n["read"] is False for v in kinds.values() for n in v)


def test_user_feed_merges_risk_alerts_newest_first(model: InMemoryReadModel) -> None:
    feed = queries.notifications(model, owner_id="u1")
    assert len(feed) == 17  # 14 notifications + 3 risk alerts
    assert [n["ts"] for n in feed] == sorted((n["ts"] for n in feed), reverse=True)
    assert feed[0]["category"] == "alert" and feed[0]["ts"] == at(6, 11)
    assert len(queries.notifications(model, owner_id="u1", category="system")) == 2
    assert len(queries.notifications(model, account_id="a1", category="trade", read=False)) == 12


def test_mark_read_is_an_event_and_survives_redelivery() -> None:
    session = run_session()
    model = InMemoryReadModel.for_projections(NotificationsProjection)
    proj = NotificationsProjection()
    events = session.events()
    for rec in events:
        proj.apply(model, rec)
    halted = next(r for r in events if r.type == "TradingHalted")
    nid = f"ntf-{halted.event_id}"
    read = session.store.append("account-a1", [
        NewEvent(event=NotificationRead(account_id="a1", notification_id=nid, by="u1", at=at(6, 13))),
    ], None)
    proj.apply(model, read[0])
    proj.apply(model, halted)  # re-delivery of the original event keeps the read flag
    n = model.get(NOTIFICATIONS, nid)
    assert n is not None and (n["read"], n["read_at"], n["read_by"]) == (True, at(6, 13), "u1")
    assert len(queries.notifications(model, account_id="a1", category="system", read=True)) == 1
