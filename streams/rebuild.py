"""Rebuild projections: replay the log from position 0 into fresh copies, then swap them in.

One pass over the log feeds every projection being rebuilt (each event is read and
decoded once). Rows stay in memory (a ``WriteBackModel`` over the empty new copy); when
the replay reaches the head of the log (or ``to_position``), ``swap`` writes them in one
big batch (COPY / executemany, in key order) with the checkpoint in ONE transaction,
builds the copy's secondary indexes, makes it active and drops the old copy; a few
projections swap at once, so the database loads one while Python encodes another. With
``max_rows`` (bounded memory) rows are also flushed every ``flush_every`` events.

Writers go on appending meanwhile: the replay runs to the head seen at its start, then
catches up a few rounds (it does not chase writers that are faster than a replay). A live
runner keeps updating the old copy until the swap, then gets ``StaleCopy`` on its next
commit and continues from the new copy's checkpoint, so no event is lost or applied twice
around the swap. With ``to_position`` the copy is swapped in at
that position and the runner (if any) catches it up.

Interrupting a rebuild (exception, Ctrl-C) abandons its copies; a killed one leaves a
partial copy that the next ``begin_rebuild`` drops. The live copy is never touched.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

import structlog

import domain.account_events
import domain.bot  # noqa: F401  (registers the bot events: a log is decoded by type name)
from commands.ports import EventStore
from domain.envelope import RecordedEvent
from projections.base import Projection, ReadModel
from projections.store import Changes, ReadStore, ReplayModel, WriteBackModel, projection_instance

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    position: int
    head: int
    """Last position when the rebuild started (the log may have grown since)."""
    events: int
    phase: str
    """``replay``, ``flush``, ``swap`` or ``done``."""


@dataclass(slots=True)
class RebuildResult:
    name: str
    copy: int
    position: int = 0
    events: int = 0
    """Events read from the log (shared by all projections rebuilt in the same pass)."""
    applied: int = 0
    """Events this projection handled."""
    rows: int = 0
    """Rows in the new copy (rows written, when memory was bounded by ``max_rows``)."""
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True, eq=False)
class _Slot:
    projection: Projection
    copy: int
    model: WriteBackModel | ReplayModel
    result: RebuildResult
    flushed: int = 0
    swapped: bool = False
    failed: bool = False
    apply: Callable[[ReadModel, RecordedEvent], None] = field(init=False)

    def __post_init__(self) -> None:
        self.apply = self.projection.apply


_type_of = attrgetter("type")
_SWAP_WORKERS = 3
"""Swaps running at once (each on its own read-store connection)."""
_CATCH_UP_ROUNDS = 3
"""Rounds of catching up with writers after the replay reached the head seen at its start."""


def _read_ahead(store: EventStore, after: int, to_position: int | None, batch_size: int,
                stop: threading.Event | None) -> Iterator[list[RecordedEvent]]:
    """Read batches in a background thread (I/O and decoding overlap with applying)."""
    q: queue.Queue[list[RecordedEvent] | BaseException | None] = queue.Queue(maxsize=4)
    done = threading.Event()

    def offer(item: list[RecordedEvent] | BaseException | None) -> None:
        while not done.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def reader() -> None:
        pos = after
        try:
            while not done.is_set() and (stop is None or not stop.is_set()):
                limit = batch_size if to_position is None else min(batch_size, to_position - pos)
                if limit <= 0:
                    break
                batch = store.read_all(pos, limit)
                if not batch:
                    break
                pos = batch[-1].position
                offer(batch)
            offer(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)

    thread = threading.Thread(target=reader, name="rebuild-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()
        thread.join(timeout=5)


def rebuild(
    store: EventStore,
    read_store: ReadStore,
    projections: Iterable[Projection | type[Projection]],
    *,
    to_position: int | None = None,
    batch_size: int = 5000,
    flush_every: int | None = None,
    max_rows: int | None = None,
    progress: Callable[[RebuildProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> list[RebuildResult]:
    """Rebuild ``projections`` into fresh copies and swap each in; one result per projection.

    A projection whose ``apply`` raises is abandoned (its result carries the error) while
    the others go on. ``stop`` interrupts the rebuild (copies abandoned, nothing swapped).

    Rows stay in memory and are written once, by the swap, unless ``max_rows`` bounds the
    rows kept per projection (then changed rows are flushed to the copy every
    ``flush_every`` events, default 100,000, and clean ones forgotten). An explicit
    ``flush_every`` also flushes without bounding memory.
    """
    if flush_every is None and max_rows is not None:
        flush_every = 100_000
    instances = [projection_instance(p) for p in projections]
    read_store.register(instances)
    slots: list[_Slot] = []
    started = time.perf_counter()
    # Rows are acyclic dicts: the cyclic collector only slows a rebuild that allocates
    # millions of them (each full collection walks the whole, growing heap again).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for p in instances:
            copy = read_store.begin_rebuild(p)
            base = read_store.load_model(p.name, copy)
            # Without flushes every row is written once, by the swap: nothing to track.
            model: WriteBackModel | ReplayModel = (
                ReplayModel(p.tables) if flush_every is None
                else WriteBackModel(p.tables, base, complete=True, max_rows=max_rows)
            )
            slots.append(_Slot(
                projection=p, copy=copy, result=RebuildResult(name=p.name, copy=copy), model=model,
            ))
        head = store.last_position()
        if to_position is not None:
            head = min(head, to_position)
        log.info("rebuild.start", projections=[s.projection.name for s in slots], head=head)
        position, last_ts, types = _replay(
            store, read_store, slots, to_position, batch_size, flush_every, head, progress, stop
        )
        events = sum(types.values())
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt("rebuild stopped")
        if progress is not None:
            progress(RebuildProgress(position, max(head, position), events, "swap"))
        _swap_all(read_store, [s for s in slots if not s.failed], position, last_ts)
        elapsed = time.perf_counter() - started
        for slot in slots:
            slot.result.events = events
            slot.result.applied = sum(n for t, n in types.items() if t in slot.projection.handles)
            slot.result.seconds = elapsed
        log.info("rebuild.done", projections=[s.projection.name for s in slots], position=position,
                 events=events, seconds=round(elapsed, 3),
                 failed=[s.projection.name for s in slots if s.failed])
        if progress is not None:
            progress(RebuildProgress(position, max(head, position), events, "done"))
        return [s.result for s in slots]
    except BaseException:
        for slot in slots:
            if not slot.swapped and not slot.failed:
                try:
                    read_store.abandon(slot.projection.name, slot.copy)
                except Exception:
                    log.exception("rebuild.abandon_failed", projection=slot.projection.name, copy=slot.copy)
        raise
    finally:
        if gc_was_enabled:
            gc.enable()


def _replay(
    store: EventStore,
    read_store: ReadStore,
    slots: list[_Slot],
    to_position: int | None,
    batch_size: int,
    flush_every: int | None,
    head: int,
    progress: Callable[[RebuildProgress], None] | None,
    stop: threading.Event | None,
) -> tuple[int, datetime | None, Counter[str]]:
    """Feed the log to every slot, flushing every ``flush_every`` events.

    Returns (last position, its ``ts_recorded``, events read per type).
    """
    routes: dict[str, list[tuple[Callable[[ReadModel, RecordedEvent], None], ReadModel, _Slot]]] = {}
    types: Counter[str] = Counter()
    position = 0
    last_ts: datetime | None = None
    events = since_flush = 0
    # Replay to the head seen at the start, then catch up a few rounds: writers may
    # append faster than a replay runs, and the copy is consistent at any checkpoint
    # (the live runner continues from it), so the rebuild need not chase them forever.
    target = head
    for _ in range(1 + (0 if to_position is not None else _CATCH_UP_ROUNDS)):
        round_start = position
        for batch in _read_ahead(store, position, target, batch_size, stop):
            for rec in batch:
                targets = routes.get(rec.type)
                if targets is None:
                    targets = routes[rec.type] = [
                        (s.apply, s.model, s) for s in slots if not s.failed and rec.type in s.projection.handles
                    ]
                for apply, model, slot in targets:
                    try:
                        apply(model, rec)
                    except Exception as exc:
                        _fail(slot, exc, rec, read_store)
                        routes.clear()
            types.update(map(_type_of, batch))
            position = batch[-1].position
            last_ts = batch[-1].ts_recorded
            events += len(batch)
            since_flush += len(batch)
            if flush_every is not None and since_flush >= flush_every:
                since_flush = 0
                if progress is not None:
                    progress(RebuildProgress(position, target, events, "flush"))
                for slot in slots:
                    if not slot.failed:
                        _flush(read_store, slot, position, last_ts)
            if progress is not None:
                progress(RebuildProgress(position, max(target, position), events, "replay"))
        if stop is not None and stop.is_set():
            break
        target = store.last_position()
        # Another round only while it converges (the backlog is well under the last round).
        if target <= position or target - position > (position - round_start) // 2:
            break
    return position, last_ts, types


def _swap_all(read_store: ReadStore, slots: list[_Slot], position: int, last_ts: datetime | None) -> None:
    """Swap every slot in; a few at a time, so one's rows are encoded while the database
    writes and indexes another's. Raises the first failure once all have finished."""

    def swap(slot: _Slot) -> None:
        changes = slot.model.take_changes()
        if not slot.model.complete:
            _count_rows(slot, changes)
        read_store.swap(
            slot.projection.name, slot.copy, changes, position if position > slot.flushed else None,
            last_event_ts=last_ts,
        )
        slot.swapped = True
        slot.result.position = max(position, slot.flushed)
        if slot.model.complete:
            slot.result.rows = len(slot.model)

    if len(slots) <= 1:
        for slot in slots:
            swap(slot)
        return
    # Largest first: the long swaps start at once and the small ones fill in around them.
    ordered = sorted(slots, key=lambda s: len(s.model), reverse=True)
    with ThreadPoolExecutor(max_workers=min(_SWAP_WORKERS, len(ordered)), thread_name_prefix="swap") as pool:
        futures = [pool.submit(swap, slot) for slot in ordered]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def _count_rows(slot: _Slot, changes: Changes) -> None:
    slot.result.rows += sum(sum(1 for r in rows.values() if r is not None) for rows in changes.values())


def _flush(read_store: ReadStore, slot: _Slot, position: int, last_ts: datetime | None) -> None:
    if position <= slot.flushed:
        return
    changes = slot.model.take_changes()
    _count_rows(slot, changes)
    read_store.commit(slot.projection.name, changes, position, copy=slot.copy, expected=slot.flushed,
                      last_event_ts=last_ts)
    slot.flushed = position
    slot.model.trim()


def _fail(slot: _Slot, exc: Exception, rec: RecordedEvent, read_store: ReadStore) -> None:
    error = f"{type(exc).__name__}: {exc} (event {rec.position} {rec.type} of {rec.stream_id})"
    log.error("rebuild.projection_failed", projection=slot.projection.name, position=rec.position,
              event_type=rec.type, error=error, exc_info=exc)
    slot.failed = True
    slot.result.error = error
    try:
        read_store.abandon(slot.projection.name, slot.copy)
    except Exception:
        log.exception("rebuild.abandon_failed", projection=slot.projection.name, copy=slot.copy)
