"""Fixtures of the read-side tests: read stores and event stores on every backend.

PostgreSQL comes from the ``postgres_dsn`` fixture of ``tests/conftest.py`` (one fresh
database per session); each test gets its own schemas in it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # workload.py, helpers.py

from adapters.eventstore.memory import InMemoryEventStore  # noqa: E402
from adapters.readstore.memory import MemoryReadStore  # noqa: E402
from adapters.readstore.sqlite import SqliteReadStore  # noqa: E402
from commands.ports import EventStore  # noqa: E402
from domain.clock import ManualClock  # noqa: E402
from projections.store import ReadStore  # noqa: E402

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_dsn"))


ReadStoreFactory = Callable[..., ReadStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_read_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ReadStoreFactory]:
    """Open read stores of the current backend; ``same=True`` opens another handle on the last one."""
    opened: list[Any] = []
    last: dict[str, Any] = {}

    def make(*, same: bool = False, **kwargs: Any) -> ReadStore:
        if backend == "memory":
            if same:
                raise pytest.skip("one memory store cannot be opened twice")
            store: Any = MemoryReadStore(**kwargs)
        elif backend == "sqlite":
            path = last["path"] if same else tmp_path / f"{unique('read')}.db"
            last["path"] = path
            store = SqliteReadStore(path, **kwargs)
        else:
            from adapters.readstore.postgres import PostgresReadStore

            dsn = request.getfixturevalue("postgres_dsn")
            schema = last["schema"] if same else unique("rs")
            last["schema"] = schema
            store = PostgresReadStore(dsn, schema=schema, **kwargs)
        opened.append(store)
        return store  # type: ignore[no-any-return]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def read_store(make_read_store: ReadStoreFactory) -> ReadStore:
    return make_read_store()


EventStoreFactory = Callable[[ManualClock], EventStore]


@pytest.fixture
def make_event_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EventStoreFactory]:
    """Event stores of the current backend (memory read store -> memory event store)."""
    opened: list[EventStore] = []

    def make(clock: ManualClock) -> EventStore:
        if backend == "memory":
            store: EventStore = InMemoryEventStore(clock)
        elif backend == "sqlite":
            from adapters.eventstore.sqlite import SqliteEventStore

            store = SqliteEventStore(tmp_path / f"{unique('events')}.db", clock)
        else:
            from adapters.eventstore.postgres import PostgresEventStore

            store = PostgresEventStore(request.getfixturevalue("postgres_dsn"), clock, schema=unique("es"))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)
