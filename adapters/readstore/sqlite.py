"""SQLite read store: one table per (projection, table, copy), WAL, batched writes.

Layout:
- ``projection_active(name, copy)``: the copy queries read; a swap flips it;
- ``projection_checkpoints(name, copy, position, version, tables, ...)``: one row per
  copy, with its table layout (JSON), timestamps and the runner's last error;
- ``projection_copy_numbers(name, last)``: copy numbers are never reused;
- ``projection_rebuilds(name, owner, copy, started_at)``: the rebuild lease of a
  projection (owner = host:pid:start-time:instance; a dead owner's lease is taken over);
- ``rm_<projection>__<table>__<copy>(key TEXT PRIMARY KEY, doc TEXT, ix_<field> TEXT...)``:
  rows as JSON (exact Decimal/datetime, see ``adapters.readstore``) and one column per
  indexed field holding ``index_key`` of its value, indexed together with the sort field.

One writer connection (``BEGIN IMMEDIATE``, so writers in other processes queue on
SQLite's lock) writes rows and checkpoint in one transaction with ``executemany``;
readers use their own connections (WAL: they never block the writer). Commits use
``synchronous=NORMAL``: a read model can always be rebuilt, and a killed process still
never leaves a half-applied batch.
"""

from __future__ import annotations

import os
import queue
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from adapters.readstore import (
    column,
    decode_row,
    index_statements,
    row_params,
    select_page_sql,
    spec_from_json,
    spec_to_json,
    where_clause,
)
from domain.clock import Clock
from projections.base import Page, Projection, Query, ReadModel, Row, TableSpec
from projections.store import (
    Changes,
    CopyInfo,
    RebuildInProgress,
    StaleCopy,
    UnknownTable,
    check_query,
    matches,
    materialised_fields,
    table_owners,
)

Fault = Callable[[str], None]

_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_active (name TEXT PRIMARY KEY, copy INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name TEXT NOT NULL,
        copy INTEGER NOT NULL,
        position INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL,
        tables TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT,
        rebuilt_at TEXT,
        last_event_ts TEXT,
        error TEXT,
        PRIMARY KEY (name, copy))""",
    # Copy numbers are never reused, so a cached layout can never describe another copy.
    "CREATE TABLE IF NOT EXISTS projection_copy_numbers (name TEXT PRIMARY KEY, last INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS projection_rebuilds (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        copy INTEGER,
        started_at TEXT NOT NULL)""",
)

_COPY_COLUMNS = (
    "c.name, c.copy, a.copy IS NOT NULL, c.version, c.position, c.tables, c.created_at,"
    " c.updated_at, c.rebuilt_at, c.last_event_ts, c.error"
)

# Leases of rebuilds running in this process (instance tokens), to tell a live lease of
# this pid from one a crashed earlier instance left behind.
_LIVE_LEASES: set[str] = set()
_LEASE_LOCK = threading.Lock()


def _process_token() -> str:
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as f:
            start = f.read().rsplit(b")", 1)[1].split()[19].decode()
    except OSError:
        start = "?"
    return f"{socket.gethostname()}:{os.getpid()}:{start}"


def _lease_alive(owner: str) -> bool:
    """Whether the process (and, in this process, the rebuild) that wrote ``owner`` runs."""
    host, pid, start, _instance = owner.split(":", 3)
    if host != socket.gethostname():
        return True  # cannot tell: assume it runs
    if int(pid) == os.getpid():
        with _LEASE_LOCK:
            return owner in _LIVE_LEASES
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode() == start
    except (OSError, IndexError):
        return False


_SORT_FROM = 1000
"""Rows per table from which a write goes in key order."""


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class _Layout:
    """SQL of one stored copy, built once from its stored table layout."""

    __slots__ = ("specs", "sql_names", "columns", "upsert", "delete", "get", "indexes")

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.specs, self.sql_names = spec_from_json(items)
        self.columns = {s.name: materialised_fields(s) for s in self.specs}
        self.upsert: dict[str, str] = {}
        self.delete: dict[str, str] = {}
        self.get: dict[str, str] = {}
        self.indexes: list[str] = []
        for s in self.specs:
            t = self.sql_names[s.name]
            self.indexes += index_statements(f'"{t}"', t, s)
            cols = self.columns[s.name]
            names = ", ".join(["key", "doc", *(column(f) for f in cols)])
            marks = ", ".join("?" * (2 + len(cols)))
            self.upsert[s.name] = f'INSERT OR REPLACE INTO "{t}" ({names}) VALUES ({marks})'
            self.delete[s.name] = f'DELETE FROM "{t}" WHERE key = ?'
            self.get[s.name] = f'SELECT doc FROM "{t}" WHERE key = ?'

    def spec(self, table: str) -> TableSpec:
        for s in self.specs:
            if s.name == table:
                return s
        raise UnknownTable(f"no table {table!r} in this copy")


