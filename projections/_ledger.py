"""Account money arithmetic shared by the portfolio and risk projections.

It mirrors the money model of ``domain.account`` on plain rows: opening or increasing a
position moves its margin out of cash, reducing or closing it returns the released margin
plus the realised P&L, and every fill pays its fee from cash. Equity is cash plus margin
plus the unrealised P&L of open positions at their current price.

Each projection keeps its own copy of these rows (a projection sees only its own tables);
these functions only change the dicts they are given, the caller ``put``s them.

Account row fields used here: ``cash``, ``margin``, ``unrealised_pnl``, ``exposure``,
``open_positions``. Position row fields: ``account_id``, ``symbol``, ``position_id``,
``side``, ``dir`` (1 long, -1 short), ``quantity``, ``avg_price``, ``current_price``,
``value`` (notional at the current price), ``pnl`` (unrealised), ``margin``, ``leverage``,
``opened_at``, ``updated_at``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from domain.account_events import PositionClosed, PositionIncreased, PositionOpened, PositionReduced
from domain.values import PositionSide

Row = dict[str, Any]

ZERO = Decimal(0)
HUNDRED = Decimal(100)
PCT_QUANTUM = Decimal("0.0001")
"""Percentages in rows are rounded half-even to four decimal places."""

_UTC = UTC


def pct(part: Decimal, whole: Decimal) -> Decimal | None:
    """``part / whole`` in percent (4 dp), or None when ``whole`` is not positive."""
    if whole <= 0:
        return None
    return (part * HUNDRED / whole).quantize(PCT_QUANTUM)


_DAYS: dict[int, str] = {}


def utc_day(at: datetime) -> str:
    """The UTC calendar day of ``at`` as ``YYYY-MM-DD``."""
    if at.tzinfo is not _UTC:
        at = at.astimezone(_UTC)
    ordinal = at.toordinal()
    day = _DAYS.get(ordinal)
    if day is None:
        # A replay formats each day once, not once per event.
        day = _DAYS[ordinal] = date.fromordinal(ordinal).isoformat()
    return day


def position_key(account_id: str, symbol: str) -> str:
    # The account aggregate holds at most one position per symbol.
    return f"{account_id}|{symbol}"


def equity(a: Row) -> Decimal:
    result: Decimal = a["cash"] + a["margin"] + a["unrealised_pnl"]
    return result


def open_position(a: Row, e: PositionOpened) -> Row:
    """Book ``e`` on account row ``a`` and return the new position row."""
    qty, price = e.quantity, e.entry_price
    value = qty * price
    a["cash"] -= e.margin + e.fee
    a["margin"] += e.margin
    a["exposure"] += value
    a["open_positions"] += 1
    return {
        "account_id": e.account_id,
        "symbol": str(e.symbol),
        "position_id": e.position_id,
        "side": str(e.side),
        "dir": 1 if e.side is PositionSide.LONG else -1,
        "quantity": qty,
        "avg_price": price,
        "current_price": price,
        "value": value,
        "pnl": ZERO,
        "margin": e.margin,
        "leverage": e.leverage,
        "opened_at": e.at,
        "updated_at": e.at,
    }


def _revalue(a: Row, p: Row, price: Decimal) -> None:
    qty = p["quantity"]
    value = qty * price
    pnl = (price - p["avg_price"]) * qty * p["dir"]
    a["exposure"] += value - p["value"]
    a["unrealised_pnl"] += pnl - p["pnl"]
    p["current_price"] = price
    p["value"] = value
    p["pnl"] = pnl


def increase_position(a: Row, p: Row, e: PositionIncreased) -> None:
    a["cash"] -= e.margin_added + e.fee
    a["margin"] += e.margin_added
    p["margin"] += e.margin_added
    p["quantity"] = e.new_quantity
    p["avg_price"] = e.new_entry_price
    p["updated_at"] = e.at
    _revalue(a, p, e.price)


def reduce_position(a: Row, p: Row, e: PositionReduced) -> None:
    a["cash"] += e.margin_released + e.realised_pnl - e.fee
    a["margin"] -= e.margin_released
    p["margin"] -= e.margin_released
    p["quantity"] = e.remaining
    p["updated_at"] = e.at
    _revalue(a, p, e.price)


def close_position(a: Row, p: Row, e: PositionClosed) -> None:
    """Book ``e`` on ``a``; the caller deletes the position row ``p``."""
    a["cash"] += e.margin_released + e.realised_pnl - e.fee
    a["margin"] -= e.margin_released
    a["exposure"] -= p["value"]
    a["unrealised_pnl"] -= p["pnl"]
    a["open_positions"] -= 1


def mark_position(a: Row, p: Row, price: Decimal, at: datetime) -> None:
    """Revalue ``p`` (and its account ``a``) at a market price."""
    _revalue(a, p, price)
    p["updated_at"] = at
