"""Risk figures of the scripted session (see projections_session): limits, alerts, VaR, drawdowns."""

from __future__ import annotations

from decimal import Decimal as D

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from projections_session import at, build, run_session

from domain.alerts import NotificationRead, RiskAlertAcknowledged
from domain.envelope import NewEvent
from projections import queries
from projections.memory import InMemoryReadModel
from projections.registry import ALL_PROJECTIONS
from projections.risk import ACCOUNTS, ALERT_TYPES, ALERTS, levels, limit_usage

# Daily returns of a1, by hand from the daily equity (open, close, flows):
# 03-02 (0 + 10000 -> 10391.6), 03-03 (10391.6 -> 10094.11), 03-04 (10094.11 - 189.21 -> 10000),
# 03-05 no activity, 03-06 (10000 -> 10097.9 with the ETH mark)
DAILY = np.array([391.6 / 10000, -297.49 / 10391.6, 95.1 / 9904.9, 0.0, 97.9 / 10000])

# Equity curve points (equity, flow), as in test_portfolio.
CURVE = [
    (10000, 10000), (9996, 0), (10391.6, 0), (10389.65, 0), (10377.71, 0), (10094.11, 0),
    (10091.61, 0), (10190.65, 0), (10189.21, 0), (10000, -189.21), (9997.9, 0),
]


def reference_var_es(r: np.ndarray, c: float) -> tuple[float, float]:
    q = np.percentile(r, (1 - c) * 100)  # linear interpolation, as numpy's default
    return -q, -r[r <= q].mean()


def reference_drawdowns(points: list[tuple[float, float]]) -> tuple[float, float]:
    eq = np.array([p[0] for p in points])
    flow = np.array([p[1] for p in points])
    growth = eq[1:] / (eq[:-1] + flow[1:])  # flows at the start of each step
    index = np.concatenate(([1.0], np.cumprod(growth)))
    dd = 1 - index / np.maximum.accumulate(index)
    return dd.max(), dd[-1]


def test_limit_inputs_mirror_the_account_aggregate(model: InMemoryReadModel) -> None:
    a = model.get(ACCOUNTS, "a1")
    assert a is not None
    assert (a["cash"], a["margin"], a["unrealised_pnl"], a["exposure"]) == (D("7897.9"), D(2100), D(100), D(2200))
    assert (a["open_positions"], a["largest_margin"]) == (1, D(2100))
    # day 03-06 starts at book equity 10000; the ETH fee is its only loss
    assert (a["day"], a["day_start_equity"], a["day_pnl"]) == ("2026-03-06", D(10000), D("-2.1"))
    # high-water mark: 10391.6 after the take-profit, less the 189.21 withdrawn
    assert a["high_water_mark"] == D("10202.39")
    assert a["max_position_size_pct"] == D(20)


def test_limit_usage_in_percent(model: InMemoryReadModel) -> None:
    u = limit_usage(model.get(ACCOUNTS, "a1"))  # type: ignore[arg-type]
    # 2100 margin / 10097.9 equity = 20.7964%, of the 20% limit
    assert (u["POSITION_SIZE"]["value"], u["POSITION_SIZE"]["usage_pct"], u["POSITION_SIZE"]["level"]) == (
        D("20.7964"), D("103.9820"), 2)
    assert (u["OPEN_POSITIONS"]["value"], u["OPEN_POSITIONS"]["usage_pct"]) == (D(1), D(20))
    assert (u["DAILY_LOSS"]["value"], u["DAILY_LOSS"]["usage_pct"]) == (D("0.0210"), D("0.7000"))  # 2.1 / 10000
    # (10202.39 - 10097.9) / 10202.39 = 1.0242%, of 15%
    assert (u["DRAWDOWN"]["value"], u["DRAWDOWN"]["usage_pct"]) == (D("1.0242"), D("6.8278"))
    # exposure 2200 / 10097.9 = 0.2179x, of 3x
    assert (u["LEVERAGE"]["value"], u["LEVERAGE"]["usage_pct"]) == (D("0.2179"), D("7.2622"))


def test_alerts_raised_when_usage_rises_to_near_or_breached(model: InMemoryReadModel) -> None:
    alerts = sorted((r for _, r in model.find(ALERTS, account_id="a1")), key=lambda r: r["ts"])
    assert [(a["type"], a["severity"], a["level"], a["ts"]) for a in alerts] == [
        ("POSITION_SIZE", "high", "near", at(3, 9, 20)),       # ETH increased: 3890 / 10377.71 of 45%
        ("DAILY_LOSS", "high", "near", at(3, 14)),             # stop-loss: 297.49 / 10391.6 of 3%
        ("POSITION_SIZE", "critical", "breached", at(6, 11)),  # limit lowered to 20%
    ]
    assert [(a["value"], a["usage_pct"]) for a in alerts] == [
        (D("37.4842"), D("83.2982")), (D("2.8628"), D("95.4264")), (D("20.7964"), D("103.9820")),
    ]
    assert alerts[1]["message"] == (
        "Near limit: daily loss (% of day-start equity) 2.8628%, 95.4264% of the 3% limit"
    )
    assert all(a["acknowledged"] is False and a["read"] is False for a in alerts)


