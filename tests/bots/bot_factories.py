"""Builders for the bot tests: synthetic series, a simulation with one bot, event comparison."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domain.strategies import Bars  # noqa: E402

MINUTE_NS = 60 * 1_000_000_000
T0_NS = 1_577_836_800 * 1_000_000_000  # 2020-01-01T00:00:00Z


def random_walk(
    n: int,
    *,
    seed: int = 7,
    vol: float = 0.002,
    start: float = 100.0,
    decimals: int | None = None,
    step_ns: int = MINUTE_NS,
) -> Bars:
    """A seeded geometric random walk with consistent OHLC (full float precision unless ``decimals``)."""
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate(([start], close[:-1])) * np.exp(rng.normal(0.0, vol / 4, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, vol / 2, n)))
    if decimals is not None:
        open_, close = np.round(open_, decimals), np.round(close, decimals)
        high = np.maximum(np.round(high, decimals), np.maximum(open_, close))
        low = np.minimum(np.round(low, decimals), np.minimum(open_, close))
    t = T0_NS + np.arange(n, dtype=np.int64) * step_ns
    return Bars.from_arrays(t, open_, high, low, close, np.ones(n))


def events(store: Any) -> list[tuple[str, int, str, dict[str, Any]]]:
    """Every stored event as (stream, version, type, payload): ids are derived, so runs compare equal."""
    return [(r.stream_id, r.version, r.type, r.data) for r in store.read_all(0, 10**9)]


def of_type(store: Any, name: str) -> list[Any]:
    return [r.event for r in store.read_all(0, 10**9) if r.type == name]
