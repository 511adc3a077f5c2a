"""The relay (``tradecore relay``): event log -> ``tradecore.events``, in global order.

A reader thread tails the event store (``subscribe``: woken by NOTIFY on PostgreSQL,
polling on SQLite) and hands batches to the publisher, which sends every event keyed by
its stream id with an idempotent producer (``acks=all``) and waits for all acks before it
writes the relay checkpoint (the last position published) to ``relay_checkpoints`` in
the event store's own database. A crash between publishing and checkpointing re-publishes
the tail of the last batch on restart: duplicates are possible, gaps are not, and the
consumers drop what they have already applied (every message carries its global
position and the position before it).

When the broker is unreachable the commands go on being appended (the relay is not on
their path); the relay keeps the unacknowledged batch, drops its producer, backs off
exponentially (with jitter, up to ``relay_backoff_max``), logs every failed attempt, and
re-publishes the same batch with a fresh producer until it is acknowledged; it then
catches up batch by batch.

On PostgreSQL one relay per checkpoint name is active (a session advisory lock): a second
relay waits as a standby and takes over when the first one's session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from adapters.kafka.clients import stop_client
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import TopicNames, encode_event, ensure_topics
from adapters.tasks import spawn_thread
from commands.ports import EventStore
from domain.envelope import RecordedEvent

log = structlog.get_logger(__name__)

_LOCK_CLASS = 0x7265_6C61  # "rela"


# --- checkpoints ------------------------------------------------------------------------------


class RelayCheckpoints(Protocol):
    """Where the relay remembers the last position the broker acknowledged."""

    def load(self, name: str) -> int: ...

    def save(self, name: str, position: int) -> None: ...

    def try_lock(self, name: str) -> bool:
        """Become the one active relay of ``name`` (True when no other process is)."""
        ...

    def close(self) -> None: ...


class MemoryRelayCheckpoints:
    """For an in-memory event store (tests): lost on exit, like the store."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}

    def load(self, name: str) -> int:
        return self._positions.get(name, 0)

    def save(self, name: str, position: int) -> None:
        self._positions[name] = max(position, self._positions.get(name, 0))

    def try_lock(self, name: str) -> bool:
        return True

    def close(self) -> None:
        pass


class SqliteRelayCheckpoints:
    """``relay_checkpoints`` in the SQLite event store's file."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS relay_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL,"
            " updated_at TEXT NOT NULL)"
        )

    def load(self, name: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT position FROM relay_checkpoints WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def save(self, name: str, position: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO relay_checkpoints (name, position, updated_at) VALUES (?, ?, datetime('now'))"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at"
                " WHERE excluded.position > relay_checkpoints.position",
                (name, position),
            )

    def try_lock(self, name: str) -> bool:
        return True  # one host: the deployment runs one relay per SQLite file

    def close(self) -> None:
        self._conn.close()


class PostgresRelayCheckpoints:
    """``relay_checkpoints`` in the PostgreSQL event store's schema; a session lock per name."""

    def __init__(self, dsn: str, schema: str = "public") -> None:
        import psycopg

        self._psycopg = psycopg
        self._dsn = dsn
        self._table = f'"{schema}".relay_checkpoints'
        self._schema = schema
        self._conn: Any = None
        self._lock_conn: Any = None
        self._guard = threading.Lock()
        with self._connection() as conn, conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide: relays starting together queue here.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, 0))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (name TEXT PRIMARY KEY, position BIGINT NOT NULL,"
                " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )

    @contextlib.contextmanager
    def _connection(self) -> Any:
        with self._guard:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = self._psycopg.connect(self._dsn, autocommit=True,
                                                          application_name="tradecore-relay")
            try:
                yield conn
            except self._psycopg.OperationalError:
                conn.close()
                self._conn = None
                raise

    def load(self, name: str) -> int:
        with self._connection() as conn:
            row = conn.execute(f"SELECT position FROM {self._table} WHERE name = %s", (name,)).fetchone()
        return int(row[0]) if row else 0

    def save(self, name: str, position: int) -> None:
        with self._connection() as conn:
            conn.execute(
                f"INSERT INTO {self._table} AS c (name, position) VALUES (%s, %s) ON CONFLICT (name)"
                " DO UPDATE SET position = EXCLUDED.position, updated_at = now() WHERE c.position < EXCLUDED.position",
                (name, position),
            )

    def try_lock(self, name: str) -> bool:
        lock = self._lock_conn
        if lock is not None and not lock.closed and not lock.broken:
            return True
        lock = self._psycopg.connect(self._dsn, autocommit=True, application_name="tradecore-relay-lock")
        key = zlib.crc32(f"{self._schema}/{name}".encode()) & 0x7FFF_FFFF
        row = lock.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, key)).fetchone()
        if row and row[0]:
            self._lock_conn = lock
            return True
        lock.close()
        return False

    def close(self) -> None:
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._conn = self._lock_conn = None


