"""The projection runner and rebuilds, with the real command bus, on every backend."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import EventStoreFactory, ReadStoreFactory
from helpers import FlakyProjection, LedgerProjection, all_projections, assert_same, dump, replay_dump
from structlog.testing import capture_logs
from workload import Session, make_bus

from commands import messages as m
from commands.ports import EventStore
from domain.clock import ManualClock
from domain.envelope import RecordedEvent
from projections.base import ReadModel
from projections.store import ReadStore
from streams.rebuild import RebuildProgress, rebuild
from streams.runner import ProjectionRunner


def session(store: EventStore, clock: ManualClock, seed: int = 7) -> Session:
    bus, prices = make_bus(store, clock)
    return Session(bus, prices, clock, seed=seed, max_accounts=12, max_bots=6)


def ledger_events(store: EventStore, clock: ManualClock, accounts: int = 3, deposits: int = 4) -> None:
    bus, _ = make_bus(store, clock)
    for a in range(accounts):
        bus.handle(m.OpenAccount(account_id=f"acc{a}", owner_id=f"u{a % 2}"))
    for d in range(deposits):
        for a in range(accounts):
            clock.advance(timedelta(minutes=1))
            bus.handle(m.Deposit(account_id=f"acc{a}", amount=Decimal(100 + d)))
    bus.handle(m.Withdraw(account_id="acc0", amount=Decimal("12.5")))
    bus.handle(m.EmergencyStop(account_id="acc0", reason="test"))
    bus.handle(m.ResumeTrading(account_id="acc0"))


def test_a_redelivered_batch_changes_nothing(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock)
    runner = ProjectionRunner(store, read_store, [LedgerProjection], batch_size=4)
    runner.catch_up()
    before = dump(read_store, [LedgerProjection])
    head = store.last_position()
    for after in (0, 5, head - 3):
        runner.process(store.read_all(after, 1000))  # at-least-once delivery: again
    restarted = ProjectionRunner(store, read_store, [LedgerProjection])
    assert restarted.catch_up() == 0
    assert read_store.checkpoint(LedgerProjection.name) == head
    assert_same(dump(read_store, [LedgerProjection]), before)
    assert_same(before, replay_dump(store, [LedgerProjection]))


def test_two_runners_on_one_projection_never_double_an_effect(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock)
    a = ProjectionRunner(store, read_store, [LedgerProjection], batch_size=5)
    b = ProjectionRunner(store, read_store, [LedgerProjection], batch_size=3)
    a.start()
    b.start()  # both loaded checkpoint 0
    a.catch_up()
    b.catch_up()  # its first commit is refused (stale checkpoint): it reloads and continues
    assert_same(dump(read_store, [LedgerProjection]), replay_dump(store, [LedgerProjection]))


def test_a_failing_projection_stops_alone_and_shows_why(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock)
    runner = ProjectionRunner(store, read_store, [LedgerProjection, FlakyProjection], batch_size=1)
    with capture_logs() as logs:
        runner.catch_up()
    status = {s.name: s for s in runner.status()}
    assert status["t_ledger"].state == "ok" and status["t_ledger"].position == store.last_position()
    flaky = status["t_flaky"]
    assert flaky.state == "failed" and "ZeroDivisionError: deliberate failure" in (flaky.error or "")
    failed = [entry for entry in logs if entry["event"] == "projection.failed"]
    assert len(failed) == 1 and failed[0]["projection"] == "t_flaky" and failed[0]["log_level"] == "error"
    # The failing batch was not committed: the checkpoint is just before the failing event.
    deposits = [r.position for r in store.read_all(0, 1000) if r.type == "FundsDeposited"]
    assert read_store.checkpoint("t_flaky") == deposits[2] - 1 == flaky.position
    [info] = read_store.copies("t_flaky")
    assert info.error == flaky.error


def test_listeners_hear_the_changed_keys_of_each_commit(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock, accounts=2, deposits=1)
    heard: list[tuple[str, dict[str, set[str]]]] = []
    runner = ProjectionRunner(store, read_store, [LedgerProjection], batch_size=100)
    runner.add_listener(lambda name, keys: heard.append((name, keys)))
    runner.catch_up()
    assert heard == [("t_ledger", {
        "t_balances": {"acc0", "acc1"},
        "t_moves": {"acc0:000002", "acc1:000002", "acc0:000003"},
    })]


def test_a_stale_version_is_rebuilt_at_start(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock)
    ProjectionRunner(store, read_store, [LedgerProjection]).catch_up()
    old_copy = read_store.active_copy("t_ledger")

    class LedgerV2(LedgerProjection):
        version = 2

    runner = ProjectionRunner(store, read_store, [LedgerV2])
    runner.catch_up()
    [info] = read_store.copies("t_ledger")
    assert info.version == 2 and info.copy != old_copy and info.position == store.last_position()
    assert_same(dump(read_store, [LedgerV2]), replay_dump(store, [LedgerV2]))


def test_rebuild_equals_incremental_row_for_row(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    projections = [*all_projections(), LedgerProjection]
    store = make_event_store(clock)
    s = session(store, clock)
    # Incremental: small batches, a tiny cache (reads go through to the store), and a
    # restart (a new runner) after every part of the session.
    for part in range(3):
        s.run(commands=800)
        runner = ProjectionRunner(store, read_store, projections, batch_size=17 + part * 40, max_cached_rows=50)
        runner.catch_up()
        assert all(st.state == "ok" for st in runner.status()), runner.status()
    assert s.commands >= 2400 and store.last_position() > 3000
    incremental = dump(read_store, projections)
    results = rebuild(store, read_store, projections, flush_every=1000)
    assert all(r.ok for r in results), results
    rebuilt = dump(read_store, projections)
    assert_same(rebuilt, incremental)
    assert_same(rebuilt, replay_dump(store, projections))
    for p in projections:
        assert read_store.checkpoint(p.name) == store.last_position()
    # The default: every row kept in memory and written once, by swaps that run side by side.
    results = rebuild(store, read_store, projections)
    assert all(r.ok and r.rows > 0 for r in results), results
    assert_same(dump(read_store, projections), incremental)
    for p in projections:
        assert read_store.checkpoint(p.name) == store.last_position()


def test_rebuild_under_concurrent_writes_ends_current_and_equal_to_a_replay(
    make_event_store: EventStoreFactory, make_read_store: ReadStoreFactory, clock: ManualClock
) -> None:
    projections = [*all_projections(), LedgerProjection]
    store = make_event_store(clock)
    read_store = make_read_store()
    s = session(store, clock, seed=11)
    s.run(commands=1000)
    live = ProjectionRunner(store, read_store, projections, batch_size=50)
    live.catch_up()
    copies_before = {p.name: read_store.active_copy(p.name) for p in projections}

    stop_writing = threading.Event()
    stop_runner = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            while not stop_writing.is_set():
                s.run(commands=20)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def run_live() -> None:
        try:
            live.run(stop_runner)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    tail = threading.Thread(target=run_live)
    with capture_logs() as logs:
        writer.start()
        tail.start()
        try:
            seen: list[RebuildProgress] = []
            results = rebuild(store, read_store, projections, flush_every=700, batch_size=300,
                              progress=seen.append)
            assert all(r.ok for r in results), results
            assert results[0].position > 1000 and seen[-1].phase == "done"
            s_commands = s.commands
            while s.commands < s_commands + 200 and writer.is_alive():
                stop_writing.wait(0.01)  # writes go on after the swap too
        finally:
            stop_writing.set()
            writer.join(60)
        head = store.last_position()
        try:
            assert live.wait_until(head, timeout=60), live.status()
        finally:
            stop_runner.set()
            tail.join(60)
    assert not errors, errors
    # The live runner noticed each swap (its old copy was gone) and moved to the new copy.
    reloaded = {e["projection"] for e in logs if e["event"] == "projection.reload"}
    assert reloaded == {p.name for p in projections}
    assert all(st.state == "ok" for st in live.status())
    for p in projections:
        assert read_store.active_copy(p.name) != copies_before[p.name]
        assert read_store.checkpoint(p.name) == head
    assert_same(dump(read_store, projections), replay_dump(store, projections))


def test_an_interrupted_rebuild_leaves_the_live_copy_untouched(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    s = session(store, clock, seed=3)
    s.run(commands=600)
    projections = [*all_projections(), LedgerProjection]
    ProjectionRunner(store, read_store, projections).catch_up()
    before = dump(read_store, projections)
    copies = {p.name: read_store.active_copy(p.name) for p in projections}

    def interrupt(progress: RebuildProgress) -> None:
        if progress.phase == "flush":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(store, read_store, projections, flush_every=200, batch_size=100, progress=interrupt)
    for p in projections:
        assert [c.copy for c in read_store.copies(p.name)] == [copies[p.name]]
    assert_same(dump(read_store, projections), before)
    # and a rebuild afterwards works
    assert all(r.ok for r in rebuild(store, read_store, projections))
    assert_same(dump(read_store, projections), before)


def test_rebuild_to_a_position_then_the_runner_catches_up(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    session(store, clock, seed=5).run(commands=500)
    projections = all_projections()
    middle = store.last_position() // 2
    results = rebuild(store, read_store, projections, to_position=middle)
    assert {r.position for r in results} == {middle}
    assert_same(dump(read_store, projections), replay_dump(store, projections, to_position=middle))
    ProjectionRunner(store, read_store, projections).catch_up()
    assert_same(dump(read_store, projections), replay_dump(store, projections))


def test_a_rebuild_with_bounded_memory_equals_a_replay(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    session(store, clock, seed=9).run(commands=700)
    projections = [*all_projections(), LedgerProjection]
    # A few hundred rows in memory: reads go through to the copy being built.
    results = rebuild(store, read_store, projections, max_rows=100, flush_every=250, batch_size=100)
    assert all(r.ok and r.position == store.last_position() for r in results), results
    assert_same(dump(read_store, projections), replay_dump(store, projections))


def test_an_update_outside_the_log_is_committed_in_the_runner_order(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock, accounts=2, deposits=1)
    runner = ProjectionRunner(store, read_store, [LedgerProjection])
    heard: list[tuple[str, dict[str, set[str]]]] = []
    runner.add_listener(lambda name, keys: heard.append((name, keys)))
    runner.catch_up()
    position = read_store.checkpoint("t_ledger")

    def mark(model: ReadModel) -> None:
        row = model.get("t_balances", "acc1")
        assert row is not None
        model.put("t_balances", "acc1", {**row, "note": "marked"})

    runner.update("t_ledger", mark)
    assert read_store.get("t_balances", "acc1")["note"] == "marked"  # type: ignore[index]
    assert read_store.checkpoint("t_ledger") == position and heard[-1] == ("t_ledger", {"t_balances": {"acc1"}})

    def broken(model: ReadModel) -> None:
        model.put("t_balances", "acc0", {"account_id": "acc0", "broken": True})
        raise ValueError("no")

    with pytest.raises(ValueError):
        runner.update("t_ledger", broken)
    assert "broken" not in read_store.get("t_balances", "acc0")  # type: ignore[operator]
    # Later events build on the marked row, not on a stale cached one.
    bus, _ = make_bus(store, clock)
    bus.handle(m.Deposit(account_id="acc1", amount=Decimal(5)))
    runner.catch_up()
    row = read_store.get("t_balances", "acc1")
    assert row is not None and row["note"] == "marked" and row["cash"] == Decimal(105)


def test_a_new_projection_facing_a_long_log_starts_with_a_rebuild(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    session(store, clock, seed=12).run(commands=300)
    projections = [*all_projections(), LedgerProjection]
    runner = ProjectionRunner(store, read_store, projections, rebuild_empty_from=100)
    runner.start()
    assert all(info.rebuilt_at is not None for info in read_store.copies())
    assert runner.catch_up() == 0
    assert_same(dump(read_store, projections), replay_dump(store, projections))


def test_a_stale_projection_whose_rebuild_fails_is_stopped(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    ledger_events(store, clock)
    ProjectionRunner(store, read_store, [LedgerProjection]).catch_up()

    class BrokenV2(LedgerProjection):
        version = 2

        def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
            raise KeyError("v2 bug")

    runner = ProjectionRunner(store, read_store, [BrokenV2])
    runner.catch_up()
    [status] = runner.status()
    assert status.state == "failed" and "v2 bug" in (status.error or "")
    [info] = read_store.copies("t_ledger")
    assert info.version == 1 and info.error == status.error  # the old copy stays, marked failed


@pytest.mark.timeout(120)
def test_a_rebuild_slower_than_the_writers_still_finishes(
    make_event_store: EventStoreFactory, read_store: ReadStore, clock: ManualClock
) -> None:
    store = make_event_store(clock)
    s = session(store, clock, seed=17)
    s.run(commands=300)
    start_head = store.last_position()
    stop = threading.Event()
    writer = threading.Thread(target=lambda: [s.run(commands=5) for _ in iter(stop.is_set, True)])
    writer.start()
    try:
        def slow(progress: RebuildProgress) -> None:
            stop.wait(0.02)  # a replay far slower than the writers

        results = rebuild(store, read_store, [LedgerProjection], batch_size=20, progress=slow)
    finally:
        stop.set()
        writer.join(60)
    assert results[0].ok and results[0].position >= start_head
    runner = ProjectionRunner(store, read_store, [LedgerProjection])
    runner.catch_up()
    assert_same(dump(read_store, [LedgerProjection]), replay_dump(store, [LedgerProjection]))
