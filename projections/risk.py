"""Risk read model: exposure, limit usage, alerts; VaR, expected shortfall and drawdowns on read.

Tables:
- ``risk_accounts`` (key ``account_id``): the account's limits and the inputs of every
  limit check, kept exactly as ``domain.account`` keeps them (day-start equity and
  high-water mark on book equity = cash + margin; drawdown and leverage on marked
  equity), plus the alert level per limit type.
- ``risk_positions`` (key ``account_id|symbol``): open positions (quantity, price, margin).
- ``risk_alerts`` (key alert id): one row each time a limit's usage rises to near (>= 80%,
  severity ``high``) or breached (>= 100%, severity ``critical``). Falling below a level
  re-arms it. Acknowledging (``RiskAlertAcknowledged``) and reading (``NotificationRead``
  with the alert id) are events too.

Limit usage is ``value / limit`` in percent, per ``RiskLimits`` field:
POSITION_SIZE (largest position margin as % of equity), OPEN_POSITIONS (count),
DAILY_LOSS (net realised loss of the UTC day as % of day-start book equity), DRAWDOWN
(fall of marked equity below the high-water mark, %), LEVERAGE (exposure / equity).

``risk_summary`` computes the displayed figures on read, adding historical VaR and
expected shortfall (95%, 99%) of daily returns and the max/current drawdown of the
time-weighted equity index, both from the portfolio projection's equity tables.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np

from domain import account_events as ae
from domain import alerts as _alerts  # noqa: F401  (registers the acknowledgement events for decoding)
from domain.envelope import RecordedEvent
from domain.risk import RiskLimits
from projections import _ledger as L
from projections.base import Projection, Query, ReadModel, Row, TableSpec
from projections.portfolio import CURVE, daily_returns

ACCOUNTS = "risk_accounts"
POSITIONS = "risk_positions"
ALERTS = "risk_alerts"

POSITION_SIZE = "POSITION_SIZE"
DAILY_LOSS = "DAILY_LOSS"
DRAWDOWN = "DRAWDOWN"
LEVERAGE = "LEVERAGE"
OPEN_POSITIONS = "OPEN_POSITIONS"
ALERT_TYPES = (POSITION_SIZE, DAILY_LOSS, DRAWDOWN, LEVERAGE, OPEN_POSITIONS)

NEAR = Decimal(80)
BREACHED = Decimal(100)
SEVERITY = {1: "high", 2: "critical"}
ZERO = L.ZERO
_HUNDRED = L.HUNDRED
_LEVEL_FIELD = {t: "level_" + t.lower() for t in ALERT_TYPES}
_LIMIT_FIELD = {
    POSITION_SIZE: "max_position_size_pct",
    DAILY_LOSS: "max_daily_loss_pct",
    DRAWDOWN: "max_drawdown_pct",
    LEVERAGE: "max_leverage",
    OPEN_POSITIONS: "max_open_positions",
}
_UNIT = {POSITION_SIZE: "%", DAILY_LOSS: "%", DRAWDOWN: "%", LEVERAGE: "x", OPEN_POSITIONS: ""}


def _limits(a: Row, limits: RiskLimits) -> None:
    a["max_position_size_pct"] = limits.max_position_size_pct
    a["max_open_positions"] = limits.max_open_positions
    a["max_daily_loss_pct"] = limits.max_daily_loss_pct
    a["max_drawdown_pct"] = limits.max_drawdown_pct
    a["max_leverage"] = limits.max_leverage


def current_values(a: Row) -> dict[str, Decimal | None]:
    """Each limit type's current value (None: undefined because equity is not positive)."""
    eq = a["cash"] + a["margin"] + a["unrealised_pnl"]
    day_pnl, day_start, hwm = a["day_pnl"], a["day_start_equity"], a["high_water_mark"]
    positive = eq > 0
    return {
        POSITION_SIZE: a["largest_margin"] * _HUNDRED / eq if positive else None,
        OPEN_POSITIONS: Decimal(a["open_positions"]),
        DAILY_LOSS: -day_pnl * _HUNDRED / day_start if day_pnl < 0 and day_start > 0 else ZERO,
        DRAWDOWN: max((hwm - eq) * _HUNDRED / hwm, ZERO) if hwm > 0 else ZERO,
        LEVERAGE: a["exposure"] / eq if positive else None,
    }


