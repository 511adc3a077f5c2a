"""Performance read model: closed trades per account, bot and strategy; metrics on read.

Tables:
- ``perf_trades`` (key ``position_id``): one row per closed position, with its account,
  bot and strategy (the bot's strategy when the position opened), net P&L = realised -
  fees, and the stake (margin committed) it used.
- ``perf_positions`` (key ``position_id``): open positions, to attribute them at close.
- ``perf_bots`` (key ``bot_id``): a bot's account and current strategy.

The daily equity an account's returns come from is the portfolio projection's
``portfolio_equity_daily``; ``performance_summary`` computes every period on read.

Conventions (stated once, used everywhere):
- returns are daily, on UTC days; a day without an equity row has return 0;
- account scope: r(d) = (close - open - flows) / (open + flows) of the account's equity
  (flows = deposits - withdrawals, counted at the start of the day);
- bot and strategy scope: r(d) = net P&L of the trades closed on day d / the capital of
  the accounts they trade in at the start of day d (previous close + that day's flows);
- a period is the ``n`` UTC days ending on ``as_of``'s day (1d, 7d, 30d, 90d, 1y = 365d;
  ``all`` starts at the first day with capital); trades count when closed on one of
  those days, up to ``as_of``;
- total return compounds the daily returns; annualisation uses 365 periods per year and
  a risk-free rate of 0: Sharpe = mean / std (ddof 1) * sqrt(365), Sortino = mean /
  sqrt(mean(min(r, 0)^2)) * sqrt(365), Calmar = CAGR / max drawdown with CAGR =
  (1 + total return)^(365 / n) - 1; max drawdown of the compounded index (starting at 1),
  as a positive fraction;
- win rate = winning trades / all trades (a trade wins when its net P&L > 0, loses when
  < 0); profit factor = sum of winning net P&L / |sum of losing net P&L|.
Ratios are floats (numpy); money stays ``Decimal``. Undefined metrics are None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np

from domain import account_events as ae
from domain.envelope import RecordedEvent
from projections._ledger import ZERO, utc_day
from projections.base import Projection, Query, ReadModel, Row, TableSpec
from projections.portfolio import DAILY, daily_returns

TRADES = "perf_trades"
OPEN = "perf_positions"
BOTS = "perf_bots"

PERIODS: dict[str, int | None] = {"1d": 1, "7d": 7, "30d": 30, "90d": 90, "1y": 365, "all": None}
SCOPES = {"account": "account_id", "bot": "bot_id", "strategy": "strategy"}
PERIODS_PER_YEAR = 365
_ALL = 1_000_000_000


class PerformanceProjection(Projection):
    name = "performance"
    version = 1
    tables = (
        TableSpec(TRADES, indexes=("account_id", "bot_id", "strategy"), order_by="closed_at"),
        TableSpec(OPEN, indexes=("account_id",)),
        TableSpec(BOTS, indexes=("strategy", "account_id")),
    )
    _ON: ClassVar[dict[str, str]] = {
        "BotCreated": "_bot",
        "BotUpdated": "_bot",
        "PositionOpened": "_opened",
        "PositionIncreased": "_increased",
        "PositionClosed": "_closed",
    }
    handles = frozenset(_ON)

    def __init__(self) -> None:
        self._on: dict[str, Callable[[ReadModel, RecordedEvent, Any], None]] = {
            t: getattr(self, m) for t, m in self._ON.items()
        }

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        fn = self._on.get(rec.type)
        if fn is not None:
            fn(model, rec, rec.event)

    def _bot(self, model: ReadModel, rec: RecordedEvent, e: Any) -> None:
        b = model.get(BOTS, e.bot_id)
        if b is not None and rec.version <= b["bot_version"]:
            return
        c = e.config
        model.put(BOTS, e.bot_id, {
            "bot_id": e.bot_id, "account_id": c.account_id, "strategy": c.strategy, "name": c.name,
            "bot_version": rec.version,
        })

    def _opened(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionOpened) -> None:
        if model.get(OPEN, e.position_id) is not None or model.get(TRADES, e.position_id) is not None:
            return
        bot = model.get(BOTS, e.bot_id) if e.bot_id else None
        model.put(OPEN, e.position_id, {
            "position_id": e.position_id, "account_id": e.account_id, "bot_id": e.bot_id,
            "strategy": None if bot is None else bot["strategy"], "symbol": str(e.symbol),
            "side": str(e.side), "opened_at": e.at, "stake": e.margin, "last_version": rec.version,
        })

    def _increased(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionIncreased) -> None:
        p = model.get(OPEN, e.position_id)
        if p is None or rec.version <= p["last_version"]:
            return
        p["last_version"] = rec.version
        p["stake"] += e.margin_added
        model.put(OPEN, e.position_id, p)

    def _closed(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionClosed) -> None:
        p = model.get(OPEN, e.position_id)
        if p is None:
            return  # unknown, or closed already (a re-delivery)
        net = e.total_realised_pnl - e.fees
        model.put(TRADES, e.position_id, {
            "position_id": e.position_id, "account_id": e.account_id, "bot_id": p["bot_id"],
            "strategy": p["strategy"], "symbol": p["symbol"], "side": p["side"],
            "opened_at": p["opened_at"], "closed_at": e.at, "day": utc_day(e.at),
            "realised_pnl": e.total_realised_pnl, "fees": e.fees, "net_pnl": net,
            "stake": p["stake"], "close_reason": e.reason,
        })
        model.delete(OPEN, e.position_id)


# --- metrics on read ------------------------------------------------------------------


def _days(first: date, last: date) -> list[str]:
    n = (last - first).days
    return [(first + timedelta(days=i)).isoformat() for i in range(n + 1)]


def _capital_by_day(rows: list[Row], days: list[str]) -> dict[str, Decimal]:
    """Start-of-day capital (open equity + flows) of one account, carried over empty days."""
    by_day = {r["day"]: r for r in rows}
    out: dict[str, Decimal] = {}
    carried: Decimal | None = None
    for d in days:
        r = by_day.get(d)
        if r is not None:
            out[d] = r["open_equity"] + r["flows"]
            carried = r["close_equity"]
        elif carried is not None:
            out[d] = carried
    return out


def _equity_rows(model: Any, account_id: str) -> list[Row]:
    return model.query(Query(table=DAILY, equals={"account_id": account_id}, limit=_ALL)).items  # type: ignore[no-any-return]


def pnl_returns(model: Any, trades: Iterable[Row], accounts: Iterable[str], last_day: str) -> dict[str, float]:
    """Daily returns of a bot or strategy: that day's net P&L / its accounts' start capital."""
    pnl: dict[str, Decimal] = {}
    for t in trades:
        pnl[t["day"]] = pnl.get(t["day"], ZERO) + t["net_pnl"]
    capital: dict[str, Decimal] = {}
    first: date | None = None
    per_account = {}
    for acc in set(accounts):
        rows = _equity_rows(model, acc)
        if rows:
            per_account[acc] = rows
            d0 = date.fromisoformat(min(r["day"] for r in rows))
            first = d0 if first is None or d0 < first else first
    if first is None:
        return {}
    days = _days(first, date.fromisoformat(last_day))
    for rows in per_account.values():
        for d, c in _capital_by_day(rows, days).items():
            capital[d] = capital.get(d, ZERO) + c
    out: dict[str, float] = {}
    for d in days:
        base = capital.get(d)
        if base is not None and base > 0:
            out[d] = float(pnl.get(d, ZERO) / base)
    return out


def return_metrics(returns: np.ndarray) -> dict[str, float | None]:
    """Total return, CAGR, Sharpe, Sortino, Calmar, volatility and max drawdown of daily returns."""
    n = int(returns.size)
    if n == 0:
        return {
            "total_return": None, "annualized_return": None, "sharpe_ratio": None, "sortino_ratio": None,
            "calmar_ratio": None, "volatility": None, "max_drawdown": None,
        }
    wealth = np.concatenate(([1.0], np.cumprod(1.0 + returns)))
    total = float(wealth[-1] - 1.0)
    peak = np.maximum.accumulate(wealth)
    max_dd = float((1.0 - wealth / peak).max())
    cagr = float(wealth[-1] ** (PERIODS_PER_YEAR / n) - 1.0) if wealth[-1] > 0 else -1.0
    mean = float(returns.mean())
    std = float(returns.std(ddof=1)) if n > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    root = math.sqrt(PERIODS_PER_YEAR)
    return {
        "total_return": total,
        "annualized_return": cagr,
        "sharpe_ratio": mean / std * root if std > 0 else None,
        "sortino_ratio": mean / downside * root if downside > 0 else None,
        "calmar_ratio": cagr / max_dd if max_dd > 0 else None,
        "volatility": std * root if n > 1 else None,
        "max_drawdown": max_dd,
    }


def trade_metrics(trades: list[Row]) -> dict[str, Any]:
    """Counts, win rate, profit factor, best and worst trade of closed trades (net P&L)."""
    nets = [t["net_pnl"] for t in trades]
    wins = [n for n in nets if n > 0]
    losses = [n for n in nets if n < 0]
    gross_win = sum(wins, ZERO)
    gross_loss = -sum(losses, ZERO)
    total = len(nets)
    best = max(trades, key=lambda t: t["net_pnl"]) if trades else None
    worst = min(trades, key=lambda t: t["net_pnl"]) if trades else None
    return {
        "total_trades": total,
        "winning_trades": len(wins),
        "losing_trades": len(losses),
        "win_rate": len(wins) / total if total else None,
        "profit_factor": float(gross_win / gross_loss) if gross_loss > 0 else None,
        "net_pnl": sum(nets, ZERO),
        "gross_profit": gross_win,
        "gross_loss": gross_loss,
        "average_trade": sum(nets, ZERO) / total if total else None,
        "best_trade": None if best is None else best["net_pnl"],
        "best_trade_id": None if best is None else best["position_id"],
        "worst_trade": None if worst is None else worst["net_pnl"],
        "worst_trade_id": None if worst is None else worst["position_id"],
    }


def performance_summary(model: Any, scope: str, key: str, period: str, as_of: datetime) -> Row:
    """Performance of an account, bot or strategy over ``period`` ending at ``as_of``.

    ``model`` needs ``query`` over the performance and portfolio tables.
    """
    field = SCOPES.get(scope)
    if field is None:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}: {scope!r}")
    if period not in PERIODS:
        raise ValueError(f"period must be one of {list(PERIODS)}: {period!r}")
    n_days = PERIODS[period]
    last_day = utc_day(as_of)
    all_trades = model.query(Query(table=TRADES, equals={field: key}, limit=_ALL)).items
    if scope == "account":
        daily = daily_returns(model, key, last_day)
    else:
        if scope == "bot":
            bot = model.get(BOTS, key)
            accounts = [bot["account_id"]] if bot is not None else []
        else:
            accounts = [b["account_id"] for b in model.query(
                Query(table=BOTS, equals={"strategy": key}, limit=_ALL)).items]
        accounts += [t["account_id"] for t in all_trades]
        daily = pnl_returns(model, all_trades, accounts, last_day)
    first_day = None
    if n_days is not None:
        first_day = (date.fromisoformat(last_day) - timedelta(days=n_days - 1)).isoformat()
    days = sorted(d for d in daily if d <= last_day and (first_day is None or d >= first_day))
    returns = np.asarray([daily[d] for d in days], dtype=float)
    trades = [
        t for t in all_trades
        if t["closed_at"] <= as_of and (first_day is None or t["day"] >= first_day)
    ]
    out: Row = {
        "scope": scope, "key": key, "period": period, "as_of": as_of,
        "start_day": days[0] if days else None, "end_day": last_day, "days": len(days),
    }
    out.update(return_metrics(returns))
    out.update(trade_metrics(trades))
    return out
