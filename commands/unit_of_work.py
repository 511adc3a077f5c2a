"""Loading aggregates (cache, snapshot + tail) and committing what one command decided."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol, TypeVar

from commands.ports import EventStore, IdempotencyRecord, Snapshot
from domain.aggregate import Aggregate
from domain.envelope import Metadata, NewEvent, RecordedEvent
from domain.errors import ConcurrencyError


class SnapshotAggregate(Protocol):
    snapshot_schema: str

    def to_snapshot(self) -> dict[str, Any]: ...


A = TypeVar("A", bound=Aggregate)


class AggregateCache:
    """Bounded LRU of aggregates at their last committed version (per process).

    An entry is only ever used by one command at a time (the bus locks the stream), is
    evicted whenever a decision fails, and a stale entry is caught by the expected-version
    check on append, so the cache can never make a decision on state that was not stored.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, Aggregate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream_id: str) -> Aggregate | None:
        with self._lock:
            agg = self._items.get(stream_id)
            if agg is not None:
                self._items.move_to_end(stream_id)
            return agg

    def put(self, agg: Aggregate) -> None:
        if self._capacity <= 0:
            return
        stream_id = agg.stream_id
        with self._lock:
            self._items[stream_id] = agg
            self._items.move_to_end(stream_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def evict(self, stream_id: str) -> None:
        with self._lock:
            self._items.pop(stream_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Repository:
    """Loads aggregates from the cache, or from the latest snapshot plus the tail of the stream."""

    def __init__(self, store: EventStore, cache: AggregateCache, snapshot_every: int = 500) -> None:
        self.store = store
        self.cache = cache
        self.snapshot_every = snapshot_every

    def load(self, cls: type[A], aggregate_id: str) -> A:
        stream_id = cls.stream_id_for(aggregate_id)
        cached = self.cache.get(stream_id)
        if cached is not None and type(cached) is cls:
            return cached
        return self.load_from_store(cls, aggregate_id)

    def load_from_store(self, cls: type[A], aggregate_id: str) -> A:
        stream_id = cls.stream_id_for(aggregate_id)
        agg: A | None = None
        snap = self.store.load_snapshot(stream_id)
        schema = getattr(cls, "snapshot_schema", None)
        if snap is not None and schema is not None and snap.schema == schema:
            agg = cls.from_snapshot(aggregate_id, snap.version, snap.state)  # type: ignore[attr-defined]
        if agg is None:
            agg = cls(aggregate_id)
        agg.replay(r.event for r in self.store.read_stream(stream_id, agg.version + 1))
        return agg

    def load_at(self, cls: type[A], aggregate_id: str, events: list[RecordedEvent]) -> A:
        """Rebuild from the given events only (audit: state as of a point in time)."""
        agg = cls(aggregate_id)
        agg.replay(r.event for r in events)
        return agg

    def save(
        self,
        agg: Aggregate,
        metadata: Metadata,
        idempotency: IdempotencyRecord | None,
    ) -> list[RecordedEvent]:
        """Append the aggregate's pending events after its loaded version; cache it on success."""
        pending = agg.take_pending()
        if not pending and idempotency is None:
            # Nothing decided: still make sure it was decided on the stored state.
            actual = self.store.stream_version(agg.stream_id)
            if actual != agg.version:
                raise ConcurrencyError(agg.stream_id, agg.version, actual)
            return []
        recorded = self.store.append(
            agg.stream_id,
            [NewEvent(event=e, metadata=metadata) for e in pending],
            agg.version,
            idempotency=idempotency,
        )
        before = agg.version
        agg.version += len(pending)
        self.cache.put(agg)
        schema = getattr(agg, "snapshot_schema", None)
        if schema and pending and agg.version // self.snapshot_every > before // self.snapshot_every:
            self.store.save_snapshot(
                Snapshot(stream_id=agg.stream_id, version=agg.version, schema=schema, state=agg.to_snapshot())  # type: ignore[attr-defined]
            )
        return recorded