def _usage(value: Decimal | None, limit: Decimal) -> Decimal | None:
    if value is None:
        return None
    if limit <= 0:
        return ZERO if value <= 0 else None
    return value * _HUNDRED / limit


def _level(value: Decimal | None, usage: Decimal | None, exposed: bool) -> int:
    if usage is None:
        # No positive equity, or a zero limit with something against it.
        return 2 if exposed or (value is not None and value > 0) else 0
    if usage >= BREACHED:
        return 2
    return 1 if usage >= NEAR else 0


def _q(v: Decimal | None) -> Decimal | None:
    return None if v is None else v.quantize(L.PCT_QUANTUM)


def limit_usage(a: Row, today: str | None = None) -> dict[str, dict[str, Any]]:
    """Per limit type: current ``value``, ``limit``, ``usage_pct`` (4 dp) and ``level``.

    With ``today`` (a UTC day) after the row's day, the daily loss has reset to zero.
    """
    if today is not None and today != a["day"]:
        a = {**a, "day_pnl": ZERO}
    out = {}
    exposed = a["open_positions"] > 0
    for t, value in current_values(a).items():
        limit = Decimal(a[_LIMIT_FIELD[t]])
        usage = _usage(value, limit)
        out[t] = {
            "value": _q(value), "limit": a[_LIMIT_FIELD[t]], "usage_pct": _q(usage),
            "level": _level(value, usage, exposed and t in (POSITION_SIZE, LEVERAGE)),
        }
    return out


def _alert_message(t: str, level: int, value: Decimal | None, usage: Decimal | None, limit: Any) -> str:
    head = "Limit breached" if level == 2 else "Near limit"
    unit = _UNIT[t]
    shown = "n/a (equity not positive)" if value is None else f"{_q(value)}{unit}"
    use = "" if usage is None else f", {_q(usage)}% of the {limit}{unit} limit"
    what = {
        POSITION_SIZE: "largest position margin (% of equity)",
        OPEN_POSITIONS: "open positions",
        DAILY_LOSS: "daily loss (% of day-start equity)",
        DRAWDOWN: "drawdown from the high-water mark",
        LEVERAGE: "exposure / equity",
    }[t]
    return f"{head}: {what} {shown}{use}"


def _grade(value: Decimal, limit: Decimal) -> int:
    """0, 1 (near: value >= 80% of limit) or 2 (breached), without dividing."""
    if value <= 0:
        return 0
    if value >= limit:
        return 2
    return 1 if value * 5 >= limit * 4 else 0


def levels(a: Row) -> tuple[int, int, int, int, int]:
    """The alert level of each limit type, in ``ALERT_TYPES`` order (the fast path of ``limit_usage``)."""
    eq = a["cash"] + a["margin"] + a["unrealised_pnl"]
    exposed = 2 if a["open_positions"] > 0 else 0
    if eq > 0:
        size = _grade(a["largest_margin"] * _HUNDRED, a["max_position_size_pct"] * eq)
        leverage = _grade(a["exposure"], a["max_leverage"] * eq)
    else:
        size = leverage = exposed
    day_pnl, day_start = a["day_pnl"], a["day_start_equity"]
    loss = _grade(-day_pnl * _HUNDRED, a["max_daily_loss_pct"] * day_start) if day_pnl < 0 and day_start > 0 else 0
    hwm = a["high_water_mark"]
    drawdown = _grade((hwm - eq) * _HUNDRED, a["max_drawdown_pct"] * hwm) if hwm > 0 else 0
    count = _grade(Decimal(a["open_positions"]), Decimal(a["max_open_positions"])) if a["open_positions"] else 0
    return size, loss, drawdown, leverage, count


