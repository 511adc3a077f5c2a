"""The distributed read side: Kafka -> the same projections -> the PostgreSQL read store.

How a worker keeps every read model equal to the in-process runner's
====================================================================

``tradecore.events`` is keyed by stream id, so a stream's events stay in order in one
partition, but the order ACROSS partitions is not the order of the log, and some
projections read rows that other streams write: performance attributes a position to
its bot's strategy (account stream + bot stream), notifications and risk alerts are
marked read / acknowledged by events of the user's stream, the portfolio's last price per
symbol comes from every account's fills. Fed partition by partition, those would depend
on which partition happened to be consumed first. So a worker does not apply events in
partition order: it restores the global order.

- **Lanes.** Each projection is a *lane* written by exactly one worker at a time. Lanes
  are leased with PostgreSQL session advisory locks in the read store's database: a
  worker holds ``ceil(lanes / live workers)`` lanes, preferring lanes by a hash of its id
  (so two workers settle on different lanes); a worker that stops (or is killed: its
  session ends, PostgreSQL drops its locks at once) leaves its lanes to the others within
  one lease interval. Ownership is not trusted for correctness: every commit is guarded by
  the checkpoint it started from (``ReadStore.commit(expected=...)``), so a zombie writer
  gets ``StaleCopy`` and reloads instead of applying anything twice.
- **Ordered feed.** A worker reads every partition of ``tradecore.events`` (one consumer,
  partitions assigned manually, no consumer group) and merges them by the ``position`` /
  ``prev`` headers the relay writes: the next event is the one whose ``prev`` is the last
  position emitted. Duplicates (the relay re-publishes after a crash, a rewind re-reads)
  have a position at or below the last one emitted and are dropped. The lanes receive
  exactly the log order, as the in-process runner does.
- **Checkpoints.** A lane applies a batch to its cached model and commits the changed rows
  with the batch's last global position in ONE read-store transaction, guarded by the
  previous position: the same checkpoint the in-process runner and ``rebuild`` use. So a
  copy rebuilt from the event store at position P simply continues from P+1 off Kafka,
  and an event at or below the checkpoint (a re-delivery) is skipped. Kafka offsets are
  never the checkpoint; they are only a *cursor*: every second the feed stores, for the
  last position it emitted, the offset of the first message not yet emitted in each
  partition (``kafka_event_cursors``). Any later position's events lie at or after those
  offsets, so a restart (or a rewind after a rebuild) seeks to the newest cursor at or
  below the lowest lane checkpoint and skips what is already applied. Cursors are written
  outside the commit: a stale cursor only means re-reading a little more.
- **Poison.** A message without usable ``position``/``prev`` headers cannot be placed in
  the order and goes to ``tradecore.events.dlq`` at once; an event that does not decode or
  names an unknown type goes there when its turn comes (it keeps its place in the order, so
  the next event follows it); an event a projection raises on goes there for that
  projection, whose model is reloaded and the rest of the batch re-applied without it. The
  dead letters are also rows of ``kafka_dead_letters`` (one per message and projection,
  which also keeps two workers from publishing the same one twice):
  ``tradecore projections status`` counts them.
- **Marks.** Market data (``tradecore.market-data``) is consumed by every worker (a
  consumer group per worker process) and handed to the lanes it owns that can mark
  (portfolio, risk): marks write rows without moving the checkpoint.
- **Change notices.** After every commit that changed rows, the worker publishes
  ``{projection, copy, position, tables: {table: {keys}}}`` on
  ``tradecore.projection-updates``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson
import structlog

import domain.account_events
import domain.alerts
import domain.bot
import domain.bot_events
import domain.user  # noqa: F401  (registers every event type: messages are decoded by type name)
from adapters.kafka.clients import stop_client
from adapters.kafka.relay import split_schema
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import (
    Placement,
    TopicNames,
    decode_event,
    encode_update,
    placement,
)
from adapters.tasks import spawn_task
from domain.envelope import RecordedEvent
from domain.events import EVENT_TYPES
from projections.base import Projection, ReadModel
from projections.store import ReadStore, StaleCopy, WriteBackModel

log = structlog.get_logger(__name__)

ALL = "*"
"""``projection`` of a dead letter no projection could use (undecodable, unknown type)."""

Marker = Callable[[ReadModel, str, Decimal, datetime], None]


def default_markers() -> dict[str, Marker]:
    """Projections that revalue rows at market prices, by name."""
    from projections.portfolio import mark as portfolio_mark
    from projections.risk import mark as risk_mark

    return {"portfolio": portfolio_mark, "risk": risk_mark}


# --- brokers that ignore fetch_max_wait_ms ----------------------------------------------------

FEED_CLIENT = "-feed-"
"""Part of the ordered feed consumer's client id (it gets the short fetch wait floor)."""
OTHER_CONSUMERS_FLOOR_MS = 25
_floors: dict[str, float] = {}


