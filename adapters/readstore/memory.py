"""In-process read store: the reference behaviour of the ``ReadStore`` port.

Rows are deep-copied on the way in and out (as a database would), a commit is applied
under one lock with an undo log, so a failure half way leaves nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.clock import Clock
from projections.base import Page, Projection, Query, ReadModel, Row, TableSpec
from projections.store import (
    Changes,
    CopyInfo,
    MemoryTables,
    RebuildInProgress,
    StaleCopy,
    UnknownTable,
    check_query,
    evaluate_query,
    table_owners,
)

Fault = Callable[[str], None]


def clone(value: Any) -> Any:
    """Copy a JSON-like value (dicts and lists deep, scalars shared: they are immutable)."""
    t = type(value)
    if t is dict:
        return {k: (clone(v) if type(v) in _CONTAINERS else v) for k, v in value.items()}
    if t is list or t is tuple:
        return [clone(v) for v in value]
    return value


_CONTAINERS = (dict, list, tuple)


def _same(value: Any) -> Any:
    return value


def _utcnow() -> datetime:
    from adapters.time import SystemClock

    return SystemClock().now()


@dataclass(slots=True)
class _Copy:
    name: str
    copy: int
    version: int
    specs: tuple[TableSpec, ...]
    tables: MemoryTables
    created_at: datetime
    position: int = 0
    updated_at: datetime | None = None
    rebuilt_at: datetime | None = None
    last_event_ts: datetime | None = None
    error: str | None = None
    retired: bool = field(default=False)


class MemoryReadStore:
    """Every projection copy in dicts; ``fault`` is a test hook called inside commits."""

    def __init__(self, *, clock: Clock | None = None, fault: Fault | None = None) -> None:
        self._now = clock.now if clock is not None else _utcnow
        self.fault = fault
        self._lock = threading.RLock()
        self._copies: dict[tuple[str, int], _Copy] = {}
        self._active: dict[str, int] = {}
        self._rebuilding: set[str] = set()
        self._numbers: dict[str, int] = {}

    # --- registration and copies ------------------------------------------------------

    def register(self, projections: Iterable[Projection | type[Projection]]) -> None:
        projections = list(projections)
        with self._lock:
            incoming = {p.name for p in projections}
            table_owners(
                [(n, self._copies[(n, c)].specs) for n, c in self._active.items() if n not in incoming]
                + [(p.name, p.tables) for p in projections]
            )
            for p in projections:
                if p.name not in self._active:
                    copy = self._new_copy(p)
                    self._active[p.name] = copy.copy

    def _new_copy(self, p: Projection | type[Projection]) -> _Copy:
        number = self._numbers.get(p.name, 0) + 1  # never reused
        self._numbers[p.name] = number
        specs = tuple(p.tables)
        copy = _Copy(
            name=p.name, copy=number, version=p.version, specs=specs,
            tables=MemoryTables(specs), created_at=self._now(),
        )
        self._copies[(p.name, number)] = copy
        return copy

    def active_copy(self, name: str) -> int:
        with self._lock:
            try:
                return self._active[name]
            except KeyError:
                raise LookupError(f"projection {name} is not registered") from None

    def _copy(self, name: str, copy: int | None) -> _Copy:
        number = self.active_copy(name) if copy is None else copy
        c = self._copies.get((name, number))
        if c is None or c.retired:
            raise StaleCopy(name, number, "copy is gone")
        return c

    def checkpoint(self, name: str, copy: int | None = None) -> int:
        with self._lock:
            return self._copy(name, copy).position

    def copies(self, name: str | None = None) -> list[CopyInfo]:
        with self._lock:
            return [
                CopyInfo(
                    name=c.name, copy=c.copy, active=self._active.get(c.name) == c.copy,
                    version=c.version, position=c.position, tables=c.specs,
                    created_at=c.created_at, updated_at=c.updated_at, rebuilt_at=c.rebuilt_at,
                    last_event_ts=c.last_event_ts, error=c.error,
                )
                for (n, _), c in sorted(self._copies.items())
                if name is None or n == name
            ]

    def set_error(self, name: str, error: str | None, *, copy: int | None = None) -> None:
        with self._lock:
            self._copy(name, copy).error = error

    # --- writing ----------------------------------------------------------------------

    def commit(
        self,
        name: str,
        changes: Changes,
        position: int,
        *,
        copy: int | None = None,
        expected: int | None = None,
        last_event_ts: datetime | None = None,
    ) -> None:
        with self._lock:
            c = self._copy(name, copy)
            _check_checkpoint(c, position, expected)
            self._write(c, changes, position, last_event_ts)

    def _write(self, c: _Copy, changes: Changes | None, position: int | None,
               last_event_ts: datetime | None, *, swap: bool = False) -> None:
        # A swap's rows are handed over (the rebuild drops its model): no copy needed.
        own = clone if not swap else _same
        tables = c.tables
        undo: list[tuple[str, str, Row | None]] = []
        # A swap into a copy that holds nothing yet (a rebuild that never flushed) loads
        # the rows in bulk; undoing it empties the copy again.
        bulk = swap and len(tables) == 0
        state = (c.position, c.last_event_ts, c.updated_at, c.error, c.rebuilt_at)
        try:
            for table, rows in (changes or {}).items():
                if bulk:
                    tables.load(table, rows)
                    continue
                for key, row in rows.items():
                    undo.append((table, key, tables.get(table, key)))
                    if row is None:
                        tables.delete(table, key)
                    else:
                        tables.put(table, key, own(row))
            if self.fault is not None:
                self.fault("rows")
            if position is not None:
                c.position = position
                c.last_event_ts = last_event_ts
            c.updated_at = self._now()
            c.error = None
            if swap:
                c.rebuilt_at = c.updated_at
            if self.fault is not None:
                self.fault("commit")
        except BaseException:
            if bulk:
                tables.clear()
            for table, key, old in reversed(undo):
                if old is None:
                    tables.delete(table, key)
                else:
                    tables.put(table, key, old)
            c.position, c.last_event_ts, c.updated_at, c.error, c.rebuilt_at = state
            raise

    # --- reading ----------------------------------------------------------------------

    def _owner(self, table: str) -> _Copy:
        for name, number in self._active.items():
            c = self._copies[(name, number)]
            if any(s.name == table for s in c.specs):
                return c
        raise UnknownTable(f"no registered projection has a table {table!r}")

    def get(self, table: str, key: str) -> Row | None:
        with self._lock:
            row = self._owner(table).tables.get(table, key)
            return None if row is None else clone(row)

    def query(self, query: Query) -> Page:
        with self._lock:
            c = self._owner(query.table)
            spec = next(s for s in c.specs if s.name == query.table)
            check_query(spec, query)
            page = evaluate_query(spec, query, c.tables.find(query.table, **query.equals))
            return Page(items=[clone(r) for r in page.items], total=page.total,
                        limit=page.limit, offset=page.offset)

    def load_model(self, name: str, copy: int | None = None) -> ReadModel:
        with self._lock:
            number = self._copy(name, copy).copy
        return _CopyView(self, name, number)

    # --- rebuilds ---------------------------------------------------------------------

    def begin_rebuild(self, projection: Projection | type[Projection]) -> int:
        name = projection.name
        with self._lock:
            if name in self._rebuilding:
                raise RebuildInProgress(f"projection {name} is being rebuilt")
            self.register([projection])
            active = self._active[name]
            for key in [k for k in self._copies if k[0] == name and k[1] != active]:
                self._copies.pop(key).retired = True
            copy = self._new_copy(projection)
            self._rebuilding.add(name)
            return copy.copy

    def swap(
        self,
        name: str,
        copy: int,
        changes: Changes | None = None,
        position: int | None = None,
        *,
        last_event_ts: datetime | None = None,
    ) -> None:
        with self._lock:
            c = self._copy(name, copy)
            if position is not None and position < c.position:
                raise StaleCopy(name, copy, f"swap at {position} is behind the copy's {c.position}")
            self._write(c, changes, position, last_event_ts if position is not None else c.last_event_ts,
                        swap=True)
            old = self._active.get(name)
            self._active[name] = copy
            if old is not None and old != copy:
                self._copies.pop((name, old)).retired = True
            self._rebuilding.discard(name)

    def abandon(self, name: str, copy: int) -> None:
        with self._lock:
            if self._active.get(name) != copy:
                c = self._copies.pop((name, copy), None)
                if c is not None:
                    c.retired = True
            self._rebuilding.discard(name)

    def close(self) -> None:
        return None

    # --- for tests and in-process use -------------------------------------------------

    def dump(self, name: str, copy: int | None = None) -> dict[str, dict[str, Row]]:
        """Every row of one copy (copies of them), by table and key."""
        with self._lock:
            c = self._copy(name, copy)
            return {t: {k: clone(r) for k, r in rows.items()} for t, rows in c.tables.tables().items()}


def _check_checkpoint(c: _Copy, position: int, expected: int | None) -> None:
    if expected is not None:
        if c.position != expected:
            raise StaleCopy(c.name, c.copy, f"checkpoint is {c.position}, expected {expected}")
    elif position <= c.position:
        raise StaleCopy(c.name, c.copy, f"position {position} is not after the checkpoint {c.position}")


class _CopyView:
    """Read-only view of one memory copy."""

    def __init__(self, store: MemoryReadStore, name: str, copy: int) -> None:
        self._store = store
        self._name = name
        self._copy = copy

    def get(self, table: str, key: str) -> Row | None:
        with self._store._lock:
            row = self._store._copy(self._name, self._copy).tables.get(table, key)
            return None if row is None else clone(row)

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        with self._store._lock:
            found = list(self._store._copy(self._name, self._copy).tables.find(table, **equals))
        return iter([(k, clone(r)) for k, r in found])

    def put(self, table: str, key: str, row: Row) -> None:
        raise TypeError("a stored copy is read-only; commit changes through the read store")

    def delete(self, table: str, key: str) -> None:
        raise TypeError("a stored copy is read-only; commit changes through the read store")