def create_statements(sql_name: str, spec: TableSpec) -> list[str]:
    """DDL of one copy table (its indexes come from ``index_statements``)."""
    defs = "".join(f", {column(f)} TEXT" for f in materialised_fields(spec))
    return [f'CREATE TABLE "{sql_name}" (key TEXT PRIMARY KEY, doc TEXT NOT NULL{defs})']


class SqliteReadStore:
    """Read store in one SQLite file; ``fault`` is a test hook called inside commits."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = 30.0,
        fault: Fault | None = None,
    ) -> None:
        self._path = os.fspath(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self.fault = fault
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._wlock = threading.RLock()
        self._layouts: dict[tuple[str, int], _Layout] = {}
        self._owners: dict[str, str] = {}
        self._leases: dict[str, str] = {}
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        with self._tx() as conn:
            for statement in _DDL:
                conn.execute(statement)

    def _now(self) -> datetime:
        if self._clock is not None:
            return self._clock.now()
        from adapters.time import SystemClock

        return SystemClock().now()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise sqlite3.ProgrammingError("read store is closed")
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            self._readers.put(conn)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._wlock:
            if self._closed:
                raise sqlite3.ProgrammingError("read store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # --- copies -----------------------------------------------------------------------

    def _layout(self, conn: sqlite3.Connection, name: str, copy: int) -> _Layout:
        layout = self._layouts.get((name, copy))
        if layout is None:
            row = conn.execute(
                "SELECT tables FROM projection_checkpoints WHERE name = ? AND copy = ?", (name, copy)
            ).fetchone()
            if row is None:
                raise StaleCopy(name, copy, "copy is gone")
            layout = self._layouts[(name, copy)] = _Layout(orjson.loads(row[0]))
        return layout

    def _create_copy(self, conn: sqlite3.Connection, p: Projection | type[Projection], *, indexed: bool) -> int:
        """Create an empty copy; a rebuild's copy gets its secondary indexes at the swap
        (building them once over the loaded rows beats maintaining them row by row)."""
        number = conn.execute(
            "INSERT INTO projection_copy_numbers (name, last) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET last = last + 1 RETURNING last", (p.name,)
        ).fetchone()[0]
        items = spec_to_json(p.tables, p.name, number)
        for item, spec in zip(items, p.tables, strict=True):
            statements = create_statements(item["sql"], spec)
            if indexed:
                statements += index_statements(f'"{item["sql"]}"', item["sql"], spec)
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO projection_checkpoints (name, copy, position, version, tables, created_at)"
            " VALUES (?, ?, 0, ?, ?, ?)",
            (p.name, number, p.version, orjson.dumps(items).decode(), self._now().isoformat()),
        )
        self._layouts.pop((p.name, number), None)
        return int(number)

    def _drop_copy(self, conn: sqlite3.Connection, name: str, copy: int) -> None:
        row = conn.execute(
            "SELECT tables FROM projection_checkpoints WHERE name = ? AND copy = ?", (name, copy)
        ).fetchone()
        if row is not None:
            for item in orjson.loads(row[0]):
                conn.execute(f'DROP TABLE IF EXISTS "{item["sql"]}"')
        conn.execute("DELETE FROM projection_checkpoints WHERE name = ? AND copy = ?", (name, copy))
        self._layouts.pop((name, copy), None)

    def register(self, projections: Iterable[Projection | type[Projection]]) -> None:
        projections = list(projections)
        with self._tx() as conn:
            incoming = {p.name for p in projections}
            stored = [
                (name, spec_from_json(orjson.loads(tables))[0])
                for name, tables in conn.execute(
                    "SELECT c.name, c.tables FROM projection_active a JOIN projection_checkpoints c"
                    " ON c.name = a.name AND c.copy = a.copy"
                )
                if name not in incoming
            ]
            table_owners(stored + [(p.name, p.tables) for p in projections])
            for p in projections:
                if conn.execute("SELECT 1 FROM projection_active WHERE name = ?", (p.name,)).fetchone():
                    continue
                number = self._create_copy(conn, p, indexed=True)
                conn.execute("INSERT INTO projection_active (name, copy) VALUES (?, ?)", (p.name, number))
        self._owners.clear()

    def active_copy(self, name: str) -> int:
        with self._reader() as conn:
            row = conn.execute("SELECT copy FROM projection_active WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise LookupError(f"projection {name} is not registered")
        return int(row[0])

    def checkpoint(self, name: str, copy: int | None = None) -> int:
        with self._reader() as conn:
            if copy is None:
                row = conn.execute(
                    "SELECT c.position FROM projection_active a JOIN projection_checkpoints c"
                    " ON c.name = a.name AND c.copy = a.copy WHERE a.name = ?", (name,)
                ).fetchone()
                if row is None:
                    raise LookupError(f"projection {name} is not registered")
            else:
                row = conn.execute(
                    "SELECT position FROM projection_checkpoints WHERE name = ? AND copy = ?", (name, copy)
                ).fetchone()
                if row is None:
                    raise StaleCopy(name, copy, "copy is gone")
        return int(row[0])

    def copies(self, name: str | None = None) -> list[CopyInfo]:
        sql = (
            f"SELECT {_COPY_COLUMNS} FROM projection_checkpoints c LEFT JOIN projection_active a"
            " ON a.name = c.name AND a.copy = c.copy"
        )
        with self._reader() as conn:
            if name is None:
                rows = conn.execute(sql + " ORDER BY c.name, c.copy").fetchall()
            else:
                rows = conn.execute(sql + " WHERE c.name = ? ORDER BY c.copy", (name,)).fetchall()
        return [
            CopyInfo(
                name=r[0], copy=r[1], active=bool(r[2]), version=r[3], position=r[4],
                tables=spec_from_json(orjson.loads(r[5]))[0], created_at=_ts(r[6]), updated_at=_ts(r[7]),
                rebuilt_at=_ts(r[8]), last_event_ts=_ts(r[9]), error=r[10],
            )
            for r in rows
        ]

    def set_error(self, name: str, error: str | None, *, copy: int | None = None) -> None:
        with self._tx() as conn:
            number = copy if copy is not None else self._active_in(conn, name)
            conn.execute(
                "UPDATE projection_checkpoints SET error = ? WHERE name = ? AND copy = ?", (error, name, number)
            )

    def _active_in(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT copy FROM projection_active WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise LookupError(f"projection {name} is not registered")
        return int(row[0])

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
        with self._tx() as conn:
            number = copy if copy is not None else self._active_in(conn, name)
            row = conn.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ? AND copy = ?", (name, number)
            ).fetchone()
            if row is None:
                raise StaleCopy(name, number, "copy is gone")
            stored = row[0]
            if expected is not None and stored != expected:
                raise StaleCopy(name, number, f"checkpoint is {stored}, expected {expected}")
            if expected is None and position <= stored:
                raise StaleCopy(name, number, f"position {position} is not after the checkpoint {stored}")
            self._write(conn, name, number, changes)
            self._checkpoint(conn, name, number, position, last_event_ts)

    def _write(self, conn: sqlite3.Connection, name: str, copy: int, changes: Changes | None) -> None:
        if changes:
            layout = self._layout(conn, name, copy)
            for table, rows in changes.items():
                if not rows:
                    continue
                if table not in layout.upsert:
                    raise UnknownTable(f"projection {name} has no table {table!r}")
                cols = layout.columns[table]
                dels = [(k,) for k, r in rows.items() if r is None]
                if dels:
                    conn.executemany(layout.delete[table], dels)
                if len(dels) < len(rows):
                    # In key order the primary key B-tree is appended to, not split at
                    # random pages (a rebuild writes hundreds of thousands of rows).
                    items = sorted(rows.items()) if len(rows) >= _SORT_FROM else rows.items()
                    conn.executemany(
                        layout.upsert[table], (row_params(k, r, cols) for k, r in items if r is not None)
                    )
        if self.fault is not None:
            self.fault("rows")

    def _checkpoint(self, conn: sqlite3.Connection, name: str, copy: int, position: int,
                    last_event_ts: datetime | None, *, rebuilt: bool = False) -> None:
        now = self._now().isoformat()
        conn.execute(
            "UPDATE projection_checkpoints SET position = ?, last_event_ts = ?, updated_at = ?, error = NULL"
            + (", rebuilt_at = ?" if rebuilt else "")
            + " WHERE name = ? AND copy = ?",
            (position, _iso(last_event_ts), now, *((now,) if rebuilt else ()), name, copy),
        )
        if self.fault is not None:
            self.fault("commit")

    # --- reading ----------------------------------------------------------------------

    def _owner(self, table: str) -> tuple[str, int]:
        """(projection, active copy) owning ``table``, read now (the pointer may move)."""
        name = self._owners.get(table)
        with self._reader() as conn:
            if name is None:
                for n, tables in conn.execute(
                    "SELECT c.name, c.tables FROM projection_active a JOIN projection_checkpoints c"
                    " ON c.name = a.name AND c.copy = a.copy"
                ):
                    for item in orjson.loads(tables):
                        self._owners[item["name"]] = n
                name = self._owners.get(table)
                if name is None:
                    raise UnknownTable(f"no registered projection has a table {table!r}")
            return name, self._active_in(conn, name)

    def _read(self, table: str, fn: Callable[[sqlite3.Connection, _Layout], Any]) -> Any:
        for attempt in range(3):
            name, copy = self._owner(table)
            try:
                with self._reader() as conn:
                    return fn(conn, self._layout(conn, name, copy))
            except (sqlite3.OperationalError, StaleCopy) as exc:
                # A swap dropped the copy between reading the pointer and the rows.
                if attempt == 2 or (isinstance(exc, sqlite3.OperationalError) and "no such table" not in str(exc)):
                    raise
                self._owners.clear()
        raise AssertionError("unreachable")

    def get(self, table: str, key: str) -> Row | None:
        def run(conn: sqlite3.Connection, layout: _Layout) -> Row | None:
            row = conn.execute(layout.get[table], (key,)).fetchone()
            return decode_row(row[0]) if row else None

        return self._read(table, run)  # type: ignore[no-any-return]

    def query(self, query: Query) -> Page:
        def run(conn: sqlite3.Connection, layout: _Layout) -> Page:
            spec = layout.spec(query.table)
            check_query(spec, query)
            page_sql, count_sql, params = select_page_sql(
                f'"{layout.sql_names[query.table]}"', spec, query, "?"
            )
            total = conn.execute(count_sql, params).fetchone()[0]
            rows = conn.execute(page_sql, [*params, query.limit, query.offset]).fetchall()
            return Page(items=[decode_row(r[0]) for r in rows], total=total, limit=query.limit,
                        offset=query.offset)

        return self._read(query.table, run)  # type: ignore[no-any-return]

    def load_model(self, name: str, copy: int | None = None) -> ReadModel:
        number = self.active_copy(name) if copy is None else copy
        with self._reader() as conn:
            self._layout(conn, name, number)
        return _CopyView(self, name, number)

    def _view_get(self, name: str, copy: int, table: str, key: str) -> Row | None:
        with self._reader() as conn:
            layout = self._layout(conn, name, copy)
            if table not in layout.get:
                raise UnknownTable(f"projection {name} has no table {table!r}")
            try:
                row = conn.execute(layout.get[table], (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise StaleCopy(name, copy, "copy was dropped") from exc
                raise
        return decode_row(row[0]) if row else None

    def _view_find(self, name: str, copy: int, table: str, equals: dict[str, Any]) -> list[tuple[str, Row]]:
        with self._reader() as conn:
            layout = self._layout(conn, name, copy)
            spec = layout.spec(table)
            indexed = [(f, v) for f, v in equals.items() if f in spec.indexes]
            rest = [(f, v) for f, v in equals.items() if f not in spec.indexes]
            where, params = where_clause(indexed, "?")
            sql = f'SELECT key, doc FROM "{layout.sql_names[table]}"'
            if where:
                sql += " WHERE " + " AND ".join(where)
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise StaleCopy(name, copy, "copy was dropped") from exc
                raise
        out = [(k, decode_row(d)) for k, d in rows]
        return [(k, r) for k, r in out if matches(r, rest)] if rest else out

    # --- rebuilds ---------------------------------------------------------------------

    def begin_rebuild(self, projection: Projection | type[Projection]) -> int:
        name = projection.name
        self.register([projection])
        token = f"{_process_token()}:{id(self)}-{threading.get_ident()}-{os.urandom(4).hex()}"
        with self._tx() as conn:
            row = conn.execute("SELECT owner FROM projection_rebuilds WHERE name = ?", (name,)).fetchone()
            if row is not None and _lease_alive(row[0]):
                raise RebuildInProgress(f"projection {name} is being rebuilt by {row[0]}")
            active = self._active_in(conn, name)
            for (number,) in conn.execute(
                "SELECT copy FROM projection_checkpoints WHERE name = ? AND copy != ?", (name, active)
            ).fetchall():
                self._drop_copy(conn, name, number)
            number = self._create_copy(conn, projection, indexed=False)
            conn.execute(
                "INSERT OR REPLACE INTO projection_rebuilds (name, owner, copy, started_at) VALUES (?, ?, ?, ?)",
                (name, token, number, self._now().isoformat()),
            )
            with _LEASE_LOCK:
                _LIVE_LEASES.add(token)
        self._leases[name] = token
        return number

    def _release(self, conn: sqlite3.Connection, name: str) -> None:
        token = self._leases.pop(name, None)
        if token is not None:
            conn.execute("DELETE FROM projection_rebuilds WHERE name = ? AND owner = ?", (name, token))
            with _LEASE_LOCK:
                _LIVE_LEASES.discard(token)

    def swap(
        self,
        name: str,
        copy: int,
        changes: Changes | None = None,
        position: int | None = None,
        *,
        last_event_ts: datetime | None = None,
    ) -> None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT position, last_event_ts FROM projection_checkpoints WHERE name = ? AND copy = ?",
                (name, copy),
            ).fetchone()
            if row is None:
                raise StaleCopy(name, copy, "copy is gone")
            if position is not None and position < row[0]:
                raise StaleCopy(name, copy, f"swap at {position} is behind the copy's {row[0]}")
            self._write(conn, name, copy, changes)
            if position is None:
                position, last_event_ts = row[0], _ts(row[1])
            self._checkpoint(conn, name, copy, position, last_event_ts, rebuilt=True)
            for statement in self._layout(conn, name, copy).indexes:
                conn.execute(statement)
            old = conn.execute("SELECT copy FROM projection_active WHERE name = ?", (name,)).fetchone()
            conn.execute("INSERT OR REPLACE INTO projection_active (name, copy) VALUES (?, ?)", (name, copy))
            self._release(conn, name)
        if old is not None and old[0] != copy:
            with self._tx() as conn:
                self._drop_copy(conn, name, old[0])

    def abandon(self, name: str, copy: int) -> None:
        with self._tx() as conn:
            if conn.execute(
                "SELECT 1 FROM projection_active WHERE name = ? AND copy = ?", (name, copy)
            ).fetchone() is None:
                self._drop_copy(conn, name, copy)
            self._release(conn, name)

    def close(self) -> None:
        if self._closed:
            return
        with self._wlock:
            self._closed = True
            for name in list(self._leases):
                with _LEASE_LOCK:
                    _LIVE_LEASES.discard(self._leases.pop(name))
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class _CopyView:
    """Read-only view of one stored copy (what the runner reads through to)."""

    def __init__(self, store: SqliteReadStore, name: str, copy: int) -> None:
        self._store = store
        self._name = name
        self._copy = copy

    def get(self, table: str, key: str) -> Row | None:
        return self._store._view_get(self._name, self._copy, table, key)

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        return iter(self._store._view_find(self._name, self._copy, table, equals))

    def put(self, table: str, key: str, row: Row) -> None:
        raise TypeError("a stored copy is read-only; commit changes through the read store")

    def delete(self, table: str, key: str) -> None:
        raise TypeError("a stored copy is read-only; commit changes through the read store")