def install_fetch_wait_floor(ms: int, others_ms: int = OTHER_CONSUMERS_FLOOR_MS) -> None:
    """Hold an empty fetch response until ``ms`` after its request (process-wide, idempotent).

    A broker honouring ``fetch_max_wait_ms`` answers an idle fetch only after that wait, so
    this changes nothing there; a broker that answers at once (noida-db) would otherwise
    make every idle consumer spin on a core. The ordered feed (latency matters) gets
    ``ms``; every other consumer of the process (market data) ``others_ms``.
    """
    if ms <= 0:
        _floors.clear()
        return
    installed = bool(_floors)
    _floors["feed"] = ms / 1000
    _floors["other"] = max(others_ms, ms) / 1000
    if installed:
        return
    from aiokafka.consumer.fetcher import Fetcher

    original = Fetcher._proc_fetch_request

    async def proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        started = time.monotonic()
        got = await original(self, assignment, node_id, request)
        if not got and _floors:
            feed = FEED_CLIENT in str(getattr(self._client, "_client_id", ""))
            rest = _floors["feed" if feed else "other"] - (time.monotonic() - started)
            if rest > 0:
                try:
                    await asyncio.sleep(rest)
                except asyncio.CancelledError:
                    return False
        return got

    Fetcher._proc_fetch_request = proc_fetch_request  # type: ignore[method-assign]


# --- items handed to lanes -----------------------------------------------------------------


@dataclass(slots=True)
class Fed:
    """An event with where it came from (for dead letters)."""

    rec: RecordedEvent
    partition: int
    offset: int


@dataclass(slots=True)
class FeedBatch:
    """Every event in (``after``, ``upto``] of the log that the lane handles, in order."""

    after: int
    upto: int
    upto_ts: datetime | None
    events: list[Fed]


@dataclass(slots=True)
class Mark:
    symbol: str
    price: Decimal
    ts: datetime


@dataclass(slots=True)
class MarkBatch:
    marks: list[Mark]


@dataclass(slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str
    projection: str = ALL
    position: int | None = None
    stream_id: str | None = None
    event_type: str | None = None

    def dlq_headers(self, worker_id: str) -> list[tuple[str, bytes]]:
        return [
            *self.headers,
            ("dlq.reason", self.reason.encode()[:2000]),
            ("dlq.source.topic", self.topic.encode()),
            ("dlq.source.partition", str(self.partition).encode()),
            ("dlq.source.offset", str(self.offset).encode()),
            ("dlq.projection", self.projection.encode()),
            ("dlq.worker", worker_id.encode()),
            ("dlq.ts", datetime.now(UTC).isoformat().encode()),
        ]


@dataclass(slots=True)
class Notice:
    projection: str
    copy: int
    position: int
    changed: dict[str, set[str]]


@dataclass(slots=True)
class LaneResult:
    notice: Notice | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    rewind: bool = False


# --- worker tables in the read store's database -------------------------------------------------


def pg_target(read_store_url: str) -> tuple[str, str]:
    """(libpq URL, schema) of a PostgreSQL read store URL; other stores cannot host workers."""
    scheme, sep, rest = read_store_url.partition("://")
    if scheme.lower() not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError(
            f"the Kafka workers need a PostgreSQL read store (TRADECORE_READ_STORE_URL), not {scheme!r}"
        )
    return split_schema("postgresql://" + rest)


class WorkerDb:
    """``kafka_event_cursors`` and ``kafka_dead_letters`` next to the read store's tables."""

    def __init__(self, dsn: str, schema: str = "public") -> None:
        import psycopg

        self._psycopg = psycopg
        self._dsn = dsn
        self._s = f'"{schema}"'
        self._conn: Any = None
        self._guard = threading.Lock()
        with self._connection() as conn, conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide: workers starting together queue here.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_key("tradecore-worker-ddl"), _key(schema)))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.kafka_event_cursors (topic TEXT NOT NULL,"
                " position BIGINT NOT NULL, offsets JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " PRIMARY KEY (topic, position))"
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.kafka_dead_letters (id BIGSERIAL PRIMARY KEY,"
                " topic TEXT NOT NULL, partition INTEGER NOT NULL, \"offset\" BIGINT NOT NULL,"
                " projection TEXT NOT NULL, reason TEXT NOT NULL, position BIGINT, stream_id TEXT,"
                " event_type TEXT, worker TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " UNIQUE (topic, partition, \"offset\", projection))"
            )

    @contextlib.contextmanager
    def _connection(self) -> Any:
        with self._guard:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = self._psycopg.connect(self._dsn, autocommit=True,
                                                          application_name="tradecore-worker")
            try:
                yield conn
            except self._psycopg.OperationalError:
                conn.close()
                self._conn = None
                raise

    def save_cursor(self, topic: str, position: int, offsets: dict[int, int]) -> None:
        with self._connection() as conn:
            conn.execute(
                f"INSERT INTO {self._s}.kafka_event_cursors (topic, position, offsets) VALUES (%s, %s, %s)"
                " ON CONFLICT (topic, position) DO UPDATE SET offsets = EXCLUDED.offsets, created_at = now()",
                (topic, position, orjson.dumps({str(p): o for p, o in offsets.items()}).decode()),
            )

    def load_cursor(self, topic: str, at_most: int) -> tuple[int, dict[int, int]] | None:
        """The newest cursor at or below ``at_most``: (position, partition -> offset)."""
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT position, offsets FROM {self._s}.kafka_event_cursors WHERE topic = %s AND position <= %s"
                " ORDER BY position DESC LIMIT 1",
                (topic, at_most),
            ).fetchone()
        if row is None:
            return None
        return int(row[0]), {int(p): int(o) for p, o in row[1].items()}

    def prune_cursors(self, topic: str, keep_from: int) -> None:
        """Drop cursors older than the newest one at or below ``keep_from``."""
        with self._connection() as conn:
            conn.execute(
                f"DELETE FROM {self._s}.kafka_event_cursors WHERE topic = %s AND position < ("
                f" SELECT coalesce(max(position), 0) FROM {self._s}.kafka_event_cursors"
                " WHERE topic = %s AND position <= %s)",
                (topic, topic, keep_from),
            )

    def record_dead_letter(self, dl: DeadLetter, worker_id: str) -> bool:
        """Store ``dl``; False when this message was already dead-lettered for that projection."""
        with self._connection() as conn:
            row = conn.execute(
                f"INSERT INTO {self._s}.kafka_dead_letters (topic, partition, \"offset\", projection, reason,"
                " position, stream_id, event_type, worker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (dl.topic, dl.partition, dl.offset, dl.projection, dl.reason, dl.position, dl.stream_id,
                 dl.event_type, worker_id),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        with self._guard:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def dead_letter_counts(read_store_url: str) -> dict[str, int]:
    """Dead letters per projection (``*``: no projection could read the message); {} if none."""
    import psycopg

    dsn, schema = pg_target(read_store_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".kafka_dead_letters',)).fetchone()
        if not exists or exists[0] is None:
            return {}
        rows = conn.execute(
            f'SELECT projection, count(*) FROM "{schema}".kafka_dead_letters GROUP BY projection'
        ).fetchall()
    return {str(p): int(n) for p, n in rows}


# --- lane leases ----------------------------------------------------------------------------


def _key(text: str) -> int:
    return zlib.crc32(text.encode()) & 0x7FFF_FFFF


class Leases:
    """Session advisory locks: one per live worker, one per owned lane (one connection)."""

    def __init__(self, dsn: str, schema: str, worker_id: str) -> None:
        self._dsn = dsn
        self._worker_id = worker_id
        self._workers_class = _key(f"tradecore-workers/{schema}")
        self._lanes_class = _key(f"tradecore-lanes/{schema}")
        self._conn: Any = None
        self.owned: set[str] = set()

    def connect(self) -> None:
        """Open the session and take this worker's own lock (a second worker with the same id fails)."""
        import psycopg

        self.close()
        self.owned.clear()
        conn = psycopg.connect(self._dsn, autocommit=True, application_name=f"tradecore-worker-{self._worker_id}"[:63])
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                           (self._workers_class, _key(self._worker_id))).fetchone()
        if not row or not row[0]:
            conn.close()
            raise RuntimeError(f"another worker runs with the id {self._worker_id!r} (set TRADECORE_KAFKA_WORKER_ID)")
        self._conn = conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def live_workers(self) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s::oid",
            (self._workers_class,),
        ).fetchone()
        return max(int(row[0]), 1)

    def try_acquire(self, lane: str) -> bool:
        if lane in self.owned:
            return True
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._lanes_class, _key(lane))).fetchone()
        if row and row[0]:
            self.owned.add(lane)
            return True
        return False

    def release(self, lane: str) -> None:
        if lane in self.owned:
            self.owned.discard(lane)
            if self.connected:
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self._lanes_class, _key(lane)))

    def preference(self, lanes: Iterable[str]) -> list[str]:
        """Lanes in this worker's order of preference (rendezvous hashing on the worker id)."""
        return sorted(lanes, key=lambda lane: (_key(f"{self._worker_id}/{lane}"), lane))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


