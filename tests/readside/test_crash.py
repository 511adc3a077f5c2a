"""Crash safety: runners and rebuilds killed with SIGKILL, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import T0, unique
from helpers import LedgerProjection, all_projections, assert_same, dump, replay_dump
from workload import Session, make_bus

from adapters.eventstore import open_event_store
from adapters.readstore import open_read_store
from commands.ports import EventStore
from domain.clock import ManualClock
from projections.store import ReadStore
from streams.rebuild import rebuild
from streams.runner import ProjectionRunner

SCRIPT = Path(__file__).resolve().parent / "crash_runner.py"
ROOT = Path(__file__).resolve().parents[2]


def pg_url(dsn: str, schema: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    auth = str(p.get("user", "postgres")) + (f":{p['password']}" if p.get("password") else "")
    return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}?schema={schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}", f"sqlite:///{tmp_path / 'read.db'}"
    dsn = request.getfixturevalue("postgres_dsn")
    return pg_url(dsn, unique("es")), pg_url(dsn, unique("rs"))


@pytest.fixture
def stores(urls: tuple[str, str]) -> Iterator[tuple[EventStore, ReadStore, ManualClock]]:
    clock = ManualClock(T0)
    store = open_event_store(urls[0], clock)
    read_store = open_read_store(urls[1])
    yield store, read_store, clock
    read_store.close()
    store.close()


class Child:
    """The crash script in a subprocess, its stdout lines on a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=ROOT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.lines.get(timeout=0.1) == marker:
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"child exited with {self.proc.returncode} before {marker}") from None
        raise AssertionError(f"no {marker} within {timeout}s")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL


PROJECTIONS = [*all_projections(), LedgerProjection]


def test_a_runner_killed_mid_batch_restarts_and_ends_equal_to_a_replay(
    urls: tuple[str, str], stores: tuple[EventStore, ReadStore, ManualClock]
) -> None:
    store, read_store, clock = stores
    bus, prices = make_bus(store, clock)
    session = Session(bus, prices, clock, seed=21, max_accounts=10, max_bots=5)
    session.run(commands=1200)
    rng = random.Random(5)
    args = ["--events", urls[0], "--read", urls[1]]

    # Killed inside a commit: rows written, checkpoint not yet.
    child = Child("run", *args, "--pause-at-commit", "12")
    child.wait_for("MID-COMMIT")
    before = dump(read_store, PROJECTIONS)
    checkpoints = {p.name: read_store.checkpoint(p.name) for p in PROJECTIONS}
    child.kill()
    assert_same(dump(read_store, PROJECTIONS), before)
    assert {p.name: read_store.checkpoint(p.name) for p in PROJECTIONS} == checkpoints
    assert max(checkpoints.values()) > 0  # it had committed some batches before

    # Killed at random moments, with a backlog to work through and writes going on.
    progress = []
    for _ in range(4):
        session.run(commands=300)
        child = Child("run", *args, "--batch", "1")
        child.wait_for("STARTED")
        writer = threading.Thread(target=session.run, kwargs={"commands": 100})
        writer.start()
        time.sleep(rng.uniform(0.1, 0.6))
        child.kill()
        head = store.last_position()
        progress.append((min(read_store.checkpoint(p.name) for p in PROJECTIONS), head))
        writer.join()
    assert any(done < head for done, head in progress), progress  # killed while it had work
    assert progress[-1][0] > progress[0][0], progress  # and it progressed across restarts

    # Restart (crash-only: the same start-up path) and finish.
    ProjectionRunner(store, read_store, PROJECTIONS).catch_up()
    for p in PROJECTIONS:
        assert read_store.checkpoint(p.name) == store.last_position()
    assert_same(dump(read_store, PROJECTIONS), replay_dump(store, PROJECTIONS))


def test_a_rebuild_killed_midway_leaves_the_live_copy_and_is_cleaned_up_next_time(
    urls: tuple[str, str], stores: tuple[EventStore, ReadStore, ManualClock]
) -> None:
    store, read_store, clock = stores
    bus, prices = make_bus(store, clock)
    Session(bus, prices, clock, seed=8, max_accounts=10, max_bots=5).run(commands=800)
    ProjectionRunner(store, read_store, PROJECTIONS).catch_up()
    live = dump(read_store, PROJECTIONS)
    copies = {p.name: read_store.active_copy(p.name) for p in PROJECTIONS}

    child = Child("rebuild", "--events", urls[0], "--read", urls[1])
    child.wait_for("MID-REBUILD")
    child.kill()

    leftovers = [c for c in read_store.copies() if not c.active]
    assert {c.name for c in leftovers} == {p.name for p in PROJECTIONS}
    assert all(c.position > 0 for c in leftovers)  # its flushes were written
    assert {p.name: read_store.active_copy(p.name) for p in PROJECTIONS} == copies
    assert_same(dump(read_store, PROJECTIONS), live)

    results = rebuild(store, read_store, PROJECTIONS)
    assert all(r.ok for r in results)
    remaining = read_store.copies()
    assert all(c.active for c in remaining) and len(remaining) == len(PROJECTIONS)
    assert_same(dump(read_store, PROJECTIONS), live)