def open_relay_checkpoints(url: str) -> RelayCheckpoints:
    """The checkpoint store for an event store URL (``memory://``, ``sqlite:///``, ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryRelayCheckpoints()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return SqliteRelayCheckpoints(rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        dsn, schema = split_schema("postgresql://" + rest)
        return PostgresRelayCheckpoints(dsn, schema)
    raise ValueError(
        f"the relay cannot keep a checkpoint for {scheme!r} URLs: set TRADECORE_KAFKA_RELAY_CHECKPOINT_URL"
    )


def split_schema(url: str) -> tuple[str, str]:
    """(libpq URL without ``schema``, schema) of a ``postgresql://...?schema=name`` URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    return dsn, schema


# --- the relay -------------------------------------------------------------------------------


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    failures: int = 0
    position: int = 0
    started: float = field(default_factory=time.monotonic)
    max_rate: float = 0.0
    """Highest events/s over a batch of at least 1000 events."""


ProducerFactory = Callable[[KafkaSettings], Any]


def default_producer(settings: KafkaSettings) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=settings.servers(),
        client_id=f"{settings.client_id}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.relay_linger_ms,
        max_batch_size=1 << 20,
        request_timeout_ms=int(settings.relay_send_timeout * 1000),
        retry_backoff_ms=250,  # while the broker is away, a reconnect attempt (and log line) 4 times a second
    )


_END = object()