# --- a lane: one projection, fed in global order -------------------------------------------------


class Lane:
    """Applies events (in log order) and marks to one projection; commits rows + checkpoint.

    ``process`` runs in a worker thread (projection code and the read store are
    synchronous); at most one call at a time.
    """

    def __init__(
        self,
        projection: Projection,
        read_store: ReadStore,
        *,
        marker: Marker | None = None,
        commit_idle: float = 1.0,
        max_rows: int = 200_000,
    ) -> None:
        self.projection = projection
        self.name = projection.name
        self.handles = projection.handles
        self.marker = marker
        self._rs = read_store
        self._commit_idle = commit_idle
        self._max_rows = max_rows
        self.active = False
        self.copy = 0
        self.position = 0
        """Last position committed to the copy."""
        self.last = 0
        """Last position fed (applied, or skipped as irrelevant); at or above ``position``."""
        self._position_ts: datetime | None = None
        self._last_ts: datetime | None = None
        self.model: WriteBackModel | None = None
        self.waiting = False
        """A rewind was asked for: batches that do not continue ``last`` are dropped quietly."""
        self._waiting_since = 0.0
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()
        self.applied = 0
        self.commits = 0

    # --- loading ------------------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> None:
        rs = self._rs
        p = self.projection
        for _ in range(5):
            copy = rs.active_copy(p.name)
            try:
                position = rs.checkpoint(p.name, copy)
                base = rs.load_model(p.name, copy)
                # A copy at position 0 is empty unless marks wrote to it: only then may the
                # cache assume it holds every row.
                empty = position == 0 and all(next(iter(base.find(t.name)), None) is None for t in p.tables)
                info = next((c for c in rs.copies(p.name) if c.copy == copy), None)
            except StaleCopy:
                continue
            self.copy, self.position, self.last = copy, position, position
            self._position_ts = self._last_ts = info.last_event_ts if info is not None else None
            self.model = WriteBackModel(p.tables, base, complete=empty, max_rows=self._max_rows)
            self._last_commit = time.monotonic()
            log.info("lane.loaded", projection=p.name, copy=copy, position=position)
            return
        raise RuntimeError(f"projection {p.name}: active copy keeps changing")

    def _fresh_model(self) -> WriteBackModel:
        base = self._rs.load_model(self.name, self.copy)
        return WriteBackModel(self.projection.tables, base, complete=False, max_rows=self._max_rows)

    def deactivate(self) -> None:
        with self._lock:
            self.active = False
            self.model = None

    # --- processing -----------------------------------------------------------------------

    def process(self, items: Sequence[FeedBatch | MarkBatch | Mark]) -> LaneResult:
        with self._lock:
            try:
                return self._process(items)
            except Exception as exc:
                # Not a projection's fault (those are dead-lettered): the read store failed
                # mid-way. Start again from what is committed.
                log.error("lane.failed", projection=self.name, error=repr(exc))
                self.model = None
                return LaneResult(rewind=True)

    def _process(self, items: Sequence[FeedBatch | MarkBatch | Mark]) -> LaneResult:
        result = LaneResult()
        if not self.active:
            return result
        if self.model is None:  # a failed commit left nothing trustworthy: reload, then re-read
            try:
                self._load()
            except Exception as exc:
                log.warning("lane.reload_failed", projection=self.name, error=repr(exc))
                return result
            self._ask_rewind(result)
        fed_to, upto_ts = self.last, self._last_ts
        ops: list[Fed | Mark] = []
        for item in items:
            if isinstance(item, Mark | MarkBatch):
                if self.marker is not None:
                    ops.extend(item.marks if isinstance(item, MarkBatch) else [item])
                continue
            if item.after > fed_to:
                # A gap: events between ``fed_to`` and ``item.after`` never reached this lane
                # (a rebuild moved the checkpoint back, or batches from before a rewind).
                if not self.waiting or time.monotonic() - self._waiting_since > 10.0:
                    self._ask_rewind(result)
                continue
            self.waiting = False
            for f in item.events:
                if f.rec.position > fed_to:
                    ops.append(f)
            if item.upto > fed_to:
                fed_to, upto_ts = item.upto, item.upto_ts
        moved = fed_to > self.position
        due = moved and (time.monotonic() - self._last_commit >= self._commit_idle
                         or fed_to - self.position >= 50_000)
        if not ops and not due:
            self.last, self._last_ts = fed_to, upto_ts
            return result
        self._apply(ops, result)
        model = self.model
        assert model is not None
        changes = model.take_changes()
        if changes or due:
            new = fed_to if moved else self.position
            ts = upto_ts if moved else self._position_ts
            try:
                self._rs.commit(self.name, changes, new, copy=self.copy, expected=self.position, last_event_ts=ts)
            except StaleCopy as exc:
                old = fed_to
                log.info("lane.stale", projection=self.name, reason=str(exc))
                self._load()
                if self.position < old:
                    self._ask_rewind(result)
                return result
            except Exception as exc:
                log.error("lane.commit_failed", projection=self.name, error=repr(exc), position=new)
                self.model = None  # reload (and re-read from the checkpoint) on the next call
                return result
            self.position, self._position_ts = new, ts
            self._last_commit = time.monotonic()
            self.commits += 1
            model.trim()
            if changes:
                result.notice = Notice(self.name, self.copy, new, {t: set(rows) for t, rows in changes.items()})
        self.last, self._last_ts = fed_to, upto_ts
        return result

    def _ask_rewind(self, result: LaneResult) -> None:
        self.waiting = True
        self._waiting_since = time.monotonic()
        result.rewind = True

    def _apply(self, ops: list[Fed | Mark], result: LaneResult) -> None:
        model = self.model
        assert model is not None
        apply = self.projection.apply
        done: list[Fed | Mark] = []
        for op in ops:
            try:
                if isinstance(op, Mark):
                    assert self.marker is not None
                    self.marker(model, op.symbol, op.price, op.ts)
                else:
                    apply(model, op.rec)
                    self.applied += 1
            except Exception as exc:
                if isinstance(op, Mark):
                    log.error("lane.mark_failed", projection=self.name, symbol=op.symbol, error=repr(exc))
                else:
                    rec = op.rec
                    log.error("lane.poison", projection=self.name, position=rec.position, event_type=rec.type,
                              stream_id=rec.stream_id, error=repr(exc))
                    result.dead.append(DeadLetter(
                        topic="", partition=op.partition, offset=op.offset, key=rec.stream_id.encode(),
                        value=orjson.dumps(rec.to_dict()), headers=_event_headers(rec),
                        reason=f"projection {self.name} failed: {type(exc).__name__}: {exc}",
                        projection=self.name, position=rec.position, stream_id=rec.stream_id, event_type=rec.type,
                    ))
                # The failed call may have changed cached rows in place: start again from the
                # committed rows and re-apply what succeeded before it.
                model = self.model = self._fresh_model()
                for again in done:
                    if isinstance(again, Mark):
                        assert self.marker is not None
                        self.marker(model, again.symbol, again.price, again.ts)
                    else:
                        apply(model, again.rec)
                continue
            done.append(op)