def test_var_expected_shortfall_and_drawdowns_match_a_numpy_reference(model: InMemoryReadModel) -> None:
    r = queries.risk(model, "a1", as_of=at(6, 23))
    assert r is not None
    assert r["returns_observed"] == 5
    for c, var, es in [(0.95, "var_95", "expected_shortfall_95"), (0.99, "var_99", "expected_shortfall_99")]:
        ref_var, ref_es = reference_var_es(DAILY, c)
        assert r[var] == pytest.approx(ref_var, rel=1e-12, abs=1e-15)
        assert r[es] == pytest.approx(ref_es, rel=1e-12)
    ref_max, ref_cur = reference_drawdowns(CURVE)
    assert r["max_drawdown"] == pytest.approx(ref_max, rel=1e-12)
    assert r["current_drawdown"] == pytest.approx(ref_cur, rel=1e-12)
    # worst step: 1.03916 at the take-profit down to 1.009161 after the short's fee
    assert r["max_drawdown"] == pytest.approx(1 - 10091.61 / 10391.6, rel=1e-12)
    assert r["var_95_amount"] == (D(repr(r["var_95"])) * D("10097.9")).quantize(D("0.01"))
    assert r["exposure"] == D(2200) and r["leverage"] == D("0.2179")
    assert len(r["active_alerts"]) == 3


def test_acknowledging_and_reading_an_alert_are_events() -> None:
    s = run_session()
    model = build(s)
    daily = next(a for _, a in model.find(ALERTS, account_id="a1", type="DAILY_LOSS"))
    size = next(a for _, a in model.find(ALERTS, account_id="a1", severity="critical"))
    last = s.store.last_position()
    s.store.append("account-a1", [
        NewEvent(event=RiskAlertAcknowledged(account_id="a1", alert_id=daily["id"], by="u1", at=at(6, 12))),
        NewEvent(event=NotificationRead(account_id="a1", notification_id=size["id"], by="u1", at=at(6, 12, 5))),
    ], None)
    projections = [cls() for cls in ALL_PROJECTIONS]
    for _ in range(2):  # the second pass is a re-delivery
        for rec in s.events(after=last):
            for p in projections:
                if rec.type in p.handles:
                    p.apply(model, rec)
    acked = model.get(ALERTS, daily["id"])
    assert acked is not None
    assert (acked["acknowledged"], acked["acknowledged_at"], acked["acknowledged_by"]) == (True, at(6, 12), "u1")
    read = model.get(ALERTS, size["id"])
    assert read is not None and (read["read"], read["read_at"], read["acknowledged"]) == (True, at(6, 12, 5), False)
    assert queries.risk_alerts(model, "a1", acknowledged=False).total == 2
    unread_alerts = queries.notifications(model, owner_id="u1", category="alert", read=False)
    assert [n["type"] for n in unread_alerts] == ["DAILY_LOSS", "POSITION_SIZE"]  # newest first


money = st.decimals(min_value=-1000, max_value=100000, places=2, allow_nan=False, allow_infinity=False)
pct_limit = st.decimals(min_value=0, max_value=100, places=1, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(cash=money, margin=money.map(abs), upnl=money, exposure=money.map(abs), largest=money.map(abs),
       day_pnl=money, day_start=money, hwm=money, count=st.integers(0, 30), max_count=st.integers(0, 30),
       size=pct_limit, loss=pct_limit, dd=pct_limit,
       lev=st.decimals(min_value=1, max_value=10, places=1, allow_nan=False, allow_infinity=False))
def test_fast_alert_levels_agree_with_the_displayed_usage(
    cash: D, margin: D, upnl: D, exposure: D, largest: D, day_pnl: D, day_start: D, hwm: D,
    count: int, max_count: int, size: D, loss: D, dd: D, lev: D,
) -> None:
    a = {
        "cash": cash, "margin": margin, "unrealised_pnl": upnl, "exposure": exposure, "largest_margin": largest,
        "open_positions": count, "day": "2026-03-06", "day_pnl": day_pnl, "day_start_equity": day_start,
        "high_water_mark": hwm, "max_position_size_pct": size, "max_open_positions": max_count,
        "max_daily_loss_pct": loss, "max_drawdown_pct": dd, "max_leverage": lev,
    }
    usage = limit_usage(a)
    assert levels(a) == tuple(usage[t]["level"] for t in ALERT_TYPES)
