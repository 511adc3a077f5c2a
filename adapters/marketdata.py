"""Market data: OHLCV bars, CSV import, storage (memory, SQLite, PostgreSQL), replay, ccxt download.

Prices are stored exactly (``TEXT`` holding the decimal string in SQLite, ``NUMERIC`` in
PostgreSQL) and read back as ``Decimal``. Strategies get float64 columns (``Bars``);
:func:`to_decimal` turns a float that came from a decimal string back into that string's
value, so an order price derived from a stored bar is the stored price.

A bar's ``time`` is its open time (UTC). The replay feed yields bars in time order.
"""

from __future__ import annotations

import csv
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from domain.strategies.base import Bars
from domain.values import Symbol

_TF = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MarketDataError(Exception):
    """Bad market data input (unreadable CSV, unknown columns, bars out of order)."""


class MarketDataUnavailable(MarketDataError):
    """No source can provide the data here (no ccxt, no network)."""


def timeframe_delta(timeframe: str) -> timedelta:
    """Length of a bar: ``1m`` -> 1 minute, ``4h``, ``1d``, ``1w``."""
    m = _TF.match(timeframe)
    if not m:
        raise MarketDataError(f"timeframe must look like 1m, 15m, 1h, 1d: {timeframe!r}")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar; ``time`` is the bar's open, UTC."""

    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise MarketDataError("bar time needs a time zone")
        if not (self.low <= min(self.open, self.close) and self.high >= max(self.open, self.close)):
            raise MarketDataError(f"bar at {self.time.isoformat()} has high/low outside open/close")
        if self.low <= 0:
            raise MarketDataError(f"bar at {self.time.isoformat()} has a non-positive price")


def to_decimal(x: float) -> Decimal:
    """The shortest decimal that reads back as ``x`` (the original text of a parsed price)."""
    return Decimal(repr(float(x)))


