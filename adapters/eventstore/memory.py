"""In-memory event store: the reference implementation, used by tests and backtests."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from commands.ports import AlreadyHandled, IdempotencyRecord, Snapshot
from domain.clock import Clock
from domain.envelope import NewEvent, RecordedEvent
from domain.errors import ConcurrencyError


class InMemoryEventStore:
    """Keeps events as objects (no encode/decode) behind one lock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Methods take the lock itself (a C-level RLock); subscribers wait on a condition over it.
        self._mutex = threading.RLock()
        self._lock = threading.Condition(self._mutex)
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: dict[str, RecordedEvent] = {}
        self._idem: dict[str, IdempotencyRecord] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._waiting = 0  # subscribers blocked in wait(): nobody to wake in a backtest

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[RecordedEvent]:
        if len(events) > 1 and len({e.event_id for e in events}) != len(events):
            raise ValueError("the same event id appears twice in one append")
        with self._mutex:
            if idempotency is not None:
                stored = self._idem.get(idempotency.key)
                if stored is not None:
                    raise AlreadyHandled(stored)
            stream = self._streams.get(stream_id)
            if stream is None:
                stream = []
            ids = self._ids
            known = [ids[e.event_id] for e in events if e.event_id in ids]
            if known:
                if len(known) == len(events) and all(r.stream_id == stream_id for r in known):
                    return known
                raise ConcurrencyError(stream_id, expected_version or 0, len(stream))
            version = len(stream)
            if expected_version is not None and expected_version != version:
                raise ConcurrencyError(stream_id, expected_version, version)
            now = self._clock.now()
            position = len(self._log)
            out = []
            for ne in events:
                version += 1
                position += 1
                event = ne.event
                # Objects, not JSON: data and metadata are encoded only if someone reads them.
                rec = RecordedEvent(
                    event_id=ne.event_id,
                    stream_id=stream_id,
                    version=version,
                    position=position,
                    type=type(event).__name__,
                    schema_version=event.schema_version,
                    data=None,
                    metadata=ne.metadata,
                    ts_recorded=now,
                    event=event,
                )
                out.append(rec)
            for rec in out:
                ids[rec.event_id] = rec
            self._log.extend(out)
            stream.extend(out)  # readers copy under the lock; extending in place keeps appends O(1)
            self._streams[stream_id] = stream
            if idempotency is not None:
                self._idem[idempotency.key] = idempotency
            if self._waiting:
                self._lock.notify_all()
            return out

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        with self._mutex:
            return self._idem.get(key)

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        with self._mutex:
            return list(self._streams.get(stream_id, [])[max(from_version, 1) - 1 :])

    def stream_version(self, stream_id: str) -> int:
        with self._mutex:
            return len(self._streams.get(stream_id, ()))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        start = after_position if after_position > 0 else 0
        stop = start + limit if limit > 0 else start
        with self._mutex:
            return self._log[start:stop]

    def last_position(self) -> int:
        with self._mutex:
            return len(self._log)

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event | None = None,
        batch: int = 1000,
        poll_interval: float = 0.05,
    ) -> Iterator[list[RecordedEvent]]:
        pos = max(after_position, 0)
        while stop is None or not stop.is_set():
            with self._lock:
                if len(self._log) <= pos:
                    self._waiting += 1
                    try:
                        self._lock.wait(poll_interval)
                    finally:
                        self._waiting -= 1
                chunk = self._log[pos : pos + batch]
            if chunk:
                pos = chunk[-1].position
                yield chunk

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._mutex:
            self._snapshots[snapshot.stream_id] = snapshot

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._mutex:
            return self._snapshots.get(stream_id)

    def close(self) -> None:
        return None
