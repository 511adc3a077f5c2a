"""PostgreSQL event store (psycopg 3): group commit, commit-ordered positions, LISTEN/NOTIFY.

Every write transaction first takes ``pg_advisory_xact_lock`` (one key per schema), then
reads ``max(position)`` in a NEW statement (READ COMMITTED, so its snapshot postdates the
lock) and numbers its events from there. The lock is released only after the commit is
visible, so positions become visible in increasing order, across processes too: a
reader tailing ``read_all`` can never see position n+1 before position n. One appender
thread per store writes all pending appends in one transaction (group commit), so
concurrent writers share one durable commit instead of queueing on the lock.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from adapters.eventstore.codec import (
    EVENT_COLUMNS,
    dumps,
    idempotency_from_row,
    json_has_nul,
    record_from_row,
    snapshot_from_row,
    utc,
)
from adapters.eventstore.groupcommit import (
    AppendRequest,
    GroupCommitAppender,
    Outcome,
    batch_keys,
    plan_batch,
)
from commands.ports import IdempotencyRecord, Snapshot
from domain.clock import Clock
from domain.envelope import NewEvent, RecordedEvent

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,45}$")
_LOCK_CLASS = 0x7472_6164  # "trad": the first key of every tradecore advisory lock

BeforeCommit = Callable[[Sequence[RecordedEvent]], None]


log = structlog.get_logger(__name__)


class _StaleConnection(Exception):
    """The writer connection was found dead before anything of the batch was committed."""


def _lock_key(schema: str) -> int:
    """Second advisory-lock key: one write lock per schema, the same in every process."""
    return zlib.crc32(schema.encode()) - 2**31


def _configure(conn: psycopg.Connection[Any]) -> None:
    # UTC sessions give timestamptz values with tzinfo=timezone.utc: no conversion on read.
    conn.execute("SET TIME ZONE 'UTC'")


class PostgresEventStore:
    """Event store on PostgreSQL; all tables live in ``schema`` (created if missing)."""

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool[Any],
        clock: Clock,
        *,
        schema: str = "public",
        pool_size: int = 8,
        max_batch: int = 512,
        poll_interval: float = 1.0,
        create: bool = True,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        """Open the store.

        ``poll_interval`` is the fallback re-read period of ``subscribe`` should a
        notification be lost; ``before_commit`` is a fault-injection hook for tests,
        called by the appender inside each write transaction just before COMMIT.
        """
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}: {schema!r}")
        self._clock = clock
        self._schema = schema
        self._lock_key = _lock_key(schema)
        self._channel = f"tradecore_events_{schema}"
        self._poll_interval = poll_interval
        self._before_commit = before_commit
        if isinstance(dsn_or_pool, str):
            self._pool: ConnectionPool[Any] = ConnectionPool(
                dsn_or_pool,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                configure=_configure,
                name=f"tradecore-events-{schema}",
                open=True,
            )
            self._owns_pool = True
        else:
            self._pool = dsn_or_pool
            self._owns_pool = False
        self._sql = _Statements(schema)
        self._writer: psycopg.Connection[Any] | None = None
        self._closed = False
        try:
            if create:
                self.create_schema()
            self._appender = GroupCommitAppender(
                self._write_batch, name=f"pg-appender-{schema}", max_batch=max_batch
            )
        except BaseException:
            if self._owns_pool:
                self._pool.close()
            raise

    @property
    def schema(self) -> str:
        return self._schema

    def create_schema(self) -> None:
        """Create the schema and tables if missing (safe to run from many processes)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, self._lock_key))
            for statement in self._sql.ddl:
                conn.execute(statement)

    # --- writing -------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[RecordedEvent]:
        request = AppendRequest.build(stream_id, events, expected_version, idempotency)
        _refuse_nul(request)
        return self._appender.submit(request)

    def _write_batch(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        try:
            return self._write_batch_once(requests)
        except _StaleConnection as stale:
            # The connection died before COMMIT was sent (server restart, idle timeout):
            # nothing was written, so the batch is simply written again.
            log.info("event store writer reconnects", error=repr(stale.__cause__))
            return self._write_batch_once(requests)

    def _write_batch_once(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        streams, keys, ids = batch_keys(requests)
        sql = self._sql
        conn = self._writer_connection()
        committing = False
        try:
            # One pipeline, two round trips: (BEGIN, lock, reads), (inserts, NOTIFY, COMMIT).
            with conn.pipeline() as pipeline, conn.transaction():
                # Statement order matters: every read below gets a snapshot taken after
                # the lock is held, so it sees every earlier writer's committed events.
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, self._lock_key)
                )
                last_cur = conn.execute(sql.last_position)
                versions_cur = conn.execute(sql.stream_versions, (streams,))
                keys_cur = conn.execute(sql.idempotency_many, (keys,)) if keys else None
                ids_cur = conn.execute(sql.events_by_id, (ids,)) if ids else None
                last_position = last_cur.fetchone()[0]  # type: ignore[index]
                versions = {s: v for s, v in versions_cur.fetchall() if v is not None}
                stored_keys = {}
                if keys_cur is not None:
                    for row in keys_cur.fetchall():
                        rec = idempotency_from_row(row)
                        stored_keys[rec.key] = rec
                stored_events = {}
                if ids_cur is not None:
                    for row in ids_cur.fetchall():
                        ev = record_from_row(row)
                        stored_events[ev.event_id] = ev
                now = utc(self._clock.now())
                plan = plan_batch(
                    requests,
                    last_position=last_position,
                    versions=versions,
                    idempotency=stored_keys,
                    stored_events=stored_events,
                    ts_recorded=now,
                )
                committing = True
                with conn.cursor() as cur:
                    if plan.event_rows:
                        cur.execute(sql.insert_events, (now, *_columns(plan.event_rows, 8)))
                        cur.execute(
                            "SELECT pg_notify(%s, %s)", (self._channel, str(plan.last_position))
                        )
                    if plan.idempotency_rows:
                        cur.executemany(
                            sql.insert_idempotency, [(*r, now) for r in plan.idempotency_rows]
                        )
                if self._before_commit is not None:
                    pipeline.sync()
                    self._before_commit(plan.recorded)
        except psycopg.OperationalError as exc:
            if conn.broken and not committing:
                raise _StaleConnection from exc
            raise
        return plan.outcomes

    def save_snapshot(self, snapshot: Snapshot) -> None:
        state = dumps(snapshot.state)
        with self._pool.connection() as conn:
            conn.execute(
                self._sql.save_snapshot,
                (snapshot.stream_id, snapshot.version, snapshot.schema, state),
            )

    # --- reading -------------------------------------------------------------------

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        with self._pool.connection() as conn:
            row = conn.execute(self._sql.idempotency_one, (key,)).fetchone()
        return idempotency_from_row(row) if row else None

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        with self._pool.connection() as conn:
            rows = conn.execute(self._sql.read_stream, (stream_id, from_version)).fetchall()
        return [record_from_row(r) for r in rows]

    def stream_version(self, stream_id: str) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(self._sql.stream_version, (stream_id,)).fetchone()
        return int(row[0]) if row else 0

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        with self._pool.connection() as conn:
            rows = conn.execute(self._sql.read_all, (after_position, max(limit, 0))).fetchall()
        return [record_from_row(r) for r in rows]

    def last_position(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(self._sql.last_position).fetchone()
        return int(row[0]) if row else 0

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._pool.connection() as conn:
            row = conn.execute(self._sql.load_snapshot, (stream_id,)).fetchone()
        return snapshot_from_row(row) if row else None

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event | None = None,
        batch: int = 1000,
        poll_interval: float | None = None,
    ) -> Iterator[list[RecordedEvent]]:
        """Yield batches after ``after_position``; wakes on NOTIFY, re-reads every ``poll_interval``.

        Holds one dedicated LISTEN connection while iterating.
        """
        fallback = self._poll_interval if poll_interval is None else poll_interval
        pos = after_position
        with self._connect("listener") as listener:
            # LISTEN before the first read: a commit after that read always wakes us.
            listener.execute(f'LISTEN "{self._channel}"')
            while stop is None or not stop.is_set():
                chunk = self.read_all(pos, batch)
                if chunk:
                    pos = chunk[-1].position
                    yield chunk
                    continue
                _wait_for_notify(listener, fallback, stop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._appender.close()
        if self._writer is not None:
            self._writer.close()
        if self._owns_pool:
            self._pool.close()

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        """Open a connection outside the pool, configured like the pool's."""
        conninfo = self._pool.conninfo
        kwargs = self._pool.kwargs
        conn = psycopg.Connection.connect(
            conninfo() if callable(conninfo) else conninfo,
            **{
                "application_name": f"tradecore-{role}-{self._schema}"[:63],
                **((kwargs() if callable(kwargs) else kwargs) or {}),
                "autocommit": True,
            },
        )
        _configure(conn)
        return conn

    def _writer_connection(self) -> psycopg.Connection[Any]:
        # The appender owns one connection: readers filling the pool never delay a commit.
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._writer = self._connect("writer")
        return conn


def _wait_for_notify(
    conn: psycopg.Connection[Any], timeout: float, stop: threading.Event | None
) -> None:
    """Block until a notification arrives, ``timeout`` passes or ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while stop is None or not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        # Short slices keep ``stop`` responsive without a query per slice.
        if any(True for _ in conn.notifies(timeout=min(remaining, 0.05), stop_after=1)):
            # Swallow the notifications that queued up meanwhile: one read serves them all.
            for _ in conn.notifies(timeout=0):
                pass
            return


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Transpose rows into one list per column (for ``unnest``)."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _refuse_nul(request: AppendRequest) -> None:
    """Refuse NUL characters here, alone, instead of failing a whole batch in PostgreSQL."""
    texts = [request.stream_id, *(e.event_id for e in request.events),
             *(e.type for e in request.events)]
    if request.idempotency is not None:
        i = request.idempotency
        texts += [i.key, i.command_type, i.fingerprint]
    if any("\x00" in t for t in texts) or any(
        json_has_nul(e.data_json) or json_has_nul(e.metadata_json) for e in request.events
    ) or (request.idempotency_result_json and json_has_nul(request.idempotency_result_json)):
        raise ValueError("PostgreSQL cannot store NUL characters in text or JSON")


class _Statements:
    """The SQL of one schema, built once."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        events, idem, snaps = f"{s}.events", f"{s}.idempotency", f"{s}.snapshots"
        self.ddl = [
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"""CREATE TABLE IF NOT EXISTS {events} (
                position BIGINT PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                type TEXT NOT NULL,
                schema_version INTEGER NOT NULL,
                data JSONB NOT NULL,
                metadata JSONB NOT NULL,
                ts_recorded TIMESTAMPTZ NOT NULL,
                UNIQUE (stream_id, version))""",
            f"""CREATE TABLE IF NOT EXISTS {idem} (
                key TEXT PRIMARY KEY,
                command_type TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                result JSONB NOT NULL,
                position BIGINT,
                ts_recorded TIMESTAMPTZ NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {snaps} (
                stream_id TEXT PRIMARY KEY,
                version BIGINT NOT NULL,
                schema TEXT NOT NULL,
                state JSONB NOT NULL)""",
        ]
        cols = EVENT_COLUMNS.replace("data, metadata", "data::text, metadata::text")
        self.last_position = f"SELECT coalesce(max(position), 0) FROM {events}"
        self.stream_version = (
            f"SELECT coalesce(max(version), 0) FROM {events} WHERE stream_id = %s"
        )
        # One index probe per stream (max() on the (stream_id, version) index).
        self.stream_versions = (
            f"SELECT s.id, (SELECT max(e.version) FROM {events} e WHERE e.stream_id = s.id)"
            " FROM unnest(%s::text[]) AS s(id)"
        )
        # LATERAL probes: ``= ANY($1)`` in a prepared (generic) plan can turn into a seq
        # scan comparing every row with every id.
        self.events_by_id = (
            f"SELECT e.* FROM unnest(%s::text[]) AS i(id)"
            f" CROSS JOIN LATERAL (SELECT {cols} FROM {events} WHERE event_id = i.id) e"
        )
        self.read_all = (
            f"SELECT {cols} FROM {events} WHERE position > %s ORDER BY position LIMIT %s"
        )
        self.read_stream = (
            f"SELECT {cols} FROM {events} WHERE stream_id = %s AND version >= %s"
            " ORDER BY version"
        )
        # One statement per batch: far cheaper on the server than a row-per-statement loop.
        self.insert_events = (
            f"INSERT INTO {events} ({EVENT_COLUMNS})"
            " SELECT u.p, u.e, u.s, u.v, u.t, u.sv, u.d::jsonb, u.m::jsonb, %s"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::text[],"
            " %s::integer[], %s::text[], %s::text[]) AS u(p, e, s, v, t, sv, d, m)"
        )
        self.idempotency_one = (
            f"SELECT key, command_type, fingerprint, result::text FROM {idem} WHERE key = %s"
        )
        self.idempotency_many = (
            f"SELECT r.* FROM unnest(%s::text[]) AS i(k) CROSS JOIN LATERAL"
            f" (SELECT key, command_type, fingerprint, result::text FROM {idem} WHERE key = i.k) r"
        )
        self.insert_idempotency = (
            f"INSERT INTO {idem} (key, command_type, fingerprint, result, position, ts_recorded)"
            " VALUES (%s, %s, %s, %s::jsonb, %s, %s)"
        )
        self.save_snapshot = (
            f"INSERT INTO {snaps} (stream_id, version, schema, state)"
            " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (stream_id) DO UPDATE"
            " SET version = EXCLUDED.version, schema = EXCLUDED.schema, state = EXCLUDED.state"
        )
        self.load_snapshot = (
            f"SELECT stream_id, version, schema, state::text FROM {snaps} WHERE stream_id = %s"
        )