def _evaluate(model: ReadModel, a: Row, alert_key: str, at: datetime) -> None:
    """Raise an alert for each limit whose level rose; remember every level."""
    usage: dict[str, dict[str, Any]] | None = None
    for t, level in zip(ALERT_TYPES, levels(a), strict=True):
        field = _LEVEL_FIELD[t]
        before = a[field]
        if level == before:
            continue
        a[field] = level
        if level < before:
            continue
        alert_id = f"alert-{alert_key}-{t.lower()}"
        if model.get(ALERTS, alert_id) is not None:
            continue
        if usage is None:
            usage = limit_usage(a)
        u = usage[t]
        model.put(ALERTS, alert_id, {
            "id": alert_id, "account_id": a["account_id"], "owner_id": a["owner_id"],
            "mode": a["mode"], "type": t, "severity": SEVERITY[level],
            "level": "breached" if level == 2 else "near",
            "message": _alert_message(t, level, u["value"], u["usage_pct"], u["limit"]),
            "value": u["value"], "limit": u["limit"], "usage_pct": u["usage_pct"], "ts": at,
            "acknowledged": False, "acknowledged_at": None, "acknowledged_by": None,
            "read": False, "read_at": None,
        })


def _largest_margin(model: ReadModel, account_id: str) -> Decimal:
    largest = ZERO
    for _, p in model.find(POSITIONS, account_id=account_id):
        if p["margin"] > largest:
            largest = p["margin"]
    return largest


def _roll_day(a: Row, at: datetime) -> None:
    # As Account._roll_day: the day starts at the book equity (cash + margin).
    day = L.utc_day(at)
    if day != a["day"]:
        a["day"] = day
        a["day_start_equity"] = a["cash"] + a["margin"]
        a["day_pnl"] = ZERO


def _mark_high_water(a: Row) -> None:
    book = a["cash"] + a["margin"]
    if book > a["high_water_mark"]:
        a["high_water_mark"] = book


def mark(model: ReadModel, symbol: str, price: Decimal, ts: datetime) -> None:
    """Revalue open positions in ``symbol`` at a market price and re-check the limits."""
    sym = str(symbol)
    for key, p in model.find(POSITIONS, symbol=sym):
        a = model.get(ACCOUNTS, p["account_id"])
        if a is None:
            continue
        L.mark_position(a, p, price, ts)
        a["updated_at"] = ts
        model.put(POSITIONS, key, p)
        _evaluate(model, a, f"mark-{sym.replace('/', '')}-{ts.isoformat()}-{a['account_id']}", ts)
        model.put(ACCOUNTS, a["account_id"], a)


def acknowledge_alert(model: ReadModel, alert_id: str, at: datetime, by: str | None = None) -> bool:
    """Mark an alert acknowledged; returns False when unknown or already acknowledged.

    The projection calls this for ``RiskAlertAcknowledged``; it is public for in-memory
    tools, while the API appends the event through a command.
    """
    row = model.get(ALERTS, alert_id)
    if row is None or row["acknowledged"]:
        return False
    row["acknowledged"] = True
    row["acknowledged_at"] = at
    row["acknowledged_by"] = by
    model.put(ALERTS, alert_id, row)
    return True


