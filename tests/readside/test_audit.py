"""Audit: the state at T equals what the system had decided by T."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import EventStoreFactory
from helpers import canon, replay_dump
from workload import Session, make_bus

from adapters.readstore.memory import MemoryReadStore
from domain.account import Account
from domain.bot import Bot
from domain.clock import ManualClock
from domain.envelope import RecordedEvent
from projections.registry import get
from streams.audit import audit_stream, portfolio_at
from streams.rebuild import rebuild

Timeline = dict[str, list[tuple[datetime, int, dict[str, Any]]]]


@pytest.fixture
def recorded(make_event_store: EventStoreFactory, clock: ManualClock) -> tuple[Any, Timeline]:
    """A session, and for every stream the state after each of its commits (as the bus saw it)."""
    store = make_event_store(clock)
    bus, prices = make_bus(store, clock)
    timeline: Timeline = {}

    def on_commit(events: list[RecordedEvent]) -> None:
        if not events:
            return
        last = events[-1]
        cls = Account if last.stream_id.startswith("account-") else Bot
        agg = bus.repo.load(cls, last.stream_id.partition("-")[2])
        timeline.setdefault(last.stream_id, []).append((last.ts_recorded, agg.version, agg.to_snapshot()))  # type: ignore[attr-defined]

    bus.on_committed.append(on_commit)
    Session(bus, prices, clock, seed=13, max_accounts=6, max_bots=4).run(commands=900)
    return store, timeline


def expected_at(history: list[tuple[datetime, int, dict[str, Any]]], at: datetime) -> tuple[int, dict[str, Any] | None]:
    version, state = 0, None
    for ts, v, snap in history:
        if ts <= at:
            version, state = v, snap
    return version, state


def probe_times(history: list[tuple[datetime, int, dict[str, Any]]], rng: random.Random) -> list[datetime]:
    times = [ts for ts, _, _ in history]
    picks = rng.sample(times, min(8, len(times)))
    return sorted({times[0] - timedelta(seconds=1), times[-1] + timedelta(days=1),
                   *picks, *(t + timedelta(milliseconds=500) for t in picks)})


def test_stream_state_at_t_is_what_the_bus_had_decided_by_t(recorded: tuple[Any, Timeline]) -> None:
    store, timeline = recorded
    rng = random.Random(1)
    streams = [s for s in timeline if s.startswith("account-")][:3] + [s for s in timeline if s.startswith("bot-")][:2]
    assert len(streams) == 5
    for stream_id in streams:
        history = timeline[stream_id]
        for at in probe_times(history, rng):
            audit = audit_stream(store, stream_id, at)
            version, state = expected_at(history, at)
            assert audit.version == version
            assert all(e.ts_recorded <= at for e in audit.events)
            assert [e.version for e in audit.events] == list(range(1, version + 1))
            if state is None:
                cls = Account if stream_id.startswith("account-") else Bot
                state = cls(stream_id.partition("-")[2]).to_snapshot()  # type: ignore[attr-defined]
            assert canon(audit.state) == canon(state), (stream_id, at)


def test_audit_without_a_time_is_the_current_state(recorded: tuple[Any, Timeline]) -> None:
    store, timeline = recorded
    stream_id = next(iter(timeline))
    audit = audit_stream(store, stream_id)
    assert audit.version == timeline[stream_id][-1][1]
    assert canon(audit.to_dict()["state"]) == canon(timeline[stream_id][-1][2])


def test_audit_refuses_unknown_streams_and_naive_times(recorded: tuple[Any, Timeline]) -> None:
    store, _ = recorded
    with pytest.raises(ValueError):
        audit_stream(store, "user-1")
    with pytest.raises(ValueError):
        audit_stream(store, "account-acc-1", datetime(2026, 1, 1))


def test_portfolio_at_t_equals_the_portfolio_replayed_to_t(recorded: tuple[Any, Timeline]) -> None:
    store, timeline = recorded
    portfolio = get("portfolio")
    events = store.read_all(0, 10**9)
    rng = random.Random(2)
    accounts = [s.partition("-")[2] for s in timeline if s.startswith("account-")][:3]
    for at in sorted(rng.sample([e.ts_recorded for e in events], 4)):
        position = max(e.position for e in events if e.ts_recorded <= at)
        whole = replay_dump(store, [portfolio], to_position=position)["portfolio"]
        for account_id in accounts:
            audit = portfolio_at(store, account_id, at)
            for table, rows in whole.items():
                want = {k: r for k, r in rows.items() if r.get("account_id") == account_id}
                assert canon(audit.tables[table]) == canon(want), (account_id, at, table)
            assert audit.tables["portfolio_accounts"], account_id


def test_portfolio_at_t_is_empty_before_the_account_existed(recorded: tuple[Any, Timeline]) -> None:
    store, timeline = recorded
    stream_id = next(s for s in timeline if s.startswith("account-"))
    first = timeline[stream_id][0][0]
    audit = portfolio_at(store, stream_id.partition("-")[2], first - timedelta(seconds=1))
    assert audit.version == 0 and all(not rows for rows in audit.tables.values())


def test_rebuild_to_a_position_is_a_consistent_past(recorded: tuple[Any, Timeline]) -> None:
    store, _ = recorded
    memory = MemoryReadStore()
    results = rebuild(store, memory, [get("portfolio")], to_position=100)
    assert results[0].position == 100 and memory.checkpoint("portfolio") == 100