def ns(t: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime."""
    return (int(t.timestamp()) * 1_000_000 + t.microsecond) * 1000


def from_ns(value: int) -> datetime:
    return datetime.fromtimestamp(int(value) // 1000 / 1_000_000, tz=UTC)


def parse_time(text: str) -> datetime:
    """Parse an ISO date/datetime (naive means UTC) or epoch seconds/milliseconds."""
    s = text.strip()
    if not s:
        raise MarketDataError("empty time")
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        v = float(s)
        if v > 1e11:  # milliseconds
            v /= 1000.0
        return datetime.fromtimestamp(v, tz=UTC)
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MarketDataError(f"unreadable time {text!r}") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _dec(text: str, what: str, line: int) -> Decimal:
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise MarketDataError(f"line {line}: {what} is not a number: {text!r}") from None
    if not d.is_finite():
        raise MarketDataError(f"line {line}: {what} is not finite: {text!r}")
    return d


_ALIASES = {
    "time": ("time", "timestamp", "date", "datetime", "open_time", "ts", ""),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c", "adj close"),
    "volume": ("volume", "vol", "v"),
}


def _columns(header: Sequence[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    out: dict[str, int] = {}
    for key, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in names:
                out[key] = names.index(alias)
                break
    if "time" not in out and names and names[0] not in {a for v in _ALIASES.values() for a in v}:
        out["time"] = 0
    missing = {"time", "open", "high", "low", "close"} - set(out)
    if missing:
        raise MarketDataError(f"CSV lacks columns {sorted(missing)} (header: {list(header)})")
    return out


def read_csv(path: str | Path) -> Iterator[Bar]:
    """Yield the bars of an OHLCV CSV with a header (time, open, high, low, close[, volume])."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        cols = _columns(header)
        t_i, o_i, h_i, l_i, c_i = cols["time"], cols["open"], cols["high"], cols["low"], cols["close"]
        v_i = cols.get("volume")
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                yield Bar(
                    time=parse_time(row[t_i]),
                    open=_dec(row[o_i], "open", line),
                    high=_dec(row[h_i], "high", line),
                    low=_dec(row[l_i], "low", line),
                    close=_dec(row[c_i], "close", line),
                    volume=_dec(row[v_i], "volume", line) if v_i is not None and row[v_i].strip() else Decimal(0),
                )
            except IndexError:
                raise MarketDataError(f"line {line}: expected {len(header)} columns, got {len(row)}") from None


def count_rows(path: str | Path) -> int:
    """Data rows in a CSV file (for a progress bar)."""
    with open(path, "rb") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def to_series(bars: Iterable[Bar]) -> Bars:
    """Columnar float64 view of bars for strategies (checks time order)."""
    rows = list(bars)
    t = np.fromiter((ns(b.time) for b in rows), dtype=np.int64, count=len(rows))
    if t.size > 1 and not bool(np.all(np.diff(t) > 0)):
        raise MarketDataError("bars are not in strictly increasing time order")

    def col(name: str) -> np.ndarray:
        return np.fromiter((float(getattr(b, name)) for b in rows), dtype=np.float64, count=len(rows))

    return Bars(time=t, open=col("open"), high=col("high"), low=col("low"), close=col("close"), volume=col("volume"))


def load_csv_series(path: str | Path, start: datetime | None = None, end: datetime | None = None) -> Bars:
    """Read a CSV straight into columns (sorted by time, duplicates rejected), clipped to [start, end)."""
    series = to_series(sorted(read_csv(path), key=lambda b: b.time))
    return clip(series, start, end)


def clip(series: Bars, start: datetime | None, end: datetime | None) -> Bars:
    lo = 0 if start is None else int(np.searchsorted(series.time, ns(start), side="left"))
    hi = len(series) if end is None else int(np.searchsorted(series.time, ns(end), side="left"))
    return series.slice(lo, hi)


_ZERO = Decimal(0)


def bar_at(series: Bars, i: int, *, volume: bool = True) -> Bar:
    """Bar ``i`` of a series, with exact decimal prices (``volume=False``: a volume of 0, for readers of prices only).

    The range checks run on the floats, where they decide as on the decimals (``to_decimal``
    keeps the order), so a valid bar is built without checking it again.
    """
    o, h, lo, c = float(series.open[i]), float(series.high[i]), float(series.low[i]), float(series.close[i])
    t = from_ns(int(series.time[i]))
    v = to_decimal(series.volume[i]) if volume else _ZERO
    if not (0 < lo <= min(o, c) and h >= max(o, c)):
        return Bar(time=t, open=to_decimal(o), high=to_decimal(h), low=to_decimal(lo), close=to_decimal(c), volume=v)
    bar = object.__new__(Bar)
    setattr_ = object.__setattr__  # a frozen dataclass's own __init__ sets its fields this way
    setattr_(bar, "time", t)
    setattr_(bar, "open", Decimal(repr(o)))
    setattr_(bar, "high", Decimal(repr(h)))
    setattr_(bar, "low", Decimal(repr(lo)))
    setattr_(bar, "close", Decimal(repr(c)))
    setattr_(bar, "volume", v)
    return bar


def replay(series: Bars) -> Iterator[Bar]:
    """The replay feed: every bar of ``series`` in time order, with exact prices."""
    for i in range(len(series)):
        yield bar_at(series, i)


# --- storage ---------------------------------------------------------------------------


class OhlcvStore(Protocol):
    def upsert(self, symbol: str, timeframe: str, bars: Iterable[Bar]) -> int:
        """Insert or replace bars; returns how many were written."""
        ...

    def load(
        self, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Bar]: ...

    def series(self) -> list[dict[str, Any]]:
        """Stored (symbol, timeframe) pairs with bar count and first/last time."""
        ...

    def close(self) -> None: ...


def load_series(
    store: OhlcvStore, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None
) -> Bars:
    bars = store.load(str(Symbol(symbol)), timeframe, start, end)
    if not bars:
        raise MarketDataError(f"no {timeframe} bars stored for {symbol}")
    return to_series(bars)


class MemoryOhlcvStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[datetime, Bar]] = {}
        self._lock = threading.Lock()

    def upsert(self, symbol: str, timeframe: str, bars: Iterable[Bar]) -> int:
        timeframe_delta(timeframe)
        key = (str(Symbol(symbol)), timeframe)
        n = 0
        with self._lock:
            table = self._data.setdefault(key, {})
            for b in bars:
                table[b.time] = b
                n += 1
        return n

    def load(
        self, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Bar]:
        with self._lock:
            table = self._data.get((str(Symbol(symbol)), timeframe), {})
            return [b for t, b in sorted(table.items()) if (start is None or t >= start) and (end is None or t < end)]

    def series(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"symbol": s, "timeframe": tf, "bars": len(t), "first": min(t), "last": max(t)}
                for (s, tf), t in sorted(self._data.items())
                if t
            ]

    def close(self) -> None:
        return None


