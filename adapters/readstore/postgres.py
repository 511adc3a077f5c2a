"""PostgreSQL read store (psycopg 3): one table per (projection, table, copy), batched upserts.

Layout (in ``schema``): ``projection_active(name, copy)``, ``projection_checkpoints``
(one row per copy: position, version, table layout as jsonb, timestamps, last error),
``projection_copy_numbers`` (copy numbers are never reused), and per copy and table
``rm_<projection>__<table>__<copy>(key text COLLATE "C" PRIMARY KEY, doc jsonb,
ix_<field> text COLLATE "C" ...)`` with ``index_key`` values (byte order = value order).

A commit locks the copy's checkpoint row (``FOR UPDATE``), checks it, upserts every
changed table in ONE statement (``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT``),
deletes with ``= ANY(array)``, then moves the checkpoint; all in one transaction.
Sessions run with ``synchronous_commit = off``: a server crash may forget the last
fraction of a second of read-model commits, rows and checkpoint together, and the runner
simply re-applies those events; a read model never needs the durability of the log.

A rebuild holds a session advisory lock (its own connection) from ``begin_rebuild`` to
``swap``/``abandon``; a killed rebuild loses its connection, hence its lock, and the
next one drops the partial copy.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

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

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,45}$")
_LOCK_CLASS = 0x7265_6164  # "read": first key of the read store's advisory locks
_POINTER_TTL = 1.0
"""Seconds a reader trusts a cached active pointer (a dropped copy refreshes it at once)."""


def _key(text: str) -> int:
    return zlib.crc32(text.encode()) - 2**31


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SET synchronous_commit TO off")


class _Layout:
    """SQL of one stored copy, built once from its stored table layout."""

    __slots__ = ("specs", "sql_names", "columns", "upsert", "delete", "get", "qualified", "indexes",
                 "copy", "stage", "copy_stage", "merge")

    def __init__(self, schema: str, items: list[dict[str, Any]]) -> None:
        self.specs, self.sql_names = spec_from_json(items)
        self.columns = {s.name: materialised_fields(s) for s in self.specs}
        self.qualified = {t: f'"{schema}"."{n}"' for t, n in self.sql_names.items()}
        self.upsert: dict[str, str] = {}
        self.delete: dict[str, str] = {}
        self.get: dict[str, str] = {}
        self.indexes: list[str] = []
        self.copy: dict[str, str] = {}
        self.stage: dict[str, str] = {}
        self.copy_stage: dict[str, str] = {}
        self.merge: dict[str, str] = {}
        for s in self.specs:
            t = self.qualified[s.name]
            cols = [column(f) for f in self.columns[s.name]]
            self.indexes += index_statements(t, self.sql_names[s.name], s)
            names = ", ".join(["key", "doc", *cols])
            stage = f'"stage_{self.sql_names[s.name]}"'
            self.copy[s.name] = f"COPY {t} ({names}) FROM STDIN"
            self.stage[s.name] = f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {t}) ON COMMIT DROP"
            self.copy_stage[s.name] = f"COPY {stage} ({names}) FROM STDIN"
            aliases = [f"c{i}" for i in range(len(cols))]
            # Binary parameters (%b): a text-format array escapes every quote of every JSON
            # document with a regular expression, ~25 times the cost of the binary dump.
            arrays = ", ".join(["%b::text[]"] * (2 + len(cols)))
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in ["doc", *cols])
            self.upsert[s.name] = (
                f"INSERT INTO {t} (key, doc{''.join(', ' + c for c in cols)})"
                f" SELECT u.k, u.d::jsonb{''.join(', u.' + a for a in aliases)}"
                f" FROM unnest({arrays}) AS u(k, d{''.join(', ' + a for a in aliases)})"
                f" ON CONFLICT (key) DO UPDATE SET {sets}"
            )
            self.merge[s.name] = (
                f"INSERT INTO {t} ({names}) SELECT {names} FROM {stage}"
                f" ON CONFLICT (key) DO UPDATE SET {sets}"
            )
            self.delete[s.name] = f"DELETE FROM {t} WHERE key = ANY(%b::text[])"
            self.get[s.name] = f"SELECT doc::text FROM {t} WHERE key = %s"

    def spec(self, table: str) -> TableSpec:
        for s in self.specs:
            if s.name == table:
                return s
        raise UnknownTable(f"no table {table!r} in this copy")


_COPY_FROM = 500
"""Rows per table from which a write goes through COPY instead of one unnest statement."""


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class PostgresReadStore:
    """Read store in one PostgreSQL schema; ``fault`` is a test hook called inside commits."""

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool[Any],
        *,
        schema: str = "public",
        pool_size: int = 4,
        fault: Fault | None = None,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}: {schema!r}")
        self._schema = schema
        self._s = f'"{schema}"'
        self.fault = fault
        conninfo = dsn_or_pool if isinstance(dsn_or_pool, str) else dsn_or_pool.conninfo
        self._conninfo = conninfo if isinstance(conninfo, str) else conninfo()
        if isinstance(dsn_or_pool, str):
            self._pool: ConnectionPool[Any] = ConnectionPool(
                dsn_or_pool, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                configure=_configure, name=f"tradecore-read-{schema}", open=True,
            )
            self._owns_pool = True
        else:
            self._pool = dsn_or_pool
            self._owns_pool = False
        self._layouts: dict[tuple[str, int], _Layout] = {}
        self._owners: dict[str, str] = {}
        self._pointers: dict[str, tuple[int, float]] = {}
        self._locks: dict[str, psycopg.Connection[Any]] = {}
        self._guard = threading.Lock()
        self._closed = False
        try:
            self._create_schema()
        except BaseException:
            if self._owns_pool:
                self._pool.close()
            raise

    def _t(self, name: str) -> str:
        return f"{self._s}.{name}"

    def _create_schema(self) -> None:
        with self._tx() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._t('projection_active')}"
                " (name TEXT PRIMARY KEY, copy INTEGER NOT NULL)"
            )
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self._t('projection_checkpoints')} (
                    name TEXT NOT NULL,
                    copy INTEGER NOT NULL,
                    position BIGINT NOT NULL DEFAULT 0,
                    version INTEGER NOT NULL,
                    tables JSONB NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    updated_at TIMESTAMPTZ,
                    rebuilt_at TIMESTAMPTZ,
                    last_event_ts TIMESTAMPTZ,
                    error TEXT,
                    PRIMARY KEY (name, copy))"""
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._t('projection_copy_numbers')}"
                " (name TEXT PRIMARY KEY, last INTEGER NOT NULL)"
            )

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the schema's DDL lock (registration, copies, swaps)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _key(self._schema)))
            yield conn

    # --- copies -----------------------------------------------------------------------

    def _layout(self, conn: psycopg.Connection[Any], name: str, copy: int) -> _Layout:
        layout = self._layouts.get((name, copy))
        if layout is None:
            row = conn.execute(
                f"SELECT tables FROM {self._t('projection_checkpoints')} WHERE name = %s AND copy = %s",
                (name, copy),
            ).fetchone()
            if row is None:
                raise StaleCopy(name, copy, "copy is gone")
            layout = self._layouts[(name, copy)] = _Layout(self._schema, row[0])
        return layout

    def _create_copy(
        self, conn: psycopg.Connection[Any], p: Projection | type[Projection], *, indexed: bool
    ) -> int:
        """Create an empty copy; a rebuild's copy gets its secondary indexes at the swap."""
        (number,) = conn.execute(
            f"INSERT INTO {self._t('projection_copy_numbers')} AS n (name, last) VALUES (%s, 1)"
            " ON CONFLICT (name) DO UPDATE SET last = n.last + 1 RETURNING last",
            (p.name,),
        ).fetchone()  # type: ignore[misc]
        items = spec_to_json(p.tables, p.name, number)
        for item, spec in zip(items, p.tables, strict=True):
            statements = self._create_statements(item["sql"], spec)
            if indexed:
                statements += index_statements(f'{self._s}."{item["sql"]}"', item["sql"], spec)
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            f"INSERT INTO {self._t('projection_checkpoints')} (name, copy, position, version, tables)"
            " VALUES (%s, %s, 0, %s, %s)",
            (p.name, number, p.version, Jsonb(items)),
        )
        return int(number)

    def _create_statements(self, sql_name: str, spec: TableSpec) -> list[str]:
        defs = "".join(f', {column(f)} TEXT COLLATE "C"' for f in materialised_fields(spec))
        return [f'CREATE TABLE {self._s}."{sql_name}" (key TEXT COLLATE "C" PRIMARY KEY, doc JSONB NOT NULL{defs})']

    def _drop_copy(self, conn: psycopg.Connection[Any], name: str, copy: int) -> None:
        row = conn.execute(
            f"DELETE FROM {self._t('projection_checkpoints')} WHERE name = %s AND copy = %s RETURNING tables",
            (name, copy),
        ).fetchone()
        if row is not None:
            for item in row[0]:
                conn.execute(f'DROP TABLE IF EXISTS {self._s}."{item["sql"]}"')
        self._layouts.pop((name, copy), None)

    def register(self, projections: Iterable[Projection | type[Projection]]) -> None:
        projections = list(projections)
        with self._tx() as conn:
            incoming = {p.name for p in projections}
            stored = [
                (name, spec_from_json(tables)[0])
                for name, tables in conn.execute(
                    f"SELECT c.name, c.tables FROM {self._t('projection_active')} a"
                    f" JOIN {self._t('projection_checkpoints')} c ON c.name = a.name AND c.copy = a.copy"
                ).fetchall()
                if name not in incoming
            ]
            table_owners(stored + [(p.name, p.tables) for p in projections])
            for p in projections:
                if conn.execute(
                    f"SELECT 1 FROM {self._t('projection_active')} WHERE name = %s", (p.name,)
                ).fetchone():
                    continue
                number = self._create_copy(conn, p, indexed=True)
                conn.execute(
                    f"INSERT INTO {self._t('projection_active')} (name, copy) VALUES (%s, %s)", (p.name, number)
                )
        self._owners.clear()

    def _active_in(self, conn: psycopg.Connection[Any], name: str) -> int:
        row = conn.execute(f"SELECT copy FROM {self._t('projection_active')} WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise LookupError(f"projection {name} is not registered")
        return int(row[0])

    def active_copy(self, name: str) -> int:
        with self._pool.connection() as conn:
            return self._active_in(conn, name)

    def checkpoint(self, name: str, copy: int | None = None) -> int:
        with self._pool.connection() as conn:
            number = self._active_in(conn, name) if copy is None else copy
            row = conn.execute(
                f"SELECT position FROM {self._t('projection_checkpoints')} WHERE name = %s AND copy = %s",
                (name, number),
            ).fetchone()
        if row is None:
            raise StaleCopy(name, number, "copy is gone")
        return int(row[0])

    def copies(self, name: str | None = None) -> list[CopyInfo]:
        sql = (
            "SELECT c.name, c.copy, a.copy IS NOT NULL, c.version, c.position, c.tables, c.created_at,"
            " c.updated_at, c.rebuilt_at, c.last_event_ts, c.error"
            f" FROM {self._t('projection_checkpoints')} c LEFT JOIN {self._t('projection_active')} a"
            " ON a.name = c.name AND a.copy = c.copy"
        )
        with self._pool.connection() as conn:
            if name is None:
                rows = conn.execute(sql + " ORDER BY c.name, c.copy").fetchall()
            else:
                rows = conn.execute(sql + " WHERE c.name = %s ORDER BY c.copy", (name,)).fetchall()
        return [
            CopyInfo(
                name=r[0], copy=r[1], active=r[2], version=r[3], position=r[4],
                tables=spec_from_json(r[5])[0], created_at=r[6], updated_at=r[7],
                rebuilt_at=r[8], last_event_ts=r[9], error=r[10],
            )
            for r in rows
        ]

    def set_error(self, name: str, error: str | None, *, copy: int | None = None) -> None:
        with self._pool.connection() as conn:
            number = self._active_in(conn, name) if copy is None else copy
            conn.execute(
                f"UPDATE {self._t('projection_checkpoints')} SET error = %s WHERE name = %s AND copy = %s",
                (error, name, number),
            )

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
        try:
            with self._pool.connection() as conn, conn.transaction():
                number = self._active_in(conn, name) if copy is None else copy
                row = conn.execute(
                    f"SELECT position FROM {self._t('projection_checkpoints')}"
                    " WHERE name = %s AND copy = %s FOR UPDATE",
                    (name, number),
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
        except pg_errors.UndefinedTable as exc:
            raise StaleCopy(name, copy or -1, "copy was dropped") from exc

    def _write(self, conn: psycopg.Connection[Any], name: str, copy: int, changes: Changes | None) -> None:
        if changes:
            layout = self._layout(conn, name, copy)
            with conn.cursor() as cur:
                for table, rows in changes.items():
                    if not rows:
                        continue
                    if table not in layout.upsert:
                        raise UnknownTable(f"projection {name} has no table {table!r}")
                    dels = [k for k, r in rows.items() if r is None]
                    if dels:
                        cur.execute(layout.delete[table], (dels,))
                    if len(dels) == len(rows):
                        continue
                    cols = layout.columns[table]
                    if len(rows) - len(dels) < _COPY_FROM:
                        puts = [row_params(k, r, cols) for k, r in rows.items() if r is not None]
                        cur.execute(layout.upsert[table], _columns(puts, 2 + len(cols)))
                        continue
                    empty = cur.execute(f"SELECT NOT EXISTS (SELECT FROM {layout.qualified[table]})").fetchone()
                    direct = bool(empty and empty[0])
                    # COPY is several times faster than a statement for thousands of rows;
                    # into a non-empty table it goes through a staging table and an upsert.
                    if not direct:
                        cur.execute(layout.stage[table])
                    # In key order the primary key B-tree is appended to, not split at
                    # random pages; rows are encoded as they stream out, not all held first.
                    with cur.copy(layout.copy[table] if direct else layout.copy_stage[table]) as out:
                        for k, r in sorted(rows.items()):
                            if r is not None:
                                out.write_row(row_params(k, r, cols))
                    if not direct:
                        cur.execute(layout.merge[table])
                        cur.execute(f'TRUNCATE "stage_{layout.sql_names[table]}"')
        if self.fault is not None:
            self.fault("rows")

    def _checkpoint(self, conn: psycopg.Connection[Any], name: str, copy: int, position: int,
                    last_event_ts: datetime | None, *, rebuilt: bool = False) -> None:
        conn.execute(
            f"UPDATE {self._t('projection_checkpoints')} SET position = %s, last_event_ts = %s,"
            " updated_at = now(), error = NULL" + (", rebuilt_at = now()" if rebuilt else "")
            + " WHERE name = %s AND copy = %s",
            (position, last_event_ts, name, copy),
        )
        if self.fault is not None:
            self.fault("commit")

    # --- reading ----------------------------------------------------------------------

    def _owner(self, conn: psycopg.Connection[Any], table: str, fresh: bool) -> tuple[str, int]:
        name = self._owners.get(table)
        if name is None:
            for n, tables in conn.execute(
                f"SELECT c.name, c.tables FROM {self._t('projection_active')} a"
                f" JOIN {self._t('projection_checkpoints')} c ON c.name = a.name AND c.copy = a.copy"
            ).fetchall():
                for item in tables:
                    self._owners[item["name"]] = n
            name = self._owners.get(table)
            if name is None:
                raise UnknownTable(f"no registered projection has a table {table!r}")
        cached = self._pointers.get(name)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[1] < _POINTER_TTL:
            return name, cached[0]
        copy = self._active_in(conn, name)
        self._pointers[name] = (copy, now)
        return name, copy

    def _read(self, table: str, fn: Callable[[psycopg.Connection[Any], _Layout], Any]) -> Any:
        for attempt in range(3):
            with self._pool.connection() as conn:
                name, copy = self._owner(conn, table, fresh=attempt > 0)
                try:
                    return fn(conn, self._layout(conn, name, copy))
                except (pg_errors.UndefinedTable, StaleCopy):
                    # A swap dropped the copy after we read the pointer: read it again.
                    if attempt == 2:
                        raise
                    self._owners.clear()
        raise AssertionError("unreachable")

    def get(self, table: str, key: str) -> Row | None:
        def run(conn: psycopg.Connection[Any], layout: _Layout) -> Row | None:
            row = conn.execute(layout.get[table], (key,)).fetchone()
            return decode_row(row[0]) if row else None

        return self._read(table, run)  # type: ignore[no-any-return]

    def query(self, query: Query) -> Page:
        def run(conn: psycopg.Connection[Any], layout: _Layout) -> Page:
            spec = layout.spec(query.table)
            check_query(spec, query)
            page_sql, count_sql, params = select_page_sql(
                layout.qualified[query.table], spec, query, "%s", doc="doc::text"
            )
            total = conn.execute(count_sql, params).fetchone()[0]  # type: ignore[index]
            rows = conn.execute(page_sql, [*params, query.limit, query.offset]).fetchall()
            return Page(items=[decode_row(r[0]) for r in rows], total=total, limit=query.limit,
                        offset=query.offset)

        return self._read(query.table, run)  # type: ignore[no-any-return]

    def load_model(self, name: str, copy: int | None = None) -> ReadModel:
        with self._pool.connection() as conn:
            number = self._active_in(conn, name) if copy is None else copy
            self._layout(conn, name, number)
        return _CopyView(self, name, number)

    def _view_get(self, name: str, copy: int, table: str, key: str) -> Row | None:
        with self._pool.connection() as conn:
            layout = self._layout(conn, name, copy)
            if table not in layout.get:
                raise UnknownTable(f"projection {name} has no table {table!r}")
            try:
                row = conn.execute(layout.get[table], (key,)).fetchone()
            except pg_errors.UndefinedTable as exc:
                raise StaleCopy(name, copy, "copy was dropped") from exc
        return decode_row(row[0]) if row else None

    def _view_find(self, name: str, copy: int, table: str, equals: dict[str, Any]) -> list[tuple[str, Row]]:
        with self._pool.connection() as conn:
            layout = self._layout(conn, name, copy)
            spec = layout.spec(table)
            indexed = [(f, v) for f, v in equals.items() if f in spec.indexes]
            rest = [(f, v) for f, v in equals.items() if f not in spec.indexes]
            where, params = where_clause(indexed, "%s")
            sql = f"SELECT key, doc::text FROM {layout.qualified[table]}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            try:
                rows = conn.execute(sql, params).fetchall()
            except pg_errors.UndefinedTable as exc:
                raise StaleCopy(name, copy, "copy was dropped") from exc
        out = [(k, decode_row(d)) for k, d in rows]
        return [(k, r) for k, r in out if matches(r, rest)] if rest else out

    # --- rebuilds ---------------------------------------------------------------------

    def begin_rebuild(self, projection: Projection | type[Projection]) -> int:
        name = projection.name
        self.register([projection])
        with self._guard:
            if name in self._locks:
                raise RebuildInProgress(f"projection {name} is being rebuilt by this process")
            lock = psycopg.Connection.connect(self._conninfo, autocommit=True)
            self._locks[name] = lock
        try:
            got = lock.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, _key(f"{self._schema}/{name}"))
            ).fetchone()
            if not got or not got[0]:
                raise RebuildInProgress(f"projection {name} is being rebuilt by another process")
            with self._tx() as conn:
                active = self._active_in(conn, name)
                for (number,) in conn.execute(
                    f"SELECT copy FROM {self._t('projection_checkpoints')} WHERE name = %s AND copy != %s",
                    (name, active),
                ).fetchall():
                    self._drop_copy(conn, name, number)
                return self._create_copy(conn, projection, indexed=False)
        except BaseException:
            self._release(name)
            raise

    def _release(self, name: str) -> None:
        with self._guard:
            lock = self._locks.pop(name, None)
        if lock is not None:
            lock.close()  # ends the session, which releases its advisory lock

    def swap(
        self,
        name: str,
        copy: int,
        changes: Changes | None = None,
        position: int | None = None,
        *,
        last_event_ts: datetime | None = None,
    ) -> None:
        # The copy's last rows, its checkpoint and its indexes in one transaction that
        # touches this copy only (the rebuild lock keeps everyone else off it), so the
        # swaps of several projections load in parallel; then the pointer moves under the
        # schema lock. A crash in between leaves a complete copy that is not active: the
        # live copy goes on serving and the next rebuild drops it.
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                f"SELECT position, last_event_ts FROM {self._t('projection_checkpoints')}"
                " WHERE name = %s AND copy = %s FOR UPDATE",
                (name, copy),
            ).fetchone()
            if row is None:
                raise StaleCopy(name, copy, "copy is gone")
            if position is not None and position < row[0]:
                raise StaleCopy(name, copy, f"swap at {position} is behind the copy's {row[0]}")
            self._write(conn, name, copy, changes)
            if position is None:
                position, last_event_ts = row
            self._checkpoint(conn, name, copy, position, last_event_ts, rebuilt=True)
            for statement in self._layout(conn, name, copy).indexes:
                conn.execute(statement)
        with self._tx() as conn:
            if conn.execute(
                f"SELECT 1 FROM {self._t('projection_checkpoints')} WHERE name = %s AND copy = %s",
                (name, copy),
            ).fetchone() is None:
                raise StaleCopy(name, copy, "copy is gone")
            old = conn.execute(
                f"SELECT copy FROM {self._t('projection_active')} WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO {self._t('projection_active')} (name, copy) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET copy = EXCLUDED.copy",
                (name, copy),
            )
        self._pointers.pop(name, None)
        try:
            if old is not None and old[0] != copy:
                with self._tx() as conn:
                    self._drop_copy(conn, name, old[0])
        finally:
            self._release(name)

    def abandon(self, name: str, copy: int) -> None:
        try:
            with self._tx() as conn:
                if self._active_in(conn, name) != copy:
                    self._drop_copy(conn, name, copy)
        finally:
            self._release(name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in list(self._locks):
            self._release(name)
        if self._owns_pool:
            self._pool.close()


class _CopyView:
    """Read-only view of one stored copy (what the runner reads through to)."""

    def __init__(self, store: PostgresReadStore, name: str, copy: int) -> None:
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
