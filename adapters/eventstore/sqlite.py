"""SQLite event store: WAL, durable commits (synchronous=FULL), group commit.

Writes go through one appender thread per store that owns the writer connection and
wraps each batch in ``BEGIN IMMEDIATE``: SQLite's write lock serialises writers across
processes too, and positions are numbered as ``max(position) + 1`` inside it, so
positions become visible in increasing order. Reads use a small pool of connections
(WAL readers never block the writer). ``subscribe`` polls, and wakes at once when this
store appended.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from adapters.eventstore.codec import (
    EVENT_COLUMNS,
    dumps,
    idempotency_from_row,
    loads,
    record_from_row,
    snapshot_from_row,
    utc,
)
from adapters.eventstore.groupcommit import (
    AppendRequest,
    BatchPlan,
    GroupCommitAppender,
    Outcome,
    batch_keys,
    plan_batch,
)
from adapters.sqlite_pool import SqliteConnections
from commands.ports import IdempotencyRecord, Snapshot
from domain.clock import Clock
from domain.envelope import NewEvent, RecordedEvent

BeforeCommit = Callable[[Sequence[RecordedEvent]], None]

_DDL = (
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data TEXT NOT NULL,
        metadata TEXT NOT NULL,
        ts_recorded TEXT NOT NULL,
        UNIQUE (stream_id, version))""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        command_type TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        result TEXT NOT NULL,
        position INTEGER,
        ts_recorded TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS snapshots (
        stream_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        schema TEXT NOT NULL,
        state TEXT NOT NULL)""",
)

_LAST_POSITION = "SELECT coalesce(max(position), 0) FROM events"
# The write transaction's one read, in one row (one step): the last position and the
# version of each named stream (null for a stream that has none yet).
_LAST_POSITION_AND_VERSIONS = (
    # The correlated max() is one probe of the (stream_id, version) index per stream.
    "SELECT (SELECT coalesce(max(position), 0) FROM events),"
    " (SELECT json_group_object(j.value,"
    " (SELECT max(e.version) FROM events e WHERE e.stream_id = j.value)) FROM json_each(?) j)"
)
# json_each keeps each statement single and free of bound-variable limits.
_EVENTS_BY_ID = f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN (SELECT value FROM json_each(?))"
_IDEMPOTENCY_MANY = (
    "SELECT key, command_type, fingerprint, result FROM idempotency WHERE key IN (SELECT value FROM json_each(?))"
)
_IDEMPOTENCY_ONE = "SELECT key, command_type, fingerprint, result FROM idempotency WHERE key = ?"
_INSERT_EVENTS = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES "
_INSERT_IDEMPOTENCY = "INSERT INTO idempotency (key, command_type, fingerprint, result, position, ts_recorded) VALUES "


@functools.cache
def _insert_sql(head: str, columns: int, rows: int) -> str:
    """``head`` with ``rows`` rows of ``columns`` parameters (one step for all of them)."""
    row = "(" + ", ".join(["?"] * columns) + ")"
    return head + ", ".join([row] * rows)


_READ_ALL = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
_READ_STREAM = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version >= ? ORDER BY version"
_STREAM_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?"
_SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (stream_id, version, schema, state) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
    " schema = excluded.schema, state = excluded.state"
)
_LOAD_SNAPSHOT = "SELECT stream_id, version, schema, state FROM snapshots WHERE stream_id = ?"