def _event_headers(rec: RecordedEvent) -> list[tuple[str, bytes]]:
    return [("position", str(rec.position).encode()), ("version", str(rec.version).encode()),
            ("type", rec.type.encode()), ("stream", rec.stream_id.encode())]


# --- the ordered feed ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Msg:
    pl: Placement
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class _Rewind(Exception):
    pass


Sink = Callable[[Lane, FeedBatch | MarkBatch], Awaitable[None]]
DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]


class OrderedFeed:
    """Reads every partition of the events topic and hands the lanes the log in global order."""

    def __init__(
        self,
        settings: KafkaSettings,
        db: WorkerDb,
        lanes: Callable[[], list[Lane]],
        sink: Sink,
        dead_letter: DeadLetterSink,
    ) -> None:
        self._settings = settings
        self._topic = TopicNames.of(settings).events
        self._db = db
        self._lanes = lanes
        self._sink = sink
        self._dead_letter = dead_letter
        self._rewind = False
        self._changed = asyncio.Event()
        self.emitted = 0
        self.cursor_position = 0
        self._offsets: dict[int, int] = {}
        self._buffers: dict[int, deque[_Msg]] = {}
        self._sent: dict[str, int] = {}
        self._sent_at: dict[str, float] = {}
        self._pending: dict[str, list[Fed]] = {}
        self._last_ts: datetime | None = None
        self.stats = {"events": 0, "duplicates": 0, "dead": 0, "rewinds": 0}

    def request_rewind(self) -> None:
        """Start again from the lowest lane position (a lane lost events it had been fed)."""
        self._rewind = True
        self._changed.set()

    def lanes_changed(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        """Feed while lanes are active; crash-only: any error restarts from the lanes' positions."""
        backoff = 0.2
        while True:
            # Clear first: a lane change or rewind asked for after this is seen by the loop.
            self._changed.clear()
            self._rewind = False
            lanes = [ln for ln in self._lanes() if ln.active]
            if not lanes:
                await self._changed.wait()
                continue
            try:
                await self._consume(lanes)
                backoff = 0.2
            except _Rewind:
                self.stats["rewinds"] += 1
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("feed.failed", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _consume(self, lanes: list[Lane]) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self._settings
        start = min(ln.last for ln in lanes)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.servers(), client_id=f"{s.client_id}{FEED_CLIENT}{s.worker_id}", group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self._topic)
            for _ in range(50):
                if parts:
                    break
                await consumer.topics()
                parts = consumer.partitions_for_topic(self._topic)
                if not parts:
                    await asyncio.sleep(0.2)
            if not parts:
                raise RuntimeError(f"topic {self._topic} has no partitions (not created yet?)")
            tps = {p: TopicPartition(self._topic, p) for p in sorted(parts)}
            consumer.assign(list(tps.values()))
            cursor = await asyncio.to_thread(self._db.load_cursor, self._topic, start)
            known = cursor[1] if cursor else {}
            beginning = await consumer.beginning_offsets(list(tps.values()))
            self._offsets = {}
            for p, tp in tps.items():
                offset = max(known.get(p, 0), beginning[tp])
                consumer.seek(tp, offset)
                self._offsets[p] = offset
            self.emitted = start
            self.cursor_position = cursor[0] if cursor else 0
            self._buffers = {p: deque() for p in tps}
            self._sent = {ln.name: start for ln in lanes}
            self._sent_at = {ln.name: time.monotonic() for ln in lanes}
            self._pending = {ln.name: [] for ln in lanes}
            self._last_ts = None
            log.info("feed.start", topic=self._topic, after=start, cursor=cursor[0] if cursor else None,
                     lanes=[ln.name for ln in lanes])
            await self._loop(consumer, tps, lanes)
        finally:
            await stop_client(consumer)

    async def _loop(self, consumer: Any, tps: dict[int, Any], lanes: list[Lane]) -> None:
        paused: set[int] = set()
        last_cursor = last_report = time.monotonic()
        stalled_since: float | None = None
        by_name = {ln.name: ln for ln in lanes}
        while True:
            if self._rewind:
                raise _Rewind()
            if self._changed.is_set():
                self._changed.clear()
                now_active = {ln.name: ln for ln in self._lanes() if ln.active}
                if any(ln.last < self.emitted for n, ln in now_active.items() if n not in by_name):
                    raise _Rewind()
                for n in now_active:
                    if n not in by_name:
                        self._sent[n] = self.emitted
                        self._sent_at[n] = time.monotonic()
                        self._pending[n] = []
                by_name = now_active
                lanes = list(now_active.values())
                if not lanes:
                    return
            data = await consumer.getmany(timeout_ms=100, max_records=self._settings.worker_batch)
            for tp, msgs in data.items():
                buf = self._buffers[tp.partition]
                for m in msgs:
                    self._offsets[tp.partition] = m.offset + 1
                    headers = list(m.headers or ())
                    try:
                        pl = placement(headers)
                    except (ValueError, TypeError) as exc:
                        await self._dead(DeadLetter(self._topic, tp.partition, m.offset, m.key, m.value, headers,
                                                    f"cannot place the message in the log order: {exc}"))
                        continue
                    if pl.position <= self.emitted:
                        self.stats["duplicates"] += 1
                        continue
                    buf.append(_Msg(pl, tp.partition, m.offset, m.key, m.value, headers))
            emitted_before = self.emitted
            await self._merge(lanes)
            await self._flush(lanes)
            # Back-pressure: a partition far ahead of the merge point stops fetching.
            for p, buf in self._buffers.items():
                if len(buf) > 20_000 and p not in paused:
                    consumer.pause(tps[p])
                    paused.add(p)
                elif len(buf) < 5_000 and p in paused:
                    consumer.resume(tps[p])
                    paused.discard(p)
            now = time.monotonic()
            if self.emitted != emitted_before or not any(self._buffers.values()):
                stalled_since = None
            elif stalled_since is None:
                stalled_since = now
            elif now - stalled_since > 30:
                heads = {p: b[0].pl.prev for p, b in self._buffers.items() if b}
                log.warning("feed.waiting", after=self.emitted, next_prev_by_partition=heads,
                            hint="an event is missing from the topic (retention?): rebuild from the event store")
                stalled_since = now
            if now - last_report >= 10.0:
                last_report = now
                log.info("feed.progress", emitted=self.emitted, buffered={p: len(b) for p, b in self._buffers.items()},
                         paused=sorted(paused), **self.stats)
            if now - last_cursor >= 1.0 and self.emitted > self.cursor_position:
                await self._save_cursor()
                last_cursor = now

    async def _save_cursor(self) -> None:
        offsets = {p: (buf[0].offset if buf else self._offsets[p]) for p, buf in self._buffers.items()}
        position = self.emitted
        try:
            await asyncio.to_thread(self._db.save_cursor, self._topic, position, offsets)
            self.cursor_position = position
        except Exception as exc:
            log.warning("feed.cursor_not_saved", error=repr(exc))

    async def _merge(self, lanes: list[Lane]) -> None:
        buffers = self._buffers
        pending = self._pending
        routes: dict[str, list[list[Fed]]] = {}
        while True:
            best: _Msg | None = None
            for buf in buffers.values():
                while buf and buf[0].pl.position <= self.emitted:
                    buf.popleft()
                    self.stats["duplicates"] += 1
                if buf and (best is None or buf[0].pl.position < best.pl.position):
                    best = buf[0]
            # The next event in the log is the one that follows the last one emitted.
            if best is None or best.pl.prev > self.emitted:
                return
            buffers[best.partition].popleft()
            self.emitted = best.pl.position
            self.stats["events"] += 1
            rec = await self._decode(best)
            if rec is None:
                continue
            self._last_ts = rec.ts_recorded
            targets = routes.get(rec.type)
            if targets is None:
                targets = routes[rec.type] = [pending[ln.name] for ln in lanes if rec.type in ln.handles]
            if targets:
                fed = Fed(rec, best.partition, best.offset)
                for t in targets:
                    t.append(fed)

    async def _decode(self, m: _Msg) -> RecordedEvent | None:
        reason = None
        rec = None
        try:
            if m.value is None:
                raise ValueError("empty value")
            rec = decode_event(m.value)
            if rec.position != m.pl.position:
                raise ValueError(f"position {rec.position} differs from the header's {m.pl.position}")
            EVENT_TYPES.get(rec.type)
        except LookupError as exc:
            reason = f"unknown event type: {exc}"
        except Exception as exc:
            reason = f"undecodable event: {type(exc).__name__}: {exc}"
        else:
            try:
                rec.event  # noqa: B018  (decode now: a payload no handler could read is poison)
            except Exception as exc:
                reason = f"undecodable {rec.type} payload: {type(exc).__name__}: {exc}"
        if reason is None:
            return rec
        await self._dead(DeadLetter(
            self._topic, m.partition, m.offset, m.key, m.value, m.headers, reason,
            position=m.pl.position, stream_id=rec.stream_id if rec else None, event_type=rec.type if rec else None,
        ))
        return None

    async def _dead(self, dl: DeadLetter) -> None:
        self.stats["dead"] += 1
        log.error("feed.poison", topic=dl.topic, partition=dl.partition, offset=dl.offset, reason=dl.reason,
                  position=dl.position)
        await self._dead_letter(dl)

    async def _flush(self, lanes: list[Lane]) -> None:
        now = time.monotonic()
        idle = self._settings.worker_commit_idle
        for ln in lanes:
            name = ln.name
            events = self._pending[name]
            sent = self._sent[name]
            if self.emitted <= sent:
                if ln.last > ln.position and now - self._sent_at[name] >= idle:
                    # Nothing new, but the lane has not committed how far it got: a tick
                    # lets it write its checkpoint.
                    self._sent_at[name] = now
                    await self._sink(ln, FeedBatch(sent, sent, self._last_ts, []))
                continue
            if not events and now - self._sent_at[name] < idle and self.emitted - sent < 5_000:
                continue  # nothing this lane handles: advance its checkpoint now and then
            self._pending[name] = []
            self._sent[name] = self.emitted
            self._sent_at[name] = now
            await self._sink(ln, FeedBatch(sent, self.emitted, self._last_ts, events))


# --- the worker ------------------------------------------------------------------------------------


class Publisher(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]] | None = None) -> None: ...