_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS ohlcv (
    symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL,
    ts INTEGER NOT NULL,
    open TEXT NOT NULL,
    high TEXT NOT NULL,
    low TEXT NOT NULL,
    close TEXT NOT NULL,
    volume TEXT NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
) WITHOUT ROWID
"""


def _ms(t: datetime) -> int:
    return ns(t) // 1_000_000


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms % 1000 else datetime.fromtimestamp(ms // 1000, tz=UTC)


class SqliteOhlcvStore:
    """OHLCV in a SQLite file (prices as exact decimal text), one connection per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(_SQLITE_DDL)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            self._local.conn = conn
        return conn

    def upsert(self, symbol: str, timeframe: str, bars: Iterable[Bar]) -> int:
        timeframe_delta(timeframe)
        sym = str(Symbol(symbol))
        rows = (
            (sym, timeframe, _ms(b.time), str(b.open), str(b.high), str(b.low), str(b.close), str(b.volume))
            for b in bars
        )
        conn = self._conn()
        with conn:
            cur = conn.executemany("INSERT OR REPLACE INTO ohlcv VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return cur.rowcount

    def load(
        self, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Bar]:
        sql = "SELECT ts, open, high, low, close, volume FROM ohlcv WHERE symbol = ? AND timeframe = ?"
        args: list[Any] = [str(Symbol(symbol)), timeframe]
        if start is not None:
            sql += " AND ts >= ?"
            args.append(_ms(start))
        if end is not None:
            sql += " AND ts < ?"
            args.append(_ms(end))
        sql += " ORDER BY ts"
        return [
            Bar(_from_ms(ts), Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v))
            for ts, o, h, lo, c, v in self._conn().execute(sql, args)
        ]

    def series(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT symbol, timeframe, COUNT(*), MIN(ts), MAX(ts) FROM ohlcv GROUP BY symbol, timeframe"
            " ORDER BY symbol, timeframe"
        )
        return [
            {"symbol": s, "timeframe": tf, "bars": n, "first": _from_ms(a), "last": _from_ms(b)}
            for s, tf, n, a, b in rows
        ]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_PG_DDL = """
CREATE TABLE IF NOT EXISTS ohlcv (
    symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    open NUMERIC NOT NULL,
    high NUMERIC NOT NULL,
    low NUMERIC NOT NULL,
    close NUMERIC NOT NULL,
    volume NUMERIC NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
)
"""