class SqliteEventStore:
    """Event store in one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Clock,
        *,
        max_batch: int = 512,
        linger: float = 0.002,
        poll_interval: float = 0.05,
        busy_timeout: float = 30.0,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        """Open (and create) the store.

        ``poll_interval`` bounds how late ``subscribe`` sees another process's appends;
        ``before_commit`` is a fault-injection hook for tests, called by the appender
        inside each write transaction just before COMMIT; ``linger`` is how long a batch
        may wait for writers that were active in the last batches (``GroupCommitAppender``).
        """
        self._clock = clock
        self._poll_interval = poll_interval
        self._before_commit = before_commit
        self._appended = threading.Condition()
        self._append_seq = 0
        self._closed = False
        self._conns = SqliteConnections(path, synchronous="FULL", busy_timeout=busy_timeout, name="event store")
        self._writer = self._conns.writer
        # Rows per INSERT: bound parameters are limited (32,766 by default, 999 before 3.32).
        self._chunk_rows = max(1, min(256, self._writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 9))
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("BEGIN IMMEDIATE")
            for statement in _DDL:
                self._writer.execute(statement)
            self._writer.execute("COMMIT")
            self._appender = GroupCommitAppender(
                self._write_batch,
                name="sqlite-appender",
                max_batch=max_batch,
                linger=linger,
            )
        except BaseException:
            self._conns.close()
            raise

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
        return self._appender.submit(request)

    def _write_batch(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        # Each statement here is one ``sqlite3_step``: the sqlite3 module gives up the GIL
        # around every step and takes it back after, and while the writer threads are busy
        # deciding their next commands, taking it back is a wait. So a batch is one read,
        # one INSERT per table and the commit, whatever its size (``executemany`` would
        # step once per row).
        conn = self._writer
        try:
            # Under the write lock: positions and versions are read first; the batch's
            # idempotency keys and event ids are assumed new (a retry is the exception), and
            # the unique constraints say otherwise.
            last_position, versions = self._begin(conn, requests)
            now = utc(self._clock.now())
            plan = plan_batch(
                requests,
                last_position=last_position,
                versions=versions,
                idempotency={},
                stored_events={},
                ts_recorded=now,
            )
            if any(isinstance(o, Exception) for o in plan.outcomes):
                # A refusal may rest on what was assumed (a retried append whose events are
                # stored gets them back whatever its expected version): check it.
                plan = self._plan_checked(conn, requests, last_position, versions, now)
                self._insert(conn, plan, now)
            else:
                try:
                    self._insert(conn, plan, now)
                except sqlite3.IntegrityError:
                    # A stored key or event id: undo the batch (its events may be in), and
                    # resolve it against the stored ones.
                    conn.execute("ROLLBACK")
                    last_position, versions = self._begin(conn, requests)
                    now = utc(self._clock.now())
                    plan = self._plan_checked(conn, requests, last_position, versions, now)
                    self._insert(conn, plan, now)
            if self._before_commit is not None:
                self._before_commit(plan.recorded)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if plan.event_rows:
            with self._appended:
                self._append_seq += 1
                self._appended.notify_all()
        return plan.outcomes

    @staticmethod
    def _begin(conn: sqlite3.Connection, requests: Sequence[AppendRequest]) -> tuple[int, dict[str, int]]:
        """Take the write lock; return the last position and the batch's stream versions."""
        conn.execute("BEGIN IMMEDIATE")
        streams = list(dict.fromkeys(r.stream_id for r in requests))
        last_position, versions_json = conn.execute(_LAST_POSITION_AND_VERSIONS, (dumps(streams),)).fetchone()
        return last_position, {s: v for s, v in loads(versions_json).items() if v is not None}

    def _insert(self, conn: sqlite3.Connection, plan: BatchPlan, now: datetime) -> None:
        ts = now.isoformat()
        chunk = self._chunk_rows
        rows = plan.event_rows
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            conn.execute(_insert_sql(_INSERT_EVENTS, 9, len(part)), [v for r in part for v in (*r, ts)])
        keys = plan.idempotency_rows
        for i in range(0, len(keys), chunk):
            key_part = keys[i : i + chunk]
            conn.execute(_insert_sql(_INSERT_IDEMPOTENCY, 6, len(key_part)), [v for r in key_part for v in (*r, ts)])

    @staticmethod
    def _plan_checked(
        conn: sqlite3.Connection,
        requests: Sequence[AppendRequest],
        last_position: int,
        versions: dict[str, int],
        now: datetime,
    ) -> BatchPlan:
        """Plan the batch against the stored idempotency keys and event ids it names."""
        _, keys, ids = batch_keys(requests)
        stored_keys = {}
        if keys:
            for row in conn.execute(_IDEMPOTENCY_MANY, (dumps(keys),)):
                rec = idempotency_from_row(row)
                stored_keys[rec.key] = rec
        stored_events = {}
        if ids:
            for row in conn.execute(_EVENTS_BY_ID, (dumps(ids),)):
                ev = record_from_row(row)
                stored_events[ev.event_id] = ev
        return plan_batch(
            requests,
            last_position=last_position,
            versions=versions,
            idempotency=stored_keys,
            stored_events=stored_events,
            ts_recorded=now,
        )

    def save_snapshot(self, snapshot: Snapshot) -> None:
        state = dumps(snapshot.state)
        with self._conns.reader() as conn:
            conn.execute(_SAVE_SNAPSHOT, (snapshot.stream_id, snapshot.version, snapshot.schema, state))

    # --- reading -------------------------------------------------------------------

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        with self._conns.reader() as conn:
            row = conn.execute(_IDEMPOTENCY_ONE, (key,)).fetchone()
        return idempotency_from_row(row) if row else None

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        with self._conns.reader() as conn:
            rows = conn.execute(_READ_STREAM, (stream_id, from_version)).fetchall()
        return [record_from_row(r) for r in rows]

    def stream_version(self, stream_id: str) -> int:
        with self._conns.reader() as conn:
            return int(conn.execute(_STREAM_VERSION, (stream_id,)).fetchone()[0])

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        with self._conns.reader() as conn:
            rows = conn.execute(_READ_ALL, (after_position, max(limit, 0))).fetchall()
        return [record_from_row(r) for r in rows]

    def last_position(self) -> int:
        with self._conns.reader() as conn:
            return int(conn.execute(_LAST_POSITION).fetchone()[0])

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._conns.reader() as conn:
            row = conn.execute(_LOAD_SNAPSHOT, (stream_id,)).fetchone()
        return snapshot_from_row(row) if row else None

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event | None = None,
        batch: int = 1000,
        poll_interval: float | None = None,
    ) -> Iterator[list[RecordedEvent]]:
        """Yield batches after ``after_position``; polls, waking early on this store's appends."""
        interval = self._poll_interval if poll_interval is None else poll_interval
        pos = after_position
        while stop is None or not stop.is_set():
            with self._appended:
                seen = self._append_seq
            chunk = self.read_all(pos, batch)
            if chunk:
                pos = chunk[-1].position
                yield chunk
                continue
            self._wait_for_append(seen, interval, stop)

    def _wait_for_append(self, seen: int, timeout: float, stop: threading.Event | None) -> None:
        """Block until this store appends after ``seen``, ``timeout`` passes or ``stop`` is set."""
        deadline = time.monotonic() + timeout
        with self._appended:
            while self._append_seq == seen and (stop is None or not stop.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                # Short slices keep ``stop`` responsive.
                self._appended.wait(min(remaining, 0.05))

    def close(self) -> None:
        if self._closed:
            return
        self._appender.close()
        self._closed = True
        self._conns.close()