class ReadSideWorker:
    """Leases lanes, runs the ordered feed, applies lane batches, publishes notices and dead letters.

    Framework-free: the faust app (``streams.faust_app``) wires ``deliver`` to its lane
    agents' channels, ``process`` to their streams and ``mark`` to its market-data agent.
    """

    def __init__(
        self,
        read_store_url: str,
        settings: KafkaSettings,
        projections: Iterable[Projection | type[Projection]],
        publisher: Publisher,
        *,
        read_store: ReadStore | None = None,
        markers: dict[str, Marker] | None = None,
    ) -> None:
        from projections.store import projection_instance

        self.settings = settings
        self.names = TopicNames.of(settings)
        self.worker_id = settings.worker_id
        self._read_store_url = read_store_url
        self._dsn, self._schema = pg_target(read_store_url)
        self._own_rs = read_store is None
        self._rs = read_store
        self._projections = [projection_instance(p) for p in projections]
        allowed = set(settings.worker_projections)
        if allowed:
            unknown = allowed - {p.name for p in self._projections}
            if unknown:
                raise ValueError(f"TRADECORE_KAFKA_WORKER_PROJECTIONS names unknown projections: {sorted(unknown)}")
        self._allowed = allowed
        self._markers = default_markers() if markers is None else markers
        self._publisher = publisher
        self.lanes: dict[str, Lane] = {}
        self.deliver: Sink = self._no_sink
        self._db: WorkerDb | None = None
        self._leases: Leases | None = None
        self.feed: OrderedFeed | None = None
        self._feed_task: asyncio.Task[Any] | None = None
        self._outbox: asyncio.Queue[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] | None = None
        self._outbox_task: asyncio.Task[Any] | None = None
        self._rebalance_lock = asyncio.Lock()
        self._lane_locks: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, list[FeedBatch | MarkBatch | Mark]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._room: dict[str, asyncio.Event] = {}
        self._drainers: list[asyncio.Task[Any]] = []
        self._started = False
        self._stopping = False
        self._last_prune = 0.0

    async def _no_sink(self, lane: Lane, item: FeedBatch | MarkBatch) -> None:
        await self.process(lane.name, [item])

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self._rs is None:
            from adapters.readstore import open_read_store

            self._rs = await asyncio.to_thread(open_read_store, self._read_store_url)
        rs = self._rs
        await asyncio.to_thread(rs.register, self._projections)
        for p in self._projections:
            self.lanes[p.name] = Lane(p, rs, marker=self._markers.get(p.name),
                                      commit_idle=self.settings.worker_commit_idle)
            self._lane_locks[p.name] = asyncio.Lock()
            self._queued[p.name] = []
            self._wake[p.name] = asyncio.Event()
            self._room[p.name] = asyncio.Event()
            self._drainers.append(spawn_task(f"worker-lane-{p.name}", self._drain(p.name)))
        self._db = await asyncio.to_thread(WorkerDb, self._dsn, self._schema)
        self._leases = Leases(self._dsn, self._schema, self.worker_id)
        await asyncio.to_thread(self._leases.connect)
        self._outbox = asyncio.Queue(maxsize=10_000)
        self._outbox_task = spawn_task(f"worker-outbox-{self.worker_id}", self._send_outbox())
        self.feed = OrderedFeed(self.settings, self._db, lambda: list(self.lanes.values()),
                                lambda lane, item: self.deliver(lane, item), self.dead_letter)
        self._feed_task = spawn_task(f"worker-feed-{self.worker_id}", self.feed.run())
        self._started = True
        log.info("worker.start", worker=self.worker_id, projections=list(self.lanes))
        await self.rebalance()

    async def stop(self) -> None:
        """Stop feeding, let running batches finish, give the lanes back."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(BaseException):
                await self._feed_task
        async with self._rebalance_lock:
            for name in list(self.lanes):
                await self._release(name)
        for task in self._drainers:
            task.cancel()
        if self._outbox is not None and self._outbox_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._outbox.join(), 3.0)
            self._outbox_task.cancel()
        if self._leases is not None:
            await asyncio.to_thread(self._leases.close)
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
        if self._own_rs and self._rs is not None:
            await asyncio.to_thread(self._rs.close)
        log.info("worker.stopped", worker=self.worker_id)

    # --- leases -----------------------------------------------------------------------------

    async def rebalance(self) -> None:
        """Hold ``ceil(lanes / live workers)`` lanes (call every lease interval)."""
        if not self._started or self._stopping:
            return
        async with self._rebalance_lock:
            leases = self._leases
            assert leases is not None
            try:
                if not leases.connected:
                    for name in [n for n, ln in self.lanes.items() if ln.active]:
                        await self._deactivate(name)
                    await asyncio.to_thread(leases.connect)
                live = await asyncio.to_thread(leases.live_workers)
            except Exception as exc:
                log.warning("worker.lease_check_failed", error=repr(exc))
                for name in [n for n, ln in self.lanes.items() if ln.active]:
                    await self._deactivate(name)
                leases.close()
                return
            eligible = [n for n in self.lanes if not self._allowed or n in self._allowed]
            target = math.ceil(len(self.lanes) / live)
            order = leases.preference(eligible)
            owned = [n for n in order if n in leases.owned]
            for name in reversed(owned[target:]):
                await self._release(name)
            changed = False
            for name in order:
                if len(leases.owned) >= target:
                    break
                if name in leases.owned:
                    continue
                got = await asyncio.to_thread(leases.try_acquire, name)
                if not got:
                    continue
                lane = self.lanes[name]
                try:
                    await asyncio.to_thread(lane.load)
                except Exception as exc:
                    log.error("worker.lane_load_failed", projection=name, error=repr(exc))
                    await asyncio.to_thread(leases.release, name)
                    continue
                lane.active = True
                changed = True
                log.info("worker.lane_acquired", worker=self.worker_id, projection=name, position=lane.position,
                         live_workers=live)
            if changed and self.feed is not None:
                self.feed.lanes_changed()
        now = time.monotonic()
        if now - self._last_prune > 60:
            self._last_prune = now
            await self._prune_cursors()
            log.info("worker.status", **self.status())

    async def _deactivate(self, name: str) -> None:
        async with self._lane_locks[name]:
            await asyncio.to_thread(self.lanes[name].deactivate)
        self._queued[name].clear()
        self._room[name].set()

    async def _release(self, name: str) -> None:
        lane = self.lanes[name]
        if not lane.active and (self._leases is None or name not in self._leases.owned):
            return
        await self._deactivate(name)
        if self._leases is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._leases.release, name)
        if self.feed is not None:
            self.feed.lanes_changed()
        log.info("worker.lane_released", worker=self.worker_id, projection=name)

    async def _prune_cursors(self) -> None:
        assert self._rs is not None and self._db is not None
        try:
            copies = await asyncio.to_thread(self._rs.copies)
            positions = [c.position for c in copies if c.name in self.lanes]
            if positions:
                await asyncio.to_thread(self._db.prune_cursors, self.names.events, min(positions))
        except Exception as exc:
            log.warning("worker.prune_failed", error=repr(exc))

    # --- lanes ------------------------------------------------------------------------------

    async def process(self, name: str, items: Sequence[FeedBatch | MarkBatch | Mark]) -> None:
        """Take a lane's items (from its agent's stream); they are applied by the lane's drainer.

        Items that arrive while the lane is committing are applied together in its next
        transaction: a lane that is idle applies an item at once, a busy one in batches
        that grow with the load. Waits while many items are queued (back-pressure).
        """
        lane = self.lanes[name]
        if not lane.active:
            return
        queued = self._queued[name]
        queued.extend(items)
        self._wake[name].set()
        while len(queued) >= 16 and lane.active:
            room = self._room[name]
            room.clear()
            await room.wait()

    async def _drain(self, name: str) -> None:
        lane = self.lanes[name]
        queued = self._queued[name]
        wake, room = self._wake[name], self._room[name]
        while True:
            await wake.wait()
            wake.clear()
            while queued:
                items = list(queued)
                queued.clear()
                room.set()
                if not lane.active:
                    continue
                async with self._lane_locks[name]:
                    result = await asyncio.to_thread(lane.process, items)
                await self._handle(result)
            room.set()

    async def _handle(self, result: LaneResult) -> None:
        if result.rewind and self.feed is not None:
            self.feed.request_rewind()
        for dl in result.dead:
            dl.topic = self.names.events
            await self.dead_letter(dl)
        if result.notice is not None:
            n = result.notice
            key, value = encode_update(n.projection, n.copy, n.position, n.changed, datetime.now(UTC))
            self._enqueue(self.names.updates, key, value, [])

    async def mark(self, marks: list[Mark]) -> None:
        """Hand market prices to every owned lane that can mark."""
        for lane in self.lanes.values():
            if lane.active and lane.marker is not None:
                await self.deliver(lane, MarkBatch(marks))

    async def dead_letter(self, dl: DeadLetter) -> None:
        """Record ``dl`` once (table) and publish it on the DLQ topic."""
        assert self._db is not None
        try:
            first = await asyncio.to_thread(self._db.record_dead_letter, dl, self.worker_id)
        except Exception as exc:
            log.error("worker.dead_letter_not_recorded", error=repr(exc), reason=dl.reason)
            first = True
        if first:
            self._enqueue(self.names.dlq, dl.key, dl.value, dl.dlq_headers(self.worker_id))

    def _enqueue(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        assert self._outbox is not None
        try:
            self._outbox.put_nowait((topic, key, value, headers))
        except asyncio.QueueFull:
            log.warning("worker.outbox_full", topic=topic)

    async def _send_outbox(self) -> None:
        assert self._outbox is not None
        while True:
            topic, key, value, headers = await self._outbox.get()
            try:
                for attempt in range(5):
                    try:
                        await self._publisher.send(topic, key, value, headers)
                        break
                    except Exception as exc:
                        log.warning("worker.publish_failed", topic=topic, error=repr(exc), attempt=attempt + 1)
                        await asyncio.sleep(0.2 * 2**attempt)
            finally:
                self._outbox.task_done()

    # --- inspection ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "lanes": {n: {"position": ln.position, "last": ln.last, "applied": ln.applied, "commits": ln.commits}
                      for n, ln in self.lanes.items() if ln.active},
            "feed": dict(self.feed.stats) if self.feed else {},
        }
