"""PostgreSQL event store (psycopg 3): group commit, commit-ordered positions, LISTEN/NOTIFY.

Every write transaction first takes ``pg_advisory_xact_lock`` (one key per schema), then
reads ``max(position)`` in a NEW statement (READ COMMITTED, so its snapshot postdates the
lock) and numbers its events from there. The lock is released only after the commit is
visible, so positions become visible in increasing order, across processes too: a
reader tailing ``read_all`` can never see position n+1 before position n. One appender
thread per store writes all pending appends in one transaction (group commit), so
concurrent writers share one durable commit instead of queueing on the lock.

The write is one call of the schema's ``append_batch`` function, in autocommit: lock,
version check, numbering, inserts of events and idempotency records, NOTIFY and COMMIT
in a single round trip. It assumes what the command side knows (the expected versions;
keys and event ids new); when that is wrong the batch is written again after reading
the stored state under the lock (``_write_checked``), which is rare.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
import psycopg.errors
import structlog
from orjson import Fragment
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
        linger: float = 0.002,
        poll_interval: float = 1.0,
        create: bool = True,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        """Open the store.

        ``poll_interval`` is the fallback re-read period of ``subscribe`` should a
        notification be lost; ``before_commit`` is a fault-injection hook for tests,
        called by the appender inside each write transaction just before COMMIT;
        ``linger`` is how long a batch may wait for writers that were active in the last
        batches (``GroupCommitAppender``): fewer, larger commits when commits are dear.
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
                self._write_batch, name=f"pg-appender-{schema}", max_batch=max_batch,
                linger=linger,
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
            # The connection died (server restart, idle timeout, killed backend). Writing
            # the batch again is safe even if its commit went through: the retry finds its
            # event ids stored and gets the stored events back (or ``AlreadyHandled`` with
            # the very record it stored), never a second copy.
            log.info("event store writer reconnects", error=repr(stale.__cause__))
            return self._write_batch_once(requests)

    def _write_batch_once(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        conn = self._writer_connection()
        try:
            outcomes = self._write_optimistic(conn, requests)
            if outcomes is None:
                outcomes = self._write_checked(conn, requests)
        except psycopg.OperationalError as exc:
            if conn.broken:
                raise _StaleConnection from exc
            raise
        return outcomes

    def _write_optimistic(
        self, conn: psycopg.Connection[Any], requests: Sequence[AppendRequest]
    ) -> list[Outcome] | None:
        """Write the batch in ONE statement, assuming what the command side already knows.

        The assumptions: every stream is at the version its first request expects, and no
        idempotency key or event id of the batch is stored yet (a retried command is the
        exception, not the rule). ``append_batch`` takes the write lock, checks the
        versions, numbers and inserts the events and records, and commits (autocommit: one
        round trip); it refuses the batch when a version differs, and a unique constraint
        refuses it when a key or an event id is stored already. Returns None then (nothing
        was written), and also when the plan refuses a request (that refusal may rest on the
        assumptions): the caller resolves the batch against the stored state instead.
        """
        expected: dict[str, int] = {}
        for req in requests:
            if req.expected_version is None:
                return None  # the stream's version is unknown here: read it under the lock
            expected.setdefault(req.stream_id, req.expected_version)
        now = utc(self._clock.now())
        plan = plan_batch(
            requests, last_position=0, versions=expected, idempotency={}, stored_events={},
            ts_recorded=now,
        )
        if any(isinstance(o, Exception) for o in plan.outcomes):
            # A refusal may rest on what was assumed (a retried append whose events are
            # stored gets them back whatever its expected version): check it under the lock.
            return None
        args = (
            _encode_streams(expected),
            _encode_events(plan.event_rows),
            _encode_keys(plan.idempotency_rows),
            now,
        )
        try:
            if self._before_commit is None:
                row = conn.execute(self._sql.append_batch, args, prepare=True).fetchone()
                base = row[0] if row else None
            else:
                with conn.transaction():
                    row = conn.execute(self._sql.append_batch, args, prepare=True).fetchone()
                    base = row[0] if row else None
                    if base is not None and base >= 0:
                        _shift(plan.recorded, base)
                        self._before_commit(plan.recorded)
        except psycopg.errors.UniqueViolation:
            return None
        if base is None or base < 0:
            return None
        if self._before_commit is None:
            _shift(plan.recorded, base)
        return plan.outcomes

    def _write_checked(
        self, conn: psycopg.Connection[Any], requests: Sequence[AppendRequest]
    ) -> list[Outcome]:
        """Read the batch's streams, keys and event ids under the write lock, then write."""
        streams, keys, ids = batch_keys(requests)
        sql = self._sql
        with conn.transaction():
            # Statement order matters: every read below gets a snapshot taken after the
            # lock is held (READ COMMITTED), so it sees every earlier writer's events.
            conn.execute(sql.lock, prepare=True)
            last_position = conn.execute(sql.last_position).fetchone()[0]  # type: ignore[index]
            versions = {
                s: v for s, v in conn.execute(sql.stream_versions, (streams,)).fetchall()
                if v is not None
            }
            stored_keys = {}
            if keys:
                for row in conn.execute(sql.idempotency_many, (keys,)).fetchall():
                    rec = idempotency_from_row(row)
                    stored_keys[rec.key] = rec
            stored_events = {}
            if ids:
                for row in conn.execute(sql.events_by_id, (ids,)).fetchall():
                    ev = record_from_row(row)
                    stored_events[ev.event_id] = ev
            now = utc(self._clock.now())
            plan = plan_batch(
                requests,
                last_position=0,
                versions=versions,
                idempotency=stored_keys,
                stored_events=stored_events,
                ts_recorded=now,
            )
            # The same statement as the optimistic path; its checks hold by construction
            # here (read under the lock we hold), so it writes what the plan says.
            expected = {s: versions.get(s, 0) for s in streams}
            base = conn.execute(
                sql.append_batch,
                (
                    _encode_streams(expected),
                    _encode_events(plan.event_rows),
                    _encode_keys(plan.idempotency_rows),
                    now,
                ),
            ).fetchone()[0]  # type: ignore[index]
            if base != last_position:
                raise RuntimeError(f"event store moved under its write lock: {last_position} -> {base}")
            _shift(plan.recorded, base)
            if self._before_commit is not None:
                self._before_commit(plan.recorded)
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
                    if len(chunk) >= batch:
                        continue  # more may be stored already: read on
                # A short chunk ended at the head of the log as of its read. Every commit
                # after that read notifies after it is visible, and LISTEN was issued
                # before the first read: waiting now misses nothing, and saves an empty
                # read per batch.
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
            # Once per connection, not per transaction: ``append_batch`` relies on a new
            # snapshot per statement, whatever the server's default isolation level.
            conn.execute("SET default_transaction_isolation = 'read committed'")
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


def _encode_streams(expected: dict[str, int]) -> str:
    """The batch's streams and the version each must be at, as ``append_batch`` reads them."""
    return orjson.dumps([{"id": s, "v": v} for s, v in expected.items()]).decode()


def _encode_events(rows: Sequence[tuple[int, str, str, int, str, int, str, str]]) -> str:
    """Event rows as one JSON array; payloads go in as they were encoded (no re-encoding)."""
    return orjson.dumps(
        [
            {"o": o, "e": e, "s": s, "v": v, "t": t, "sv": sv, "d": Fragment(d), "m": Fragment(m)}
            for o, e, s, v, t, sv, d, m in rows
        ]
    ).decode()


def _encode_keys(rows: Sequence[tuple[str, str, str, str, int | None]]) -> str:
    """Idempotency rows as one JSON array (position offsets as for events)."""
    return orjson.dumps(
        [{"k": k, "c": c, "f": f, "r": Fragment(r), "o": o} for k, c, f, r, o in rows]
    ).decode()


def _shift(recorded: Sequence[RecordedEvent], base: int) -> None:
    """Turn the plan's position offsets (1, 2, ...) into the positions the database gave."""
    for rec in recorded:
        rec.position += base


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
        self.lock = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, {_lock_key(schema)})"
        # The whole write of a batch, in one statement (see ``_write_optimistic``). VOLATILE
        # plpgsql takes a new snapshot per statement (READ COMMITTED), so everything after
        # the lock sees every earlier writer's committed events. Returns the position the
        # batch's offsets start after, or -1 (nothing written) when a stream is not at the
        # version given for it. The lock is held until COMMIT, after which the rows are
        # visible: positions become visible in increasing order, across processes too.
        self.append_batch = f"SELECT {s}.append_batch(%s::json, %s::json, %s::json, %s)"
        self.ddl.append(
            f"""CREATE OR REPLACE FUNCTION {s}.append_batch(
                p_streams json, p_events json, p_keys json, p_ts timestamptz)
            RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
            DECLARE
                base bigint;
                n bigint;
            BEGIN
                PERFORM pg_advisory_xact_lock({_LOCK_CLASS}, {_lock_key(schema)});
                IF EXISTS (
                    SELECT 1 FROM json_to_recordset(p_streams) AS x(id text, v bigint)
                    WHERE coalesce(
                        (SELECT max(e.version) FROM {events} e WHERE e.stream_id = x.id), 0
                    ) <> x.v
                ) THEN
                    RETURN -1;
                END IF;
                SELECT coalesce(max(position), 0) INTO base FROM {events};
                INSERT INTO {events} ({EVENT_COLUMNS})
                SELECT base + x.o, x.e, x.s, x.v, x.t, x.sv, x.d, x.m, p_ts
                FROM json_to_recordset(p_events)
                    AS x(o bigint, e text, s text, v bigint, t text, sv integer, d jsonb, m jsonb);
                GET DIAGNOSTICS n = ROW_COUNT;
                INSERT INTO {idem} (key, command_type, fingerprint, result, position, ts_recorded)
                SELECT x.k, x.c, x.f, x.r, base + x.o, p_ts
                FROM json_to_recordset(p_keys) AS x(k text, c text, f text, r jsonb, o bigint);
                IF n > 0 THEN
                    PERFORM pg_notify('tradecore_events_{schema}', (base + n)::text);
                END IF;
                RETURN base;
            END
            $fn$"""
        )
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
        self.idempotency_one = (
            f"SELECT key, command_type, fingerprint, result::text FROM {idem} WHERE key = %s"
        )
        self.idempotency_many = (
            f"SELECT r.* FROM unnest(%s::text[]) AS i(k) CROSS JOIN LATERAL"
            f" (SELECT key, command_type, fingerprint, result::text FROM {idem} WHERE key = i.k) r"
        )
        self.save_snapshot = (
            f"INSERT INTO {snaps} (stream_id, version, schema, state)"
            " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (stream_id) DO UPDATE"
            " SET version = EXCLUDED.version, schema = EXCLUDED.schema, state = EXCLUDED.state"
        )
        self.load_snapshot = (
            f"SELECT stream_id, version, schema, state::text FROM {snaps} WHERE stream_id = %s"
        )
