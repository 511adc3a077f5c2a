"""Read-side queries the API serves, over any reader with ``get`` and ``query``.

A reader is a read store (every table of every projection) or an ``InMemoryReadModel``.
Rows come back as copies without bookkeeping fields. Open positions are revalued at the
latest known price (``portfolio_prices``) when it is newer than the row.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from projections import bots as _bots
from projections import notifications as _ntf
from projections import orders as _orders
from projections import portfolio as _pf
from projections import positions as _pos
from projections import risk as _risk
from projections._ledger import ZERO, pct, utc_day
from projections.base import Page, Query, Row
from projections.performance import performance_summary

_ALL = 1_000_000_000
_PRIVATE = ("last_version", "bot_version", "dir")


class Reader(Protocol):
    def get(self, table: str, key: str) -> Row | None: ...

    def query(self, query: Query) -> Page: ...


def _public(row: Row) -> Row:
    out = dict(row)
    for f in _PRIVATE:
        out.pop(f, None)
    return out


def _page(model: Reader, table: str, equals: dict[str, Any], *, range_field: str | None = None,
          start: Any = None, end: Any = None, limit: int = 100, offset: int = 0) -> Page:
    q = Query(
        table=table, equals={k: v for k, v in equals.items() if v is not None},
        range_field=range_field if start is not None or end is not None else None,
        range_from=start, range_to=end, limit=limit, offset=offset,
    )
    page = model.query(q)
    return Page(items=[_public(r) for r in page.items], total=page.total, limit=page.limit, offset=page.offset)


def _all(model: Reader, table: str, **equals: Any) -> list[Row]:
    return _page(model, table, equals, limit=_ALL).items


def latest_price(model: Reader, symbol: str) -> Row | None:
    """The last known price of ``symbol``: ``{symbol, price, ts, source}``."""
    row = model.get(_pf.PRICES, symbol)
    return None if row is None else dict(row)


def _fresh_price(model: Reader, symbol: str, since: datetime, cache: dict[str, Row | None]) -> Decimal | None:
    if symbol not in cache:
        cache[symbol] = model.get(_pf.PRICES, symbol)
    p = cache[symbol]
    return p["price"] if p is not None and p["ts"] > since else None


# --- portfolio --------------------------------------------------------------------------


def portfolio(model: Reader, account_id: str) -> Row | None:
    """An account's money figures and per-asset breakdown, at the latest known prices."""
    a = model.get(_pf.ACCOUNTS, account_id)
    if a is None:
        return None
    out = _public(a)
    prices: dict[str, Row | None] = {}
    assets = []
    upnl = exposure = ZERO
    for p in _all(model, _pf.ASSETS, account_id=account_id):
        price = _fresh_price(model, p["symbol"], p["updated_at"], prices)
        if price is not None:
            sign = 1 if p["side"] == "long" else -1
            p["current_price"] = price
            p["value"] = p["quantity"] * price
            p["pnl"] = (price - p["avg_price"]) * p["quantity"] * sign
            p["pnl_pct"] = pct(p["pnl"], p["margin"])
        upnl += p["pnl"]
        exposure += p["value"]
        assets.append(p)
    if upnl != a["unrealised_pnl"]:
        eq = a["cash"] + a["margin"] + upnl
        base = a["day_start_equity"] + a["day_flows"]
        out.update({
            "unrealised_pnl": upnl, "exposure": exposure, "equity": eq,
            "total_pnl": eq - a["net_deposits"], "total_pnl_pct": pct(eq - a["net_deposits"], a["net_deposits"]),
            "daily_pnl": eq - base, "daily_pnl_pct": pct(eq - base, base),
        })
    out["positions"] = assets
    return out


def _combined_daily(model: Reader, account_ids: list[str], last_day: str) -> dict[str, float]:
    """Daily returns of several accounts taken together (equity and flows summed per day)."""
    per_day: dict[str, list[Decimal]] = {}
    for acc in account_ids:
        rows = {r["day"]: r for r in _all(model, _pf.DAILY, account_id=acc)}
        if not rows:
            continue
        day, end = date.fromisoformat(min(rows)), date.fromisoformat(last_day)
        close: Decimal = rows[min(rows)]["open_equity"]
        while day <= end:
            key = day.isoformat()
            r = rows.get(key)
            o, c, f = (r["open_equity"], r["close_equity"], r["flows"]) if r else (close, close, ZERO)
            close = c
            s = per_day.setdefault(key, [ZERO, ZERO, ZERO])
            s[0] += o
            s[1] += c
            s[2] += f
            day += timedelta(days=1)
    out = {}
    for key in sorted(per_day):
        o, c, f = per_day[key]
        if o + f > 0:
            out[key] = float((c - o - f) / (o + f))
    return out


