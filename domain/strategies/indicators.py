"""Vectorised technical indicators over float64 arrays (numpy only).

Every indicator is causal: the value at bar ``i`` is computed from ``x[: i + 1]`` only,
and with the same arithmetic in the same order whatever the length of the series, so a
prefix of a series gives bit-for-bit the values of the whole series on that prefix (the
live runner, fed one bar at a time, and a backtest over the whole history agree exactly).
Bars before an indicator is defined are NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def _check_period(n: int, name: str = "period") -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer: {n!r}")


def rolling_sum(x: Array, n: int) -> Array:
    """Sum of the last ``n`` values, summed in a fixed order (newest first)."""
    _check_period(n)
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    m = x.size - n + 1
    if m <= 0:
        return out
    acc = x[n - 1 :].copy()
    for k in range(1, n):
        acc += x[n - 1 - k : n - 1 - k + m]
    out[n - 1 :] = acc
    return out


_MAX_EXACT = float(2**53)


def decimal_places(x: Array, max_places: int = 8) -> int | None:
    """The fewest decimal places that write every value of ``x`` exactly (None if more than ``max_places``)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not bool(np.all(np.isfinite(x))):
        return None
    start = 0
    if x.size > 4096:
        # The whole needs at least the places of any part: decide on a part first (full
        # precision data fails there at once instead of after a pass per place count).
        head = decimal_places(x[:4096], max_places)
        if head is None:
            return None
        start = head
    for d in range(start, max_places + 1):
        scale = 10.0**d
        scaled = np.round(x * scale)
        if np.abs(scaled).max(initial=0.0) >= _MAX_EXACT:
            return None
        if bool(np.all(scaled / scale == x)):
            return d
    return None


def sma(x: Array, n: int) -> Array:
    """Simple moving average of the last ``n`` values.

    Prices written with few decimals (all market data) are averaged exactly: the window
    sums are exact integers of the smallest price unit, divided once. Two averages that are
    equal in exact arithmetic are then equal here too, so a crossover is never decided by
    rounding noise. Other input is summed in floating point, in a fixed order.
    """
    _check_period(n)
    x = np.asarray(x, dtype=np.float64)
    d = decimal_places(x)
    if d is not None:
        scale = 10**d
        units = np.round(x * scale).astype(np.int64)
        m = x.size - n + 1
        out = np.full(x.shape, np.nan)
        if m <= 0:
            return out
        acc = units[n - 1 :].copy()
        for k in range(1, n):
            acc += units[n - 1 - k : n - 1 - k + m]
        if np.abs(acc).max(initial=0) < 2**53:
            out[n - 1 :] = acc.astype(np.float64) / float(n * scale)
            return out
    return rolling_sum(x, n) / n


def rolling_std(x: Array, n: int) -> Array:
    """Population standard deviation (ddof=0) of the last ``n`` values."""
    x = np.asarray(x, dtype=np.float64)
    mean = sma(x, n)
    out = np.full(x.shape, np.nan)
    m = x.size - n + 1
    if m <= 0:
        return out
    mu = mean[n - 1 :]
    acc = np.zeros(m)
    for k in range(n):
        d = x[n - 1 - k : n - 1 - k + m] - mu
        acc += d * d
    out[n - 1 :] = np.sqrt(acc / n)
    return out


def ema(x: Array, n: int) -> Array:
    """Exponential moving average, alpha = 2/(n+1), seeded with the SMA of the first ``n`` values.

    NaN input before the first finite value is skipped (so an EMA of an indicator works).
    """
    _check_period(n)
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(x))
    if finite.size == 0:
        return out
    start = int(finite[0])
    if x.size - start < n:
        return out
    alpha = 2.0 / (n + 1.0)
    beta = 1.0 - alpha
    seed_at = start + n - 1
    value = float(np.sum(x[start : seed_at + 1])) / n
    out[seed_at] = value
    values = x.tolist()
    res = out.tolist()
    for i in range(seed_at + 1, x.size):
        value = alpha * values[i] + beta * value
        res[i] = value
    return np.asarray(res, dtype=np.float64)


def macd(x: Array, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[Array, Array, Array]:
    """MACD line (EMA fast - EMA slow), its signal line (EMA of the line) and the histogram."""
    line = ema(x, fast) - ema(x, slow)
    sig = ema(line, signal)
    return line, sig, line - sig


def rsi(x: Array, n: int = 14) -> Array:
    """Wilder's relative strength index (0-100) over ``n`` bars."""
    _check_period(n)
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    if x.size <= n:
        return out
    diff = np.diff(x)
    gains = np.where(diff > 0, diff, 0.0).tolist()
    losses = np.where(diff < 0, -diff, 0.0).tolist()
    avg_gain = sum(gains[:n]) / n
    avg_loss = sum(losses[:n]) / n
    res = out.tolist()

    def value(g: float, lo: float) -> float:
        if lo == 0.0:
            return 100.0 if g > 0.0 else 50.0
        return 100.0 - 100.0 / (1.0 + g / lo)

    res[n] = value(avg_gain, avg_loss)
    k = n - 1
    for i in range(n, len(gains)):
        avg_gain = (avg_gain * k + gains[i]) / n
        avg_loss = (avg_loss * k + losses[i]) / n
        res[i + 1] = value(avg_gain, avg_loss)
    return np.asarray(res, dtype=np.float64)


def bollinger(x: Array, n: int = 20, k: float = 2.0) -> tuple[Array, Array, Array]:
    """Middle band (SMA), upper and lower bands at ``k`` population standard deviations."""
    mid = sma(x, n)
    sd = rolling_std(x, n)
    return mid, mid + k * sd, mid - k * sd


def momentum(x: Array, n: int = 10) -> Array:
    """Rate of change over ``n`` bars: ``x[i] / x[i-n] - 1``."""
    _check_period(n)
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    if x.size > n:
        out[n:] = x[n:] / x[:-n] - 1.0
    return out


def crossed_above(a: Array, b: Array | float) -> NDArray[np.bool_]:
    """True at ``i`` when ``a[i-1] < b[i-1]`` and ``a[i] > b[i]`` (strict, NaN never crosses)."""
    a = np.asarray(a, dtype=np.float64)
    bb = np.broadcast_to(np.asarray(b, dtype=np.float64), a.shape)
    out = np.zeros(a.shape, dtype=bool)
    if a.size > 1:
        with np.errstate(invalid="ignore"):
            out[1:] = (a[:-1] < bb[:-1]) & (a[1:] > bb[1:])
    return out


def crossed_below(a: Array, b: Array | float) -> NDArray[np.bool_]:
    """True at ``i`` when ``a[i-1] > b[i-1]`` and ``a[i] < b[i]``."""
    a = np.asarray(a, dtype=np.float64)
    bb = np.broadcast_to(np.asarray(b, dtype=np.float64), a.shape)
    out = np.zeros(a.shape, dtype=bool)
    if a.size > 1:
        with np.errstate(invalid="ignore"):
            out[1:] = (a[:-1] > bb[:-1]) & (a[1:] < bb[1:])
    return out