class PostgresOhlcvStore:
    """OHLCV in PostgreSQL (``NUMERIC`` prices: exact)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=False)
        self._lock = threading.Lock()
        with self._lock, self._conn.transaction():
            self._conn.execute(_PG_DDL)

    def upsert(self, symbol: str, timeframe: str, bars: Iterable[Bar]) -> int:
        timeframe_delta(timeframe)
        sym = str(Symbol(symbol))
        rows = [(sym, timeframe, b.time, b.open, b.high, b.low, b.close, b.volume) for b in bars]
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ohlcv VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (symbol, timeframe, ts)"
                " DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,"
                " close = EXCLUDED.close, volume = EXCLUDED.volume",
                rows,
            )
        return len(rows)

    def load(
        self, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Bar]:
        sql = "SELECT ts, open, high, low, close, volume FROM ohlcv WHERE symbol = %s AND timeframe = %s"
        args: list[Any] = [str(Symbol(symbol)), timeframe]
        if start is not None:
            sql += " AND ts >= %s"
            args.append(start)
        if end is not None:
            sql += " AND ts < %s"
            args.append(end)
        sql += " ORDER BY ts"
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(sql, args).fetchall()
        return [Bar(ts.astimezone(UTC), o, h, lo, c, v) for ts, o, h, lo, c, v in rows]

    def series(self) -> list[dict[str, Any]]:
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(
                "SELECT symbol, timeframe, COUNT(*), MIN(ts), MAX(ts) FROM ohlcv GROUP BY symbol, timeframe"
                " ORDER BY symbol, timeframe"
            ).fetchall()
        return [{"symbol": s, "timeframe": tf, "bars": n, "first": a, "last": b} for s, tf, n, a, b in rows]

    def close(self) -> None:
        self._conn.close()


def open_ohlcv_store(url: str) -> OhlcvStore:
    """``memory://``, ``sqlite:///path.db`` or ``postgresql://...`` (the read store's URL by default)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryOhlcvStore()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return SqliteOhlcvStore(rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return PostgresOhlcvStore(url.replace("postgresql+psycopg://", "postgresql://"))
    raise ValueError(f"unsupported market data URL {url!r}")


def import_csv(
    store: OhlcvStore,
    path: str | Path,
    symbol: str,
    timeframe: str,
    *,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Import a CSV into ``store`` in batches; ``progress(n)`` after each batch. Returns bars written."""
    timeframe_delta(timeframe)
    total = 0
    chunk: list[Bar] = []
    for bar in read_csv(path):
        chunk.append(bar)
        if len(chunk) >= batch:
            store.upsert(symbol, timeframe, chunk)
            total += len(chunk)
            if progress:
                progress(len(chunk))
            chunk = []
    if chunk:
        store.upsert(symbol, timeframe, chunk)
        total += len(chunk)
        if progress:
            progress(len(chunk))
    return total


def download_ccxt(
    exchange_id: str,
    symbol: str,
    timeframe: str,
    since: datetime,
    until: datetime | None = None,
    *,
    limit: int = 1000,
    exchange: Any | None = None,
) -> list[Bar]:
    """Fetch OHLCV from an exchange with ccxt; ``MarketDataUnavailable`` without ccxt or network."""
    if exchange is None:
        try:
            import ccxt  # type: ignore[import-not-found]
        except ImportError as exc:
            raise MarketDataUnavailable("ccxt is not installed (pip install ccxt)") from exc
        try:
            exchange = getattr(ccxt, exchange_id)({"enableRateLimit": True})
        except AttributeError:
            raise MarketDataError(f"unknown exchange {exchange_id!r}") from None
    step = timeframe_delta(timeframe)
    cursor = _ms(since)
    stop = _ms(until) if until is not None else None
    out: list[Bar] = []
    while True:
        try:
            rows = exchange.fetch_ohlcv(str(Symbol(symbol)), timeframe, since=cursor, limit=limit)
        except Exception as exc:  # ccxt's NetworkError and friends: no network here is normal
            raise MarketDataUnavailable(f"{exchange_id}: {type(exc).__name__}: {exc}") from exc
        if not rows:
            break
        for ts, o, h, lo, c, v in rows:
            if stop is not None and ts >= stop:
                return out
            out.append(
                Bar(
                    _from_ms(int(ts)),
                    Decimal(str(o)),
                    Decimal(str(h)),
                    Decimal(str(lo)),
                    Decimal(str(c)),
                    Decimal(str(v or 0)),
                )
            )
        last = int(rows[-1][0])
        if last < cursor:
            break
        cursor = last + int(step.total_seconds() * 1000)
        if len(rows) < limit:
            break
    return out
