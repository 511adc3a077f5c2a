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
        self._lock = threading.Condition()
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: dict[str, RecordedEvent] = {}
        self._idem: dict[str, IdempotencyRecord] = {}
        self._snapshots: dict[str, Snapshot] = {}

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[RecordedEvent]:
        if len({e.event_id for e in events}) != len(events):
            raise ValueError("the same event id appears twice in one append")
        with self._lock:
            if idempotency is not None:
                stored = self._idem.get(idempotency.key)
                if stored is not None:
                    raise AlreadyHandled(stored)
            stream = self._streams.get(stream_id, [])
            known = [self._ids[e.event_id] for e in events if e.event_id in self._ids]
            if known:
                if len(known) == len(events) and all(r.stream_id == stream_id for r in known):
                    return known
                raise ConcurrencyError(stream_id, expected_version or 0, len(stream))
            if expected_version is not None and expected_version != len(stream):
                raise ConcurrencyError(stream_id, expected_version, len(stream))
            now = self._clock.now()
            out = []
            for i, ne in enumerate(events, start=1):
                rec = RecordedEvent(
                    event_id=ne.event_id,
                    stream_id=stream_id,
                    version=len(stream) + i,
                    position=len(self._log) + i,
                    type=ne.type,
                    schema_version=ne.schema_version,
                    data=ne.data(),
                    metadata=ne.metadata.to_dict(),
                    ts_recorded=now,
                    event=ne.event,
                )
                out.append(rec)
            self._log.extend(out)
            stream.extend(out)  # readers copy under the lock; extending in place keeps appends O(1)
            self._streams[stream_id] = stream
            for rec in out:
                self._ids[rec.event_id] = rec
            if idempotency is not None:
                self._idem[idempotency.key] = idempotency
            self._lock.notify_all()
            return out

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        with self._lock:
            return self._idem.get(key)

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        with self._lock:
            return list(self._streams.get(stream_id, [])[max(from_version, 1) - 1 :])

    def stream_version(self, stream_id: str) -> int:
        with self._lock:
            return len(self._streams.get(stream_id, ()))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        with self._lock:
            start = max(after_position, 0)
            return self._log[start : start + max(limit, 0)]

    def last_position(self) -> int:
        with self._lock:
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
                    self._lock.wait(poll_interval)
                chunk = self._log[pos : pos + batch]
            if chunk:
                pos = chunk[-1].position
                yield chunk

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshots[snapshot.stream_id] = snapshot

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(stream_id)

    def close(self) -> None:
        return None
