"""In-process market state: the last price per symbol and the list of tradable symbols."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal

from domain.values import Symbol

PriceListener = Callable[[str, Decimal, datetime | None], None]


class PriceBook:
    """Last known price (and its venue time) per symbol; thread-safe.

    Every price passes through ``update``, so listeners (the bot supervisor's bar builders)
    see the same ticks as the paper venue, whatever fed them: the simulation endpoint, a
    market-data feed or the Kafka market-data agent.
    """

    def __init__(self) -> None:
        self._prices: dict[str, tuple[Decimal, datetime | None]] = {}
        self._lock = threading.Lock()
        self._listeners: tuple[PriceListener, ...] = ()

    def update(self, symbol: str, price: Decimal, ts: datetime | None = None) -> None:
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise ValueError(f"price must be a positive Decimal: {price!r}")
        sym = str(symbol if type(symbol) is Symbol else Symbol(symbol))  # a Symbol is normalised already
        with self._lock:
            self._prices[sym] = (price, ts)
            listeners = self._listeners
        for listener in listeners:  # outside the lock: a listener may read prices
            listener(sym, price, ts)

    def add_listener(self, listener: PriceListener) -> None:
        """Call ``listener(symbol, price, ts)`` after every update."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: PriceListener) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    def last_price(self, symbol: Symbol) -> Decimal | None:
        with self._lock:
            entry = self._prices.get(symbol)  # a Symbol hashes and compares as its text
        return entry[0] if entry else None

    def last(self, symbol: str) -> tuple[Decimal, datetime | None] | None:
        with self._lock:
            return self._prices.get(str(symbol))

    def snapshot(self) -> dict[str, Decimal]:
        with self._lock:
            return {s: p for s, (p, _) in self._prices.items()}


class StaticMarkets:
    """A fixed list of tradable symbols (from settings, or from the exchange's market list)."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self._symbols = frozenset(str(Symbol(s)) for s in symbols)

    def is_tradable(self, symbol: Symbol) -> bool:
        return str(symbol) in self._symbols

    def symbols(self) -> list[str]:
        return sorted(self._symbols)
