"""Portfolio read model: cash, equity, exposure and P&L per account, per asset, over time.

Tables:
- ``portfolio_accounts`` (key ``account_id``): money figures of one account, as of its
  last event or mark.
- ``portfolio_assets`` (key ``account_id|symbol``): one row per open position.
- ``portfolio_prices`` (key ``symbol``): last known price (last fill seen, or a mark).
- ``portfolio_equity_curve`` (key ``account_id:position``): one point per event that
  changes equity (deposits, withdrawals, position opened/increased/reduced/closed).
- ``portfolio_equity_daily`` (key ``account_id:YYYY-MM-DD``): per UTC day, equity at the
  start (``open_equity``, the previous close) and end (``close_equity``), high, low and net
  external flows (deposits - withdrawals). Risk and performance derive returns from it.

Conventions: equity = cash + margin + unrealised P&L. A position is valued at the price of
its own account's latest fill in that symbol, or a later ``mark``; an asset's ``pnl_pct``
is its unrealised P&L in percent of its margin (the price move times the leverage). Daily P&L = equity -
day-start equity - the day's net flows; its percentage is of (day-start equity + flows).
Total P&L = equity - net deposits (= realised - fees + unrealised); its percentage is of net
deposits. A day is the UTC date of the event's ``at`` (or of the mark's ``ts``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from domain import account_events as ae
from domain.envelope import RecordedEvent
from projections import _ledger as L
from projections.base import Projection, Query, ReadModel, Row, TableSpec

ACCOUNTS = "portfolio_accounts"
ASSETS = "portfolio_assets"
PRICES = "portfolio_prices"
CURVE = "portfolio_equity_curve"
DAILY = "portfolio_equity_daily"

ZERO = L.ZERO


def _refresh(a: Row, at: datetime) -> Decimal:
    """Recompute the derived figures of account row ``a``; returns its equity."""
    eq: Decimal = a["cash"] + a["margin"] + a["unrealised_pnl"]
    a["equity"] = eq
    a["available"] = a["cash"] - a["reserved"]
    total = eq - a["net_deposits"]
    a["total_pnl"] = total
    a["total_pnl_pct"] = L.pct(total, a["net_deposits"])
    base = a["day_start_equity"] + a["day_flows"]
    daily = eq - base
    a["daily_pnl"] = daily
    a["daily_pnl_pct"] = L.pct(daily, base)
    if eq > a["day_high"]:
        a["day_high"] = eq
    if eq < a["day_low"]:
        a["day_low"] = eq
    a["updated_at"] = at
    return eq


def _roll_day(a: Row, at: datetime) -> None:
    day = L.utc_day(at)
    if day != a["day"]:
        eq = a["equity"]
        a["day"] = day
        a["day_start_equity"] = eq
        a["day_flows"] = ZERO
        a["day_high"] = eq
        a["day_low"] = eq


def _daily_row(a: Row) -> Row:
    return {
        "account_id": a["account_id"],
        "day": a["day"],
        "open_equity": a["day_start_equity"],
        "close_equity": a["equity"],
        "high": a["day_high"],
        "low": a["day_low"],
        "flows": a["day_flows"],
        "ts": a["updated_at"],
    }


def _asset_pct(p: Row) -> None:
    p["pnl_pct"] = L.pct(p["pnl"], p["margin"])


def _set_price(model: ReadModel, symbol: str, price: Decimal, ts: datetime, source: str) -> None:
    cur = model.get(PRICES, symbol)
    if cur is None or cur["ts"] <= ts:
        model.put(PRICES, symbol, {"symbol": symbol, "price": price, "ts": ts, "source": source})


def mark(model: ReadModel, symbol: str, price: Decimal, ts: datetime) -> None:
    """Record a market price and revalue every open position in ``symbol`` at it.

    Called by the market-data consumer. Marks are not events: they move current figures
    and the daily close, not the equity curve, and a rebuild forgets them until the next.
    """
    sym = str(symbol)
    cur = model.get(PRICES, sym)
    if cur is not None and cur["ts"] > ts:
        return
    model.put(PRICES, sym, {"symbol": sym, "price": price, "ts": ts, "source": "mark"})
    for key, p in model.find(ASSETS, symbol=sym):
        a = model.get(ACCOUNTS, p["account_id"])
        if a is None:
            continue
        _roll_day(a, ts)
        L.mark_position(a, p, price, ts)
        _asset_pct(p)
        _refresh(a, ts)
        model.put(ASSETS, key, p)
        model.put(DAILY, f"{a['account_id']}:{a['day']}", _daily_row(a))
        model.put(ACCOUNTS, a["account_id"], a)


class PortfolioProjection(Projection):
    name = "portfolio"
    version = 1
    tables = (
        TableSpec(ACCOUNTS, indexes=("owner_id", "mode")),
        TableSpec(ASSETS, indexes=("account_id", "symbol"), order_by="symbol", descending=False),
        TableSpec(PRICES),
        TableSpec(CURVE, indexes=("account_id",), order_by="position", descending=False),
        TableSpec(DAILY, indexes=("account_id",), order_by="day", descending=False),
    )
    _ON: ClassVar[dict[str, str]] = {
        "FundsDeposited": "_deposited",
        "FundsWithdrawn": "_withdrawn",
        "OrderAccepted": "_accepted",
        "OrderPartiallyFilled": "_filled",
        "OrderFilled": "_filled",
        "OrderCancelled": "_released",
        "OrderExpired": "_released",
        "PositionOpened": "_pos_opened",
        "PositionIncreased": "_pos_increased",
        "PositionReduced": "_pos_reduced",
        "PositionClosed": "_pos_closed",
        "TradingHalted": "_halted",
        "TradingResumed": "_resumed",
    }
    handles = frozenset(_ON) | {"AccountOpened"}

    def __init__(self) -> None:
        self._on: dict[str, Callable[[ReadModel, RecordedEvent, Any, Row], None]] = {
            t: getattr(self, m) for t, m in self._ON.items()
        }

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        t = rec.type
        if t == "AccountOpened":
            self._opened(model, rec, rec.event)  # type: ignore[arg-type]
            return
        fn = self._on.get(t)
        if fn is None:
            return
        e: Any = rec.event
        a = model.get(ACCOUNTS, e.account_id)
        # Rows of one account change only through its own stream: a version at or below
        # the last one applied is a re-delivery.
        if a is None or rec.version <= a["last_version"]:
            return
        a["last_version"] = rec.version
        fn(model, rec, e, a)

    # --- handlers --------------------------------------------------------------------

    def _opened(self, model: ReadModel, rec: RecordedEvent, e: ae.AccountOpened) -> None:
        if model.get(ACCOUNTS, e.account_id) is not None:
            return
        model.put(ACCOUNTS, e.account_id, {
            "account_id": e.account_id, "owner_id": e.owner_id, "mode": str(e.mode),
            "currency": e.currency, "cash": ZERO, "reserved": ZERO, "available": ZERO,
            "margin": ZERO, "exposure": ZERO, "unrealised_pnl": ZERO, "equity": ZERO,
            "realised_pnl": ZERO, "fees": ZERO, "deposits": ZERO, "withdrawals": ZERO,
            "net_deposits": ZERO, "total_pnl": ZERO, "total_pnl_pct": None,
            "day": L.utc_day(e.at), "day_start_equity": ZERO, "day_flows": ZERO,
            "day_high": ZERO, "day_low": ZERO, "daily_pnl": ZERO, "daily_pnl_pct": None,
            "open_positions": 0, "halted": False, "opened_at": e.at, "updated_at": e.at,
            "last_version": rec.version,
        })

    def _record(self, model: ReadModel, rec: RecordedEvent, a: Row, at: datetime, flow: Decimal) -> None:
        eq = _refresh(a, at)
        acc = a["account_id"]
        model.put(CURVE, f"{acc}:{rec.position:012d}", {
            "account_id": acc, "position": rec.position, "ts": at, "equity": eq,
            "cash": a["cash"], "flow": flow,
        })
        model.put(DAILY, f"{acc}:{a['day']}", _daily_row(a))
        model.put(ACCOUNTS, acc, a)

    def _deposited(self, model: ReadModel, rec: RecordedEvent, e: ae.FundsDeposited, a: Row) -> None:
        _roll_day(a, e.at)
        amount = e.amount
        a["cash"] += amount
        a["deposits"] += amount
        a["net_deposits"] += amount
        a["day_flows"] += amount
        self._record(model, rec, a, e.at, amount)

    def _withdrawn(self, model: ReadModel, rec: RecordedEvent, e: ae.FundsWithdrawn, a: Row) -> None:
        _roll_day(a, e.at)
        amount = e.amount
        a["cash"] -= amount
        a["withdrawals"] += amount
        a["net_deposits"] -= amount
        a["day_flows"] -= amount
        self._record(model, rec, a, e.at, -amount)

    def _accepted(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderAccepted, a: Row) -> None:
        a["reserved"] += e.reserved
        a["available"] = a["cash"] - a["reserved"]
        model.put(ACCOUNTS, a["account_id"], a)

    def _filled(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderFilled, a: Row) -> None:
        a["reserved"] -= e.released
        a["available"] = a["cash"] - a["reserved"]
        model.put(ACCOUNTS, a["account_id"], a)
        _set_price(model, str(e.symbol), e.price, e.at, "fill")

    def _released(self, model: ReadModel, rec: RecordedEvent, e: ae.OrderCancelled, a: Row) -> None:
        a["reserved"] -= e.released
        a["available"] = a["cash"] - a["reserved"]
        model.put(ACCOUNTS, a["account_id"], a)

    def _pos_opened(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionOpened, a: Row) -> None:
        _roll_day(a, e.at)
        p = L.open_position(a, e)
        p["mode"] = a["mode"]
        p["pnl_pct"] = ZERO
        a["fees"] += e.fee
        model.put(ASSETS, L.position_key(e.account_id, p["symbol"]), p)
        self._record(model, rec, a, e.at, ZERO)

    def _pos_increased(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionIncreased, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(ASSETS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.increase_position(a, p, e)
        _asset_pct(p)
        a["fees"] += e.fee
        model.put(ASSETS, key, p)
        self._record(model, rec, a, e.at, ZERO)

    def _pos_reduced(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionReduced, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(ASSETS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.reduce_position(a, p, e)
        _asset_pct(p)
        a["fees"] += e.fee
        a["realised_pnl"] += e.realised_pnl
        model.put(ASSETS, key, p)
        self._record(model, rec, a, e.at, ZERO)

    def _pos_closed(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionClosed, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(ASSETS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.close_position(a, p, e)
        a["fees"] += e.fee
        a["realised_pnl"] += e.realised_pnl
        model.delete(ASSETS, key)
        self._record(model, rec, a, e.at, ZERO)

    def _halted(self, model: ReadModel, rec: RecordedEvent, e: ae.TradingHalted, a: Row) -> None:
        a["halted"] = True
        model.put(ACCOUNTS, a["account_id"], a)

    def _resumed(self, model: ReadModel, rec: RecordedEvent, e: ae.TradingResumed, a: Row) -> None:
        a["halted"] = False
        model.put(ACCOUNTS, a["account_id"], a)


def daily_returns(model: Any, account_id: str, last_day: str | None = None) -> dict[str, float]:
    """UTC-daily returns of an account's equity up to ``last_day`` (default: its last row).

    r(d) = (close - open - flows) / (open + flows): external flows count as made at the
    start of the day. A day without a row has return 0; days before the account first
    has positive capital are left out. ``model`` needs ``query`` over this projection.
    """
    page = model.query(Query(table=DAILY, equals={"account_id": account_id}, limit=1_000_000_000))
    rows = sorted(page.items, key=lambda r: r["day"])
    if not rows:
        return {}
    by_day = {r["day"]: r for r in rows}
    day = date.fromisoformat(rows[0]["day"])
    end = date.fromisoformat(last_day or rows[-1]["day"])
    out: dict[str, float] = {}
    while day <= end:
        key = day.isoformat()
        r = by_day.get(key)
        if r is None:
            if out:
                out[key] = 0.0
        else:
            base = r["open_equity"] + r["flows"]
            if base > 0:
                out[key] = float((r["close_equity"] - base) / base)
        day += timedelta(days=1)
    return out
