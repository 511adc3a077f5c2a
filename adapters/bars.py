"""Closed OHLCV bars built from price ticks, for bots that trade live.

A bar covers one timeframe bucket, aligned to the epoch (weeks to Monday 00:00 UTC, as
exchanges do), and its ``time`` is the bucket's open. A bar closes when a tick arrives in a
later bucket, or, when asked (``close_due``), once the clock has passed the bucket's end:
a quiet market still closes its bars. Empty buckets produce no bar (no prices are
invented; exchanges omit them too).

Ticks may arrive late, twice or out of order (Kafka is at-least-once): a tick older than
the last accepted one, or in a bucket that has already closed, is ignored, and so is a
repeat of the last tick (same time, same price). Volume is the number of ticks: a price
feed carries no traded quantity.

Time comes with each tick (venue time) or from the caller's injected clock; nothing here
reads the system time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from adapters.marketdata import Bar, timeframe_delta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
_ONE = Decimal(1)


def bucket_start(ts: datetime, step: timedelta) -> datetime:
    """Open time of the bucket of length ``step`` that holds ``ts``."""
    if ts.tzinfo is None:
        raise ValueError("tick time needs a time zone")
    origin = _MONDAY if step % timedelta(weeks=1) == timedelta(0) else _EPOCH
    return origin + ((ts - origin) // step) * step


@dataclass(slots=True)
class _Open:
    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    ticks: int
    last_ts: datetime

    def bar(self) -> Bar:
        return Bar(self.time, self.open, self.high, self.low, self.close, Decimal(self.ticks))


class BarBuilder:
    """Builds the bars of one symbol and timeframe from its ticks (not thread-safe)."""

    def __init__(self, symbol: str, timeframe: str) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.step = timeframe_delta(timeframe)
        self._open: _Open | None = None
        self._closed_until: datetime | None = None
        self.ignored = 0

    @property
    def last_closed(self) -> datetime | None:
        """Open time of the last closed bar's bucket (None before the first close)."""
        return None if self._closed_until is None else self._closed_until - self.step

    def on_tick(self, price: Decimal, ts: datetime) -> Bar | None:
        """Add a tick; returns the bar it closed, if it opened a later bucket."""
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise ValueError(f"price must be a positive Decimal: {price!r}")
        try:
            start = bucket_start(ts, self.step)
            start + self.step  # noqa: B018 - the bucket must end inside the calendar
        except OverflowError:
            raise ValueError(f"tick time out of range: {ts.isoformat()}") from None
        cur = self._open
        if (self._closed_until is not None and ts < self._closed_until) or (cur is not None and ts < cur.last_ts):
            self.ignored += 1  # late or out of order: its bucket is decided
            return None
        if cur is not None and start == cur.time:
            if ts == cur.last_ts and price == cur.close:
                self.ignored += 1  # a redelivered tick
                return None
            cur.high = max(cur.high, price)
            cur.low = min(cur.low, price)
            cur.close = price
            cur.ticks += 1
            cur.last_ts = ts
            return None
        closed = self._close() if cur is not None else None
        self._open = _Open(start, price, price, price, price, 1, ts)
        return closed

    def close_due(self, now: datetime, grace: timedelta = timedelta(0)) -> Bar | None:
        """Close the open bar if ``now`` is at least ``grace`` past its bucket's end."""
        cur = self._open
        if cur is None or now < cur.time + self.step + grace:
            return None
        return self._close()

    def _close(self) -> Bar:
        cur = self._open
        assert cur is not None
        self._open = None
        self._closed_until = cur.time + self.step
        return cur.bar()


__all__ = ["BarBuilder", "bucket_start"]