class _Inbox:
    """Batches from the reader thread to the publisher's event loop, at most ``capacity`` queued.

    ``take`` hands over every queued batch as ONE batch (they are contiguous: the reader
    reads the log in order), so batches that arrived while the publisher was waiting for
    acks go out in one publish instead of one each: the relay batches by itself when
    loaded and adds no delay when idle. The reader wakes the loop directly (no executor
    thread in between).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 4) -> None:
        self._loop = loop
        self._slots = threading.Semaphore(capacity)
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._signalled = False

    def put(self, item: Any, stop: threading.Event) -> bool:
        """Queue ``item`` (reader thread); False if ``stop`` was set while waiting for room."""
        while not self._slots.acquire(timeout=0.1):
            if stop.is_set():
                return False
        self._push(item)
        return True

    def put_end(self) -> None:
        self._push(_END)  # never blocks: the publisher must learn that the reader ended

    def _push(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            signal, self._signalled = not self._signalled, True
        if signal:  # one wake-up per hand-over, however many batches it carries
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, max_events: int, timeout: float) -> Any:
        """The queued batches merged (up to ``max_events``), ``_END``, or None (``timeout``, ``wake``)."""
        with self._lock:
            if self._items:
                return self._pop(max_events)
            self._signalled = False
            self._ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        with self._lock:
            return self._pop(max_events) if self._items else None

    def wake(self) -> None:
        """Make a waiting ``take`` return (event-loop thread)."""
        self._ready.set()

    def _pop(self, max_events: int) -> Any:
        # Called with self._lock held.
        first = self._items[0]
        if first is _END:
            return _END
        self._items.popleft()
        self._slots.release()
        if not self._items or self._items[0] is _END or len(first) + len(self._items[0]) > max_events:
            return first
        merged = list(first)
        while self._items and self._items[0] is not _END and len(merged) + len(self._items[0]) <= max_events:
            merged.extend(self._items.popleft())
            self._slots.release()
        return merged

    def drain(self) -> None:
        """Drop what is queued, freeing the reader if it waits for room."""
        with self._lock:
            while self._items:
                if self._items.popleft() is not _END:
                    self._slots.release()


class Relay:
    """Publishes the event log to Kafka; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        store: EventStore,
        checkpoints: RelayCheckpoints,
        settings: KafkaSettings,
        *,
        producer_factory: ProducerFactory = default_producer,
    ) -> None:
        self._store = store
        self._cp = checkpoints
        self._settings = settings
        self._name = settings.relay_name
        self._topic = TopicNames.of(settings).events
        self._make_producer = producer_factory
        self._producer: Any = None
        self._topics_ready = not settings.create_topics
        self._prev = 0
        self._saved = 0
        self._saving: asyncio.Task[None] | None = None
        self._last_save = 0.0
        self.stats = RelayStats()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; returns after the last acknowledged batch is checkpointed."""
        while not await self._locked(stop):
            if stop.is_set():
                return
        after = await asyncio.to_thread(self._cp.load, self._name)
        self._prev = self._saved = self.stats.position = after
        self._last_save = time.monotonic()
        log.info("relay.start", name=self._name, topic=self._topic, after=after)
        inbox = _Inbox(asyncio.get_running_loop())
        reader_stop = threading.Event()
        reader = spawn_thread(f"relay-reader-{self._name}", self._read, after, inbox, reader_stop)
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: inbox.wake())
        try:
            while not stop.is_set():
                item = await inbox.take(self._settings.relay_batch, 0.2)
                if item is None:  # idle (or stopping): make the checkpoint current
                    await self._checkpoint(force=True)
                    continue
                if item is _END:
                    if reader.error is not None:
                        raise RuntimeError("the relay's event-store reader failed") from reader.error
                    return
                if not await self._publish_until_acked(item, stop):
                    return  # stopped while the broker was failing: that batch stays unsaved
                await self._checkpoint(force=False)
        finally:
            stopping.cancel()
            reader_stop.set()
            inbox.drain()
            with contextlib.suppress(Exception):
                await self._reap(wait=True)
            with contextlib.suppress(Exception):
                await self._checkpoint(force=True, wait=True)
            await self._drop_producer()
            await asyncio.to_thread(reader.finished.wait, 10)
            log.info("relay.stopped", name=self._name, position=self._prev, published=self.stats.published)

    async def _checkpoint(self, *, force: bool, wait: bool = False) -> None:
        """Save the last acknowledged position, at most every ``relay_checkpoint_interval``.

        The save runs beside the publishing, one at a time: the next batch does not wait
        for it. A checkpoint behind the broker only means re-publishing a little after a
        restart (consumers drop duplicates). A failed save is raised by a later call.
        """
        await self._reap(wait=False)
        if self._saving is not None or self._prev <= self._saved:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self._settings.relay_checkpoint_interval:
            return
        self._last_save = now
        self._saving = asyncio.ensure_future(self._save(self._prev))
        if wait:
            await self._reap(wait=True)

    async def _reap(self, *, wait: bool) -> None:
        """Collect the running save if it ended (``wait``: once it ends); raise its failure."""
        saving = self._saving
        if saving is None:
            return
        if wait:
            await asyncio.wait((saving,))
        if saving.done():
            self._saving = None
            saving.result()

    async def _save(self, position: int) -> None:
        await asyncio.to_thread(self._cp.save, self._name, position)
        self._saved = max(self._saved, position)

    async def _locked(self, stop: asyncio.Event) -> bool:
        try:
            if await asyncio.to_thread(self._cp.try_lock, self._name):
                return True
            log.info("relay.standby", name=self._name, reason="another relay holds this checkpoint")
        except Exception as exc:
            log.warning("relay.lock_failed", name=self._name, error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        return False

    def _read(self, after: int, out: _Inbox, stop: threading.Event) -> None:
        try:
            for batch in self._store.subscribe(after, stop=stop, batch=self._settings.relay_batch,
                                               poll_interval=self._settings.relay_poll_interval):
                if not out.put(batch, stop):
                    return
        finally:
            out.put_end()

    # --- publishing -----------------------------------------------------------------------

    async def _publish_until_acked(self, batch: Sequence[RecordedEvent], stop: asyncio.Event) -> bool:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._publish(batch), self._settings.relay_send_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.stats.failures += 1
                delay = min(self._settings.relay_backoff_max,
                            self._settings.relay_backoff_initial * 2 ** min(attempt - 1, 30))
                delay *= 0.5 + random.random() / 2
                log.warning("relay.publish_failed", name=self._name, error=repr(exc), attempt=attempt,
                            retry_in=round(delay, 3), first=batch[0].position, last=batch[-1].position)
                await self._drop_producer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return False
                continue
            if attempt:
                log.info("relay.recovered", name=self._name, attempts=attempt + 1, position=batch[-1].position)
            took = time.monotonic() - started
            self.stats.batches += 1
            self.stats.published += len(batch)
            self.stats.position = batch[-1].position
            if len(batch) >= 1000 and took > 0:
                self.stats.max_rate = max(self.stats.max_rate, len(batch) / took)
            return True

    async def _publish(self, batch: Sequence[RecordedEvent]) -> None:
        producer = await self._ensure_producer()
        prev = self._prev
        futures = []
        send = producer.send
        topic = self._topic
        for rec in batch:
            key, value, headers = encode_event(rec, prev)
            futures.append(await send(topic, value, key=key, headers=headers))
            prev = rec.position
        await asyncio.gather(*futures)
        self._prev = prev

    async def _ensure_producer(self) -> Any:
        if not self._topics_ready:
            await ensure_topics(self._settings)
            self._topics_ready = True
        if self._producer is None:
            producer = self._make_producer(self._settings)
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_client(producer)


async def run_relay(event_store_url: str, settings: KafkaSettings, stop: asyncio.Event, *,
                    store: EventStore | None = None) -> RelayStats:
    """Open the store and the checkpoint from URLs and relay until ``stop`` is set."""
    from adapters.eventstore import open_event_store
    from adapters.time import SystemClock

    own = store is None
    store = store or open_event_store(event_store_url, SystemClock())
    checkpoints = open_relay_checkpoints(settings.relay_checkpoint_url or event_store_url)
    relay = Relay(store, checkpoints, settings)
    try:
        await relay.run(stop)
    finally:
        checkpoints.close()
        if own:
            store.close()
    return relay.stats