def _compound(returns: dict[str, float], last_day: str, days: int) -> float | None:
    first = (date.fromisoformat(last_day) - timedelta(days=days - 1)).isoformat()
    window = [r for d, r in returns.items() if first <= d <= last_day]
    if not window:
        return None
    total = 1.0
    for r in window:
        total *= 1.0 + r
    return total - 1.0


def portfolio_for_mode(model: Reader, owner_id: str, mode: str, as_of: datetime | None = None) -> Row:
    """An owner's accounts of one mode (paper or live) taken together, as ``/portfolio/{mode}``.

    ``performance`` holds compounded returns (fractions) over the last 1, 7 and 30 UTC days.
    """
    accounts = [portfolio(model, a["account_id"]) for a in _all(model, _pf.ACCOUNTS, owner_id=owner_id, mode=mode)]
    found = [a for a in accounts if a is not None]

    def total(field: str) -> Decimal:
        return sum((a[field] for a in found), ZERO)

    equity, net = total("equity"), total("net_deposits")
    day_base = total("day_start_equity") + total("day_flows")
    last_day = utc_day(as_of) if as_of else max((a["day"] for a in found), default=None)
    returns = _combined_daily(model, [a["account_id"] for a in found], last_day) if last_day else {}
    return {
        "owner_id": owner_id, "mode": mode, "accounts": [a["account_id"] for a in found],
        "total_value": equity, "cash_balance": total("cash"), "available_balance": total("available"),
        "reserved": total("reserved"), "invested_value": total("margin"), "exposure": total("exposure"),
        "unrealised_pnl": total("unrealised_pnl"), "realised_pnl": total("realised_pnl"), "fees": total("fees"),
        "total_pnl": equity - net, "total_pnl_pct": pct(equity - net, net),
        "daily_pnl": total("daily_pnl"), "daily_pnl_pct": pct(total("daily_pnl"), day_base),
        "positions": [p for a in found for p in a["positions"]],
        "performance": {
            "daily": _compound(returns, last_day, 1) if last_day else None,
            "weekly": _compound(returns, last_day, 7) if last_day else None,
            "monthly": _compound(returns, last_day, 30) if last_day else None,
        },
    }


def equity_curve(model: Reader, account_id: str, start: datetime | None = None, end: datetime | None = None,
                 limit: int = 10_000, offset: int = 0) -> Page:
    """Equity points of an account, oldest first: ``{ts, equity, cash, flow, position}``."""
    page = _page(model, _pf.CURVE, {"account_id": account_id}, limit=_ALL)
    items = [p for p in page.items if (start is None or p["ts"] >= start) and (end is None or p["ts"] <= end)]
    return Page(items=items[offset : offset + limit], total=len(items), limit=limit, offset=offset)


# --- positions, orders, trades --------------------------------------------------------


def positions(model: Reader, *, account_id: str | None = None, bot_id: str | None = None,
              symbol: str | None = None, status: str | None = None, mode: str | None = None,
              limit: int = 100, offset: int = 0) -> Page:
    """Positions, newest first; open ones revalued at the latest known price."""
    page = _page(model, _pos.POSITIONS, {"account_id": account_id, "bot_id": bot_id, "symbol": symbol,
                                         "status": status, "mode": mode}, limit=limit, offset=offset)
    prices: dict[str, Row | None] = {}
    for p in page.items:
        if p["status"] == _pos.CLOSED:
            continue
        price = _fresh_price(model, p["symbol"], p["updated_at"], prices)
        if price is not None:
            p["last_price"] = price
            _pos.figures(p)
    return page


def position(model: Reader, position_id: str) -> Row | None:
    row = model.get(_pos.POSITIONS, position_id)
    return None if row is None else _public(row)


def orders(model: Reader, *, account_id: str | None = None, bot_id: str | None = None, mode: str | None = None,
           symbol: str | None = None, side: str | None = None, status: str | None = None,
           start: datetime | None = None, end: datetime | None = None, limit: int = 100, offset: int = 0) -> Page:
    """Orders, newest first; ``start``/``end`` bound ``created_at`` (inclusive)."""
    return _page(model, _orders.ORDERS, {"account_id": account_id, "bot_id": bot_id, "mode": mode,
                                         "symbol": symbol, "side": side, "status": status},
                 range_field="created_at", start=start, end=end, limit=limit, offset=offset)