class RiskProjection(Projection):
    name = "risk"
    version = 1
    tables = (
        TableSpec(ACCOUNTS, indexes=("owner_id", "mode")),
        TableSpec(POSITIONS, indexes=("account_id", "symbol")),
        TableSpec(ALERTS, indexes=("account_id", "owner_id", "type", "severity", "acknowledged"), order_by="ts"),
    )
    _ON: ClassVar[dict[str, str]] = {
        "RiskLimitsSet": "_limits_set",
        "FundsDeposited": "_deposited",
        "FundsWithdrawn": "_withdrawn",
        "PositionOpened": "_opened",
        "PositionIncreased": "_increased",
        "PositionReduced": "_reduced",
        "PositionClosed": "_closed",
    }
    handles = frozenset(_ON) | {"AccountOpened", "RiskAlertAcknowledged", "NotificationRead"}

    def __init__(self) -> None:
        self._on: dict[str, Callable[[ReadModel, RecordedEvent, Any, Row], None]] = {
            t: getattr(self, m) for t, m in self._ON.items()
        }

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        t = rec.type
        fn = self._on.get(t)
        if fn is None:
            if t == "AccountOpened":
                self._account(model, rec, rec.event)  # type: ignore[arg-type]
            elif t == "RiskAlertAcknowledged":
                e: Any = rec.event
                acknowledge_alert(model, e.alert_id, e.at, e.by)
            elif t == "NotificationRead":
                self._read(model, rec.event)
            return
        e = rec.event
        a = model.get(ACCOUNTS, e.account_id)
        if a is None or rec.version <= a["last_version"]:
            return  # a re-delivery: this account's rows change only through its stream
        a["last_version"] = rec.version
        fn(model, rec, e, a)
        a["updated_at"] = e.at
        _evaluate(model, a, rec.event_id, e.at)
        model.put(ACCOUNTS, a["account_id"], a)

    def _account(self, model: ReadModel, rec: RecordedEvent, e: ae.AccountOpened) -> None:
        if model.get(ACCOUNTS, e.account_id) is not None:
            return
        a: Row = {
            "account_id": e.account_id, "owner_id": e.owner_id, "mode": str(e.mode),
            "cash": ZERO, "margin": ZERO, "unrealised_pnl": ZERO, "exposure": ZERO,
            "open_positions": 0, "largest_margin": ZERO,
            "day": L.utc_day(e.at), "day_start_equity": ZERO, "day_pnl": ZERO,
            "high_water_mark": ZERO, "updated_at": e.at, "last_version": rec.version,
        }
        _limits(a, e.limits)
        for field in _LEVEL_FIELD.values():
            a[field] = 0
        model.put(ACCOUNTS, e.account_id, a)

    def _read(self, model: ReadModel, e: Any) -> None:
        row = model.get(ALERTS, e.notification_id)
        if row is not None and not row["read"]:
            row["read"] = True
            row["read_at"] = e.at
            model.put(ALERTS, e.notification_id, row)

    def _limits_set(self, model: ReadModel, rec: RecordedEvent, e: ae.RiskLimitsSet, a: Row) -> None:
        _limits(a, e.limits)

    def _deposited(self, model: ReadModel, rec: RecordedEvent, e: ae.FundsDeposited, a: Row) -> None:
        _roll_day(a, e.at)
        a["cash"] += e.amount
        a["day_start_equity"] += e.amount
        a["high_water_mark"] += e.amount

    def _withdrawn(self, model: ReadModel, rec: RecordedEvent, e: ae.FundsWithdrawn, a: Row) -> None:
        _roll_day(a, e.at)
        a["cash"] -= e.amount
        a["day_start_equity"] = max(a["day_start_equity"] - e.amount, ZERO)
        a["high_water_mark"] = max(a["high_water_mark"] - e.amount, a["cash"] + a["margin"])

    def _opened(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionOpened, a: Row) -> None:
        _roll_day(a, e.at)
        p = L.open_position(a, e)
        a["day_pnl"] -= e.fee
        model.put(POSITIONS, L.position_key(e.account_id, p["symbol"]), p)
        if e.margin > a["largest_margin"]:
            a["largest_margin"] = e.margin

    def _increased(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionIncreased, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(POSITIONS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.increase_position(a, p, e)
        a["day_pnl"] -= e.fee
        model.put(POSITIONS, key, p)
        if p["margin"] > a["largest_margin"]:
            a["largest_margin"] = p["margin"]

    def _reduced(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionReduced, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(POSITIONS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.reduce_position(a, p, e)
        a["day_pnl"] += e.realised_pnl - e.fee
        model.put(POSITIONS, key, p)
        _mark_high_water(a)
        a["largest_margin"] = _largest_margin(model, e.account_id)

    def _closed(self, model: ReadModel, rec: RecordedEvent, e: ae.PositionClosed, a: Row) -> None:
        key = L.position_key(e.account_id, str(e.symbol))
        p = model.get(POSITIONS, key)
        if p is None:
            return
        _roll_day(a, e.at)
        L.close_position(a, p, e)
        a["day_pnl"] += e.realised_pnl - e.fee
        model.delete(POSITIONS, key)
        _mark_high_water(a)
        a["largest_margin"] = _largest_margin(model, e.account_id)


# --- on read ---------------------------------------------------------------------------

_ALL = 1_000_000_000


def var_es(returns: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Historical VaR and expected shortfall of ``returns`` as positive loss fractions.

    VaR = -q where q is the (1 - confidence) quantile (numpy's linear interpolation);
    ES = -mean of the returns at or below q.
    """
    if returns.size == 0:
        return None, None
    q = float(np.quantile(returns, 1.0 - confidence))
    tail = returns[returns <= q]
    return -q, float(-tail.mean()) if tail.size else -q


def drawdowns(points: list[Row]) -> tuple[float | None, float | None]:
    """Max and current drawdown (fractions) of the time-weighted equity index of ``points``.

    Each point's return removes its own flow: r = (equity - flow - prev) / (prev + flow).
    """
    wealth = [1.0]
    prev: Decimal | None = None
    for p in points:
        eq, flow = p["equity"], p.get("flow") or ZERO
        if prev is not None:
            base = prev + flow
            if base > 0:
                wealth.append(wealth[-1] * float(eq / base))
        prev = eq
    if len(wealth) < 2:
        return None, None
    w = np.asarray(wealth)
    peak = np.maximum.accumulate(w)
    dd = 1.0 - w / peak
    return float(dd.max()), float(dd[-1])


def risk_summary(model: Any, account_id: str, as_of: datetime | None = None) -> Row | None:
    """The risk figures of an account: exposure, limit usage, VaR/ES, drawdowns, open alerts.

    ``model`` needs ``get`` and ``query`` over the risk and portfolio tables.
    """
    a = model.get(ACCOUNTS, account_id)
    if a is None:
        return None
    eq = a["cash"] + a["margin"] + a["unrealised_pnl"]
    until = L.utc_day(as_of) if as_of is not None else None
    rets = np.asarray(list(daily_returns(model, account_id, until).values()), dtype=float)
    var95, es95 = var_es(rets, 0.95)
    var99, es99 = var_es(rets, 0.99)
    points = model.query(Query(table=CURVE, equals={"account_id": account_id}, limit=_ALL)).items
    max_dd, cur_dd = drawdowns(sorted(points, key=lambda p: p["position"]))
    alerts = model.query(Query(table=ALERTS, equals={"account_id": account_id, "acknowledged": False}, limit=_ALL))

    def amount(fraction: float | None) -> Decimal | None:
        if fraction is None:
            return None
        money: Decimal = (Decimal(repr(fraction)) * eq).quantize(Decimal("0.01"))
        return money

    return {
        "account_id": account_id,
        "mode": a["mode"],
        "equity": eq,
        "exposure": a["exposure"],
        "margin": a["margin"],
        "open_positions": a["open_positions"],
        "leverage": _q(a["exposure"] / eq) if eq > 0 else None,
        "high_water_mark": a["high_water_mark"],
        "day": a["day"],
        "day_pnl": a["day_pnl"],
        "day_start_equity": a["day_start_equity"],
        "limits": {_LIMIT_FIELD[t]: a[_LIMIT_FIELD[t]] for t in ALERT_TYPES},
        "limit_usage": limit_usage(a, until),
        "returns_observed": int(rets.size),
        "var_95": var95, "var_99": var99,
        "expected_shortfall_95": es95, "expected_shortfall_99": es99,
        "var_95_amount": amount(var95), "var_99_amount": amount(var99),
        "expected_shortfall_95_amount": amount(es95), "expected_shortfall_99_amount": amount(es99),
        "max_drawdown": max_dd,
        "current_drawdown": cur_dd,
        "active_alerts": alerts.items,
        "updated_at": a["updated_at"],
    }
