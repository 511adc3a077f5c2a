"""A lane (one projection fed by the worker) on the real PostgreSQL read store, without a broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from helpers import FlakyProjection, LedgerProjection
from workload import make_bus

from adapters.eventstore.memory import InMemoryEventStore
from adapters.readstore.postgres import PostgresReadStore
from commands import messages as m
from domain.clock import ManualClock
from domain.envelope import RecordedEvent
from projections.store import MemoryTables
from streams.agents import Fed, FeedBatch, Lane, Mark, MarkBatch

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_read_store(postgres_dsn: str) -> Iterator[PostgresReadStore]:
    rs = PostgresReadStore(postgres_dsn, schema=f"lanes_{uuid.uuid4().hex[:8]}")
    yield rs
    rs.close()


def ledger_log() -> list[RecordedEvent]:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = InMemoryEventStore(clock)
    bus, _ = make_bus(store, clock)
    for a in range(2):
        bus.handle(m.OpenAccount(account_id=f"acc{a}", owner_id=f"u{a}"))
    for d in range(4):
        for a in range(2):
            clock.advance(timedelta(minutes=1))
            bus.handle(m.Deposit(account_id=f"acc{a}", amount=Decimal(100 + d)))
    return store.read_all(0, 10_000)


def batches(log: list[RecordedEvent], size: int, handles: frozenset[str]) -> list[FeedBatch]:
    out, after = [], 0
    for i in range(0, len(log), size):
        chunk = log[i:i + size]
        events = [Fed(r, 0, r.position) for r in chunk if r.type in handles]
        out.append(FeedBatch(after, chunk[-1].position, chunk[-1].ts_recorded, events))
        after = chunk[-1].position
    return out


def start(lane: Lane) -> Lane:
    lane.load()
    lane.active = True
    return lane


def test_a_projection_error_dead_letters_that_event_and_the_rest_is_applied(
    pg_read_store: PostgresReadStore,
) -> None:
    log = ledger_log()
    flaky = FlakyProjection()
    pg_read_store.register([flaky])
    lane = start(Lane(flaky, pg_read_store, commit_idle=0))
    dead = []
    for b in batches(log, 5, flaky.handles):
        dead += lane.process([b]).dead
    deposits = [r for r in log if r.type == "FundsDeposited"]
    poison = deposits[FlakyProjection.fail_at - 1]
    assert [(d.projection, d.position, d.event_type) for d in dead] == [("t_flaky", poison.position, "FundsDeposited")]
    assert "ZeroDivisionError" in dead[0].reason
    assert lane.position == log[-1].position == pg_read_store.checkpoint("t_flaky")

    expected = MemoryTables(LedgerProjection.tables)
    for rec in log:
        if rec is not poison and rec.type in LedgerProjection.handles:
            LedgerProjection().apply(expected, rec)
    stored = pg_read_store.load_model("t_flaky")
    for table in ("balances", "moves"):
        got = dict(stored.find(f"t_flaky_{table}"))
        assert got == expected.tables()[f"t_{table}"]


def test_a_redelivered_batch_changes_nothing_and_a_gap_asks_for_a_rewind(pg_read_store: PostgresReadStore) -> None:
    log = ledger_log()
    ledger = LedgerProjection()
    pg_read_store.register([ledger])
    lane = start(Lane(ledger, pg_read_store, commit_idle=0))
    first, second, *rest = batches(log, 2, ledger.handles)
    lane.process([first, second])
    before = dict(pg_read_store.load_model("t_ledger").find("t_balances"))
    assert not lane.process([first, second]).rewind  # at-least-once: again, no effect
    assert dict(pg_read_store.load_model("t_ledger").find("t_balances")) == before
    assert lane.process([rest[1]]).rewind  # rest[0] never arrived: go back for it
    assert lane.position == second.upto
    lane.process(rest)
    assert lane.position == log[-1].position


def test_marks_write_rows_without_moving_the_checkpoint(pg_read_store: PostgresReadStore) -> None:
    from projections.portfolio import PRICES, PortfolioProjection, mark

    portfolio = PortfolioProjection()
    pg_read_store.register([portfolio])
    lane = start(Lane(portfolio, pg_read_store, marker=mark, commit_idle=0))
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    result = lane.process([MarkBatch([Mark("BTC/USDT", Decimal("64000.5"), ts)])])
    assert result.notice is not None and result.notice.changed == {PRICES: {"BTC/USDT"}}
    assert pg_read_store.checkpoint("portfolio") == 0
    assert pg_read_store.get(PRICES, "BTC/USDT") == {"symbol": "BTC/USDT", "price": Decimal("64000.5"), "ts": ts,
                                                     "source": "mark"}
