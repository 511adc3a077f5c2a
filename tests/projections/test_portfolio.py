"""Portfolio figures of the scripted session (see conftest), computed by hand."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from projections_session import MARK_TS, Session, at

from projections import portfolio, queries
from projections.memory import InMemoryReadModel
from projections.portfolio import ACCOUNTS, ASSETS, CURVE, DAILY, PRICES, PortfolioProjection


def replay(s: Session, until: int) -> InMemoryReadModel:
    model = InMemoryReadModel.for_projections(PortfolioProjection)
    p = PortfolioProjection()
    for rec in s.events(until=until):
        p.apply(model, rec)
    return model


def test_account_figures_at_the_end_of_the_session(model: InMemoryReadModel) -> None:
    a = model.get(ACCOUNTS, "a1")
    assert a is not None
    assert a["mode"] == "paper"
    # cash 10000 - 2100 margin - 2.1 fee; ETH marked at 2200: unrealised (2200 - 2100) * 1 = 100
    assert a["cash"] == D("7897.9")
    assert a["reserved"] == 0 and a["available"] == D("7897.9")
    assert a["margin"] == D("2100")
    assert a["exposure"] == D("2200")
    assert a["unrealised_pnl"] == D("100")
    assert a["equity"] == D("10097.9")
    # realised 400 - 290 + 100; fees 8.4 + 7.49 + 4.9 + 2.1
    assert a["realised_pnl"] == D("210")
    assert a["fees"] == D("22.89")
    assert (a["deposits"], a["withdrawals"], a["net_deposits"]) == (D("10000"), D("189.21"), D("9810.79"))
    # total = equity - net deposits = 210 - 22.89 + 100; % of net deposits
    assert a["total_pnl"] == D("287.11")
    assert a["total_pnl_pct"] == D("2.9265")  # 287.11 / 9810.79 = 2.92647...%
    # day 2026-03-06 started at 10000: 9997.9 after the ETH fee, 10097.9 after the mark
    assert a["day"] == "2026-03-06"
    assert a["day_start_equity"] == D("10000")
    assert a["daily_pnl"] == D("97.9") and a["daily_pnl_pct"] == D("0.9790")
    assert (a["day_low"], a["day_high"]) == (D("9997.9"), D("10097.9"))
    assert a["open_positions"] == 1 and a["halted"] is False


def test_per_asset_breakdown_is_marked_to_the_last_price(model: InMemoryReadModel) -> None:
    assets = [r for _, r in model.find(ASSETS, account_id="a1")]
    assert len(assets) == 1
    eth = assets[0]
    assert eth["symbol"] == "ETH/USDT" and eth["side"] == "long"
    assert (eth["quantity"], eth["avg_price"], eth["current_price"]) == (D(1), D(2100), D(2200))
    assert eth["value"] == D(2200) and eth["margin"] == D(2100)
    assert eth["pnl"] == D(100)
    assert eth["pnl_pct"] == D("4.7619")  # 100 / 2100 margin = 4.76190...%
    assert model.get(PRICES, "ETH/USDT") == {"symbol": "ETH/USDT", "price": D(2200), "ts": MARK_TS, "source": "mark"}
    assert model.get(PRICES, "BTC/USDT")["price"] == D(48000)  # type: ignore[index]


def test_mid_session_figures_with_a_partially_filled_order_and_an_increased_position(session: Session) -> None:
    # Up to the second ETH fill (position 19): 2 ETH @ 1945, last fill 1940.
    m = replay(session, 19)
    a = m.get(ACCOUNTS, "a1")
    assert a is not None
    assert a["cash"] == D("6497.71")  # 10391.6 - (1950 + 1.95) - (1940 + 1.94)
    assert a["reserved"] == 0  # 3939.00 reserved, 1969.50 released by each fill
    assert a["margin"] == D("3890")
    assert a["unrealised_pnl"] == D("-10")  # (1940 - 1945) * 2
    assert a["equity"] == D("10377.71")
    assert a["daily_pnl"] == D("-13.89")  # 10377.71 - 10391.6
    assert a["daily_pnl_pct"] == D("-0.1337")  # -13.89 / 10391.6 = -0.13366...%
    eth = m.get(ASSETS, "a1|ETH/USDT")
    assert eth is not None
    assert (eth["quantity"], eth["avg_price"], eth["current_price"], eth["value"]) == (D(2), D(1945), D(1940), D(3880))
    # After the partial fill only (position 17): reserved half of 3939.00 is still held.
    m = replay(session, 17)
    a = m.get(ACCOUNTS, "a1")
    assert a["reserved"] == D("1969.50") and a["cash"] == D("8439.65")  # type: ignore[index]
    assert a["available"] == D("6470.15")  # type: ignore[index]


def test_equity_curve_has_one_point_per_equity_changing_event(model: InMemoryReadModel) -> None:
    points = sorted((r for _, r in model.find(CURVE, account_id="a1")), key=lambda r: r["position"])
    assert [(p["position"], p["equity"], p["cash"], p["flow"]) for p in points] == [
        (4, D("10000"), D("10000"), D("10000")),      # deposit
        (10, D("9996"), D("7996"), D(0)),             # BTC long opened: fee 4
        (14, D("10391.6"), D("10391.6"), D(0)),       # take-profit: +400 - 4.4
        (17, D("10389.65"), D("8439.65"), D(0)),      # ETH opened: fee 1.95
        (19, D("10377.71"), D("6497.71"), D(0)),      # increased: fee 1.94, unrealised -10
        (23, D("10094.11"), D("10094.11"), D(0)),     # stop-loss: -290 - 3.6
        (26, D("10091.61"), D("7591.61"), D(0)),      # BTC short opened: fee 2.5
        (29, D("10190.65"), D("8630.65"), D(0)),      # reduced: +40 - 0.96, unrealised +60 on 0.03
        (33, D("10189.21"), D("10189.21"), D(0)),     # closed: +60 - 1.44
        (37, D("10000"), D("10000"), D("-189.21")),   # withdrawal
        (40, D("9997.9"), D("7897.9"), D(0)),         # ETH opened: fee 2.1
    ]
    assert points[0]["ts"] == at(2, 9, 1)


def test_daily_equity_rows_and_returns(model: InMemoryReadModel) -> None:
    rows = {r["day"]: r for _, r in model.find(DAILY, account_id="a1")}
    assert sorted(rows) == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-06"]
    assert [(rows[d]["open_equity"], rows[d]["close_equity"], rows[d]["flows"]) for d in sorted(rows)] == [
        (D(0), D("10391.6"), D(10000)),
        (D("10391.6"), D("10094.11"), D(0)),
        (D("10094.11"), D("10000"), D("-189.21")),
        (D("10000"), D("10097.9"), D(0)),
    ]
    returns = portfolio.daily_returns(model, "a1", "2026-03-06")
    assert returns == {
        "2026-03-02": float(D("391.6") / D(10000)),
        "2026-03-03": float(D("-297.49") / D("10391.6")),
        "2026-03-04": float(D("95.1") / D("9904.9")),  # flows counted at the start of the day
        "2026-03-05": 0.0,
        "2026-03-06": float(D("97.9") / D(10000)),
    }


def test_mark_revalues_every_holder_and_ignores_stale_prices(session: Session) -> None:
    m = replay(session, session.phase1_end)
    portfolio.mark(m, "ETH/USDT", D(2000), at(6, 12))
    a = m.get(ACCOUNTS, "a1")
    assert a["equity"] == D("9897.9") and a["unrealised_pnl"] == D(-100)  # type: ignore[index]
    portfolio.mark(m, "ETH/USDT", D(2500), at(6, 11))  # older than the last mark: ignored
    assert m.get(ACCOUNTS, "a1")["equity"] == D("9897.9")  # type: ignore[index]
    assert m.get(DAILY, "a1:2026-03-06")["close_equity"] == D("9897.9")  # type: ignore[index]
    portfolio.mark(m, "ETH/USDT", D(2050), at(7, 1))  # next UTC day: the day rolls at the last equity
    a = m.get(ACCOUNTS, "a1")
    assert a is not None
    assert (a["day"], a["day_start_equity"], a["daily_pnl"]) == ("2026-03-07", D("9897.9"), D(50))


def test_portfolio_queries_by_account_and_by_mode(model: InMemoryReadModel) -> None:
    p = queries.portfolio(model, "a1")
    assert p is not None
    assert p["equity"] == D("10097.9") and [a["symbol"] for a in p["positions"]] == ["ETH/USDT"]
    assert "last_version" not in p
    paper = queries.portfolio_for_mode(model, "u1", "paper")
    assert paper["accounts"] == ["a1"]
    assert paper["total_value"] == D("10097.9") and paper["invested_value"] == D(2100)
    assert paper["performance"]["daily"] == pytest.approx(97.9 / 10000, rel=1e-12)
    live = queries.portfolio_for_mode(model, "u1", "live")
    assert live["accounts"] == ["a2"]
    assert (live["total_value"], live["available_balance"], live["total_pnl"]) == (D(5000), D(5000), D(0))
    assert live["positions"] == []


def test_query_revalues_positions_at_a_newer_price_from_another_source(session: Session) -> None:
    m = replay(session, session.phase1_end)
    m.put(PRICES, "ETH/USDT", {"symbol": "ETH/USDT", "price": D(2300), "ts": at(6, 12), "source": "fill"})
    p = queries.portfolio(m, "a1")
    assert p is not None
    assert p["positions"][0]["pnl"] == D(200) and p["unrealised_pnl"] == D(200)
    assert p["equity"] == D("10197.9") and p["total_pnl"] == D("387.11")