def trades(model: Reader, *, account_id: str | None = None, bot_id: str | None = None, mode: str | None = None,
           symbol: str | None = None, side: str | None = None, order_id: str | None = None,
           start: datetime | None = None, end: datetime | None = None, limit: int = 100, offset: int = 0) -> Page:
    """Fills, newest first; ``start``/``end`` bound ``ts`` (inclusive)."""
    return _page(model, _orders.TRADES, {"account_id": account_id, "bot_id": bot_id, "mode": mode,
                                         "symbol": symbol, "side": side, "order_id": order_id},
                 range_field="ts", start=start, end=end, limit=limit, offset=offset)


# --- bots, notifications, risk, performance ---------------------------------------------


def bots(model: Reader, *, owner_id: str | None = None, account_id: str | None = None, status: str | None = None,
         mode: str | None = None, strategy: str | None = None, limit: int = 100, offset: int = 0) -> Page:
    return _page(model, _bots.BOTS, {"owner_id": owner_id, "account_id": account_id, "status": status,
                                     "mode": mode, "strategy": strategy}, limit=limit, offset=offset)


def bot(model: Reader, bot_id: str) -> Row | None:
    row = model.get(_bots.BOTS, bot_id)
    return None if row is None else _public(row)


def _alert_as_notification(a: Row) -> Row:
    return {
        "id": a["id"], "account_id": a["account_id"], "owner_id": a["owner_id"], "mode": a["mode"],
        "category": "alert", "type": a["type"], "severity": a["severity"],
        "title": f"Risk alert: {a['type']}", "message": a["message"], "ts": a["ts"],
        "read": a["read"], "read_at": a["read_at"], "acknowledged": a["acknowledged"],
    }


def notifications(model: Reader, *, owner_id: str | None = None, account_id: str | None = None,
                  category: str | None = None, read: bool | None = None, limit: int = 50) -> list[Row]:
    """Notifications and risk alerts of a user or account, newest first."""
    if owner_id is None and account_id is None:
        raise ValueError("give owner_id or account_id")
    who = {"owner_id": owner_id, "account_id": account_id}
    rows: list[Row] = []
    if category in (None, "trade", "system"):
        rows += _page(model, _ntf.NOTIFICATIONS, {**who, "category": category, "read": read}, limit=limit).items
    if category in (None, "alert"):
        alerts = _page(model, _risk.ALERTS, who, limit=_ALL).items
        rows += [_alert_as_notification(a) for a in alerts if read is None or a["read"] is read]
    rows.sort(key=lambda r: (r["ts"], r["id"]), reverse=True)
    return rows[:limit]


def risk_alerts(model: Reader, account_id: str, acknowledged: bool | None = None, limit: int = 100,
                offset: int = 0) -> Page:
    return _page(model, _risk.ALERTS, {"account_id": account_id, "acknowledged": acknowledged},
                 limit=limit, offset=offset)


def risk(model: Reader, account_id: str, as_of: datetime | None = None) -> Row | None:
    """Exposure, limit usage, VaR/ES, drawdowns and open alerts (see ``risk.risk_summary``)."""
    return _risk.risk_summary(model, account_id, as_of)


def performance(model: Reader, scope: str, key: str, period: str, as_of: datetime) -> Row:
    """Return, Sharpe, Sortino, Calmar, drawdown, win rate... (see ``performance``)."""
    return performance_summary(model, scope, key, period, as_of)


def analytics_summary(model: Reader, owner_id: str) -> Row:
    """Bots, trades, P&L and win rate of a user's bots, and the best of them."""
    rows = _all(model, _bots.BOTS, owner_id=owner_id)
    closed = sum(b["closed_positions"] for b in rows)
    wins = sum(b["wins"] for b in rows)
    best = max(rows, key=lambda b: b["net_pnl"], default=None)
    return {
        "total_bots": len([b for b in rows if b["status"] != "deleted"]),
        "active_bots": len([b for b in rows if b["status"] == "running"]),
        "total_trades": sum(b["trades_count"] for b in rows),
        "total_pnl": sum((b["net_pnl"] for b in rows), ZERO),
        "win_rate": wins / closed if closed else None,
        "best_performing_bot": None if best is None else {
            "id": best["bot_id"], "name": best["name"], "pnl": best["net_pnl"],
        },
    }
