"""The composition root: builds the embedded system from settings. Nothing is built at import."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.eventstore import open_event_store
from adapters.market import PriceBook, StaticMarkets
from adapters.paper import PaperExecution
from adapters.settings import Settings
from adapters.time import SystemClock
from commands.bot_runner_handlers import RUNNER_HANDLERS
from commands.bus import CommandBus
from commands.handlers import HANDLERS
from commands.ports import EventStore
from commands.user_handlers import USER_HANDLERS
from domain.clock import Clock


@dataclass
class System:
    settings: Settings
    clock: Clock
    store: EventStore
    prices: PriceBook
    markets: StaticMarkets
    bus: CommandBus
    paper: PaperExecution

    def close(self) -> None:
        self.store.close()


def bootstrap(settings: Settings, *, clock: Clock | None = None, store: EventStore | None = None) -> System:
    """Wire the event store, market state, command bus and paper venue."""
    clock = clock or SystemClock()
    store = store or open_event_store(settings.event_store_url, clock)
    prices = PriceBook()
    markets = StaticMarkets(settings.symbols)
    bus = CommandBus(
        store,
        clock,
        prices,
        markets,
        cache_capacity=settings.aggregate_cache,
        snapshot_every=settings.snapshot_every,
        handlers={**HANDLERS, **USER_HANDLERS, **RUNNER_HANDLERS},
    )
    paper = PaperExecution(
        bus,
        store,
        prices,
        clock,
        fee_bps=settings.paper_fee_bps,
        slippage_bps=settings.paper_slippage_bps,
    )
    return System(settings=settings, clock=clock, store=store, prices=prices, markets=markets, bus=bus, paper=paper)
