"""64 concurrent place-order commands on one account, from two command buses (two "processes").

No overdraft, no risk limit broken, every refusal recorded, and the final state equals a
replay of the stored events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.eventstore import open_event_store
from adapters.eventstore.postgres import PostgresEventStore
from adapters.market import PriceBook, StaticMarkets
from adapters.paper import PaperExecution
from commands.bus import CommandBus
from commands.messages import Deposit, OpenAccount, PlaceOrder, RecordFill, SetRiskLimits
from commands.ports import EventStore
from domain.account import Account
from domain.account_events import OrderAccepted, OrderRejected
from domain.clock import ManualClock
from domain.values import HUNDRED, Side

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"]
PRICES = {
    "BTC/USDT": Decimal("50000"),
    "ETH/USDT": Decimal("3000"),
    "SOL/USDT": Decimal("150"),
    "BNB/USDT": Decimal("600"),
    "XRP/USDT": Decimal("0.5"),
}


StoreFactory = Callable[[ManualClock], EventStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Open a store on the same data; two calls are two independent writers (two processes)."""
    if request.param == "memory":
        shared: list[EventStore] = []

        def memory(clock: ManualClock) -> EventStore:
            if not shared:
                shared.append(open_event_store("memory://", clock))
            return shared[0]

        yield memory
    elif request.param == "sqlite":
        yield lambda clock: open_event_store(f"sqlite:///{tmp_path}/events.db", clock)
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        yield lambda clock: PostgresEventStore(dsn, clock, schema="concurrent_orders")


def _buses(open_store: StoreFactory, clock: ManualClock) -> tuple[list[EventStore], list[CommandBus], PriceBook]:
    prices = PriceBook()
    for sym, px in PRICES.items():
        prices.update(sym, px)
    markets = StaticMarkets(SYMBOLS)
    stores = [open_store(clock), open_store(clock)]
    buses = [CommandBus(s, clock, prices, markets) for s in stores]
    return stores, buses, prices


def test_64_concurrent_orders_respect_funds_and_limits_and_equal_replay(open_store: StoreFactory) -> None:
    clock = ManualClock(datetime(2026, 3, 2, 12, tzinfo=UTC))
    stores, buses, prices = _buses(open_store, clock)
    try:
        bus = buses[0]
        bus.handle(OpenAccount(account_id="acc1", owner_id="u1"))
        bus.handle(Deposit(account_id="acc1", amount=Decimal("10000")))
        bus.handle(
            SetRiskLimits(
                account_id="acc1",
                max_position_size_pct=Decimal(30),
                max_open_positions=3,
                max_daily_loss_pct=Decimal(5),
                max_drawdown_pct=Decimal(15),
                max_leverage=Decimal(3),
            )
        )
        results: list[dict[str, object]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(64)

        def place(i: int) -> None:
            sym = SYMBOLS[i % len(SYMBOLS)]
            # Each order's margin is about 10% of equity: a few fit, most must be refused.
            qty = (Decimal(1000) + Decimal(i)) / PRICES[sym]
            cmd = PlaceOrder(
                account_id="acc1",
                symbol=sym,
                side=Side.BUY,
                quantity=qty.quantize(Decimal("0.00001")),
                idempotency_key=f"k{i}",
            )
            start.wait()
            try:
                res = buses[i % 2].handle(cmd)
                with lock:
                    results.append(res)
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=place, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(results) == 64

        stored = stores[0].read_stream("account-acc1")
        decisions = [r.event for r in stored if isinstance(r.event, OrderAccepted | OrderRejected)]
        assert len(decisions) == 64, "every command decided exactly once, refusals recorded"
        assert len({d.order_id for d in decisions}) == 64
        accepted = [d for d in decisions if isinstance(d, OrderAccepted)]
        rejected = [d for d in decisions if isinstance(d, OrderRejected)]
        assert accepted and rejected
        assert {r.reason_code for r in rejected} <= {"INSUFFICIENT_FUNDS", "RISK_LIMIT_EXCEEDED"}
        by_result = {str(r["order_id"]): r["status"] for r in results}
        assert by_result == {
            d.order_id: ("accepted" if isinstance(d, OrderAccepted) else "rejected") for d in decisions
        }

        replayed = Account("acc1")
        replayed.replay(r.event for r in stored)
        s = replayed.s
        assert s.reserved <= s.cash, "no overdraft"
        assert len({o.symbol for o in s.orders.values()}) <= 3, "max open positions respected"
        for sym in SYMBOLS:
            margin = sum((o.remaining * PRICES[sym] for o in s.orders.values() if o.symbol == sym), Decimal(0))
            assert margin / s.cash * HUNDRED <= Decimal(30), f"position size limit on {sym}"

        # The buses' in-memory aggregates agree with the replay of what was stored.
        for b in buses:
            live = b.repo.load(Account, "acc1")
            fresh = b.repo.load_from_store(Account, "acc1")
            assert fresh.to_snapshot() == replayed.to_snapshot()
            if live.version == fresh.version:
                assert live.to_snapshot() == replayed.to_snapshot()

        # Fill everything that was accepted: cash never goes negative, state still equals a replay.
        paper = PaperExecution(buses[0], stores[0], prices, clock, fee_bps=Decimal(10))
        paper.recover()
        final = Account("acc1")
        final.replay(r.event for r in stores[0].read_stream("account-acc1"))
        assert not final.s.orders
        assert final.s.reserved == 0
        assert final.s.cash >= 0
        assert len(final.s.positions) == len({a.symbol for a in accepted})
    finally:
        for st in {id(s): s for s in stores}.values():
            st.close()


def test_snapshots_of_accounts_holding_positions_are_stored_and_restore_the_state(open_store: StoreFactory) -> None:
    """A snapshot every 10 events while the account holds positions keyed by symbol: it is
    written through the real store's codec, loads back, and equals a replay of the stream."""
    clock = ManualClock(datetime(2026, 3, 2, 12, tzinfo=UTC))
    prices = PriceBook()
    for sym, px in PRICES.items():
        prices.update(sym, px)
    store = open_store(clock)
    try:
        bus = CommandBus(store, clock, prices, StaticMarkets(SYMBOLS), snapshot_every=10)
        bus.handle(OpenAccount(account_id="snap", owner_id="u1"))
        bus.handle(Deposit(account_id="snap", amount=Decimal("100000")))
        for i in range(12):
            sym = SYMBOLS[i % 3]
            placed = bus.handle(PlaceOrder(account_id="snap", symbol=sym, side=Side.BUY, quantity=Decimal("0.01")))
            bus.handle(
                RecordFill(account_id="snap", order_id=str(placed["order_id"]), fill_id=f"f{i}",
                           quantity=Decimal("0.01"), price=PRICES[sym], fee=Decimal("0.1"))
            )

        snapshot = store.load_snapshot("account-snap")
        assert snapshot is not None and snapshot.version >= 30
        restored = Account.from_snapshot("snap", snapshot.version, snapshot.state)
        assert set(restored.s.positions) == set(SYMBOLS[:3])
        replayed = Account("snap")
        replayed.replay(r.event for r in store.read_stream("account-snap", 1) if r.version <= snapshot.version)
        assert restored.to_snapshot() == replayed.to_snapshot()
        fresh = CommandBus(store, clock, prices, StaticMarkets(SYMBOLS)).repo.load_from_store(Account, "snap")
        full = Account("snap")
        full.replay(r.event for r in store.read_stream("account-snap"))
        assert fresh.to_snapshot() == full.to_snapshot()
    finally:
        store.close()
