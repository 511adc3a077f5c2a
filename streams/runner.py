"""The in-process projection runner (embedded mode): event log -> projections -> read store.

Crash-only: ``start`` reads each projection's active copy and checkpoint, and that is
also how it recovers. Events are fed in global order in batches; each projection skips
events at or below its checkpoint and events whose type it does not handle, applies the
rest to a write-back cache over its copy, and commits the changed rows with the new
checkpoint (the batch's last position) in ONE transaction, guarded by the checkpoint it
started from. A re-delivered batch therefore changes nothing, and a runner killed at any
point resumes from the last commit.

A projection that raises is stopped (logged with structlog, its error stored with its
checkpoint so ``tradecore projections status`` shows it) while the others continue; its
last committed state stays as it was. Read-store errors are not the projection's fault:
``StaleCopy`` (a rebuild swapped in a new copy, or another runner advanced the
checkpoint) reloads the projection from its active copy, anything else propagates
(crash-only: the caller restarts the runner).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

import domain.account_events
import domain.bot  # noqa: F401  (registers the bot events: a log is decoded by type name)
from commands.ports import EventStore
from domain.envelope import RecordedEvent
from projections.base import Projection, ReadModel
from projections.store import (
    CopyInfo,
    ReadStore,
    RebuildInProgress,
    StaleCopy,
    WriteBackModel,
    projection_instance,
)

if TYPE_CHECKING:
    from streams.rebuild import RebuildResult

log = structlog.get_logger(__name__)

ChangeListener = Callable[[str, dict[str, set[str]]], None]
"""Called after each commit with (projection name, changed keys per table)."""


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    copy: int
    position: int
    state: str
    """``ok``, or ``failed`` (``error`` says why)."""
    error: str | None


@dataclass(slots=True, eq=False)
class _Slot:
    projection: Projection
    copy: int
    position: int
    model: WriteBackModel | None
    error: str | None = None
    last_event_ts: datetime | None = None

    @property
    def name(self) -> str:
        return self.projection.name


class ProjectionRunner:
    """Feeds the event log to projections and commits rows + checkpoint per batch."""

    def __init__(
        self,
        store: EventStore,
        read_store: ReadStore,
        projections: Iterable[Projection | type[Projection]],
        *,
        batch_size: int = 1000,
        max_cached_rows: int = 100_000,
        rebuild_stale: bool = True,
        rebuild_empty_from: int | None = 100_000,
    ) -> None:
        """``rebuild_stale``: rebuild copies built by another projection version at start.
        ``rebuild_empty_from``: a projection at checkpoint 0 facing at least this many
        events is rebuilt (one pass in memory, one big write) instead of caught up batch by
        batch; None disables it."""
        self._store = store
        self._read_store = read_store
        self._projections = [projection_instance(p) for p in projections]
        names = [p.name for p in self._projections]
        if len(set(names)) != len(names):
            raise ValueError(f"projection names repeat: {names}")
        self._batch_size = batch_size
        self._max_rows = max_cached_rows
        self._rebuild_stale = rebuild_stale
        self._rebuild_empty_from = rebuild_empty_from
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[ChangeListener] = []
        self._started = False
        self._fed = 0
        self._rewind = False
        self._lock = threading.RLock()

    # --- lifecycle --------------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(projection, {table: changed keys})`` after every commit."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Register the projections, rebuild stale copies if asked, load every checkpoint."""
        with self._lock:
            if self._started:
                return
            rs = self._read_store
            rs.register(self._projections)
            infos = {p.name: self._active_info(p) for p in self._projections}
            stale = [p for p in self._projections if self._rebuild_stale and infos[p.name].is_stale(p)]
            if self._rebuild_empty_from is not None and self._store.last_position() >= self._rebuild_empty_from:
                stale += [p for p in self._projections if infos[p.name].position == 0 and p not in stale]
            results: list[RebuildResult] = []
            if stale:
                from streams.rebuild import rebuild

                log.warning("projection.start_rebuild", projections=[p.name for p in stale])
                try:
                    results = rebuild(self._store, rs, stale)
                except RebuildInProgress as exc:
                    # Someone else is rebuilding: follow the live copies until their swap.
                    log.warning("projection.start_rebuild_skipped", reason=str(exc))
                    results = []
                for result in results:
                    if not result.ok:
                        log.error("projection.start_rebuild_failed", projection=result.name, error=result.error)
            failed = {r.name: f"rebuild failed: {r.error}" for r in results if not r.ok}
            for p in self._projections:
                slot = self._slots[p.name] = self._load(p, failed.get(p.name))
                if slot.error is not None:
                    rs.set_error(p.name, slot.error, copy=slot.copy)
            self._started = True

    def _active_info(self, p: Projection) -> CopyInfo:
        for info in self._read_store.copies(p.name):
            if info.active:
                return info
        raise LookupError(f"projection {p.name} has no active copy")

    def _load(self, p: Projection, error: str | None = None) -> _Slot:
        rs = self._read_store
        for _ in range(5):
            copy = rs.active_copy(p.name)
            try:
                position = rs.checkpoint(p.name, copy)
                base = rs.load_model(p.name, copy)
            except StaleCopy:
                continue  # swapped between the two reads
            model = WriteBackModel(p.tables, base, complete=position == 0, max_rows=self._max_rows)
            last_ts = next((c.last_event_ts for c in rs.copies(p.name) if c.copy == copy), None)
            return _Slot(projection=p, copy=copy, position=position, model=model, error=error,
                         last_event_ts=last_ts)
        raise RuntimeError(f"projection {p.name}: active copy keeps changing")

    def _reload(self, slot: _Slot, reason: str) -> None:
        fresh = self._load(slot.projection)
        log.info("projection.reload", projection=slot.name, reason=reason, copy=fresh.copy,
                 position=fresh.position, was_copy=slot.copy, was_position=slot.position)
        self._slots[slot.name] = fresh
        if fresh.position < self._fed:
            self._rewind = True

    # --- feeding ----------------------------------------------------------------------

    def _healthy(self) -> list[_Slot]:
        return [s for s in self._slots.values() if s.error is None]

    def catch_up(self) -> int:
        """Process every event stored now; returns how many events were read."""
        self.start()
        n = 0
        while True:
            with self._lock:
                healthy = self._healthy()
                if not healthy:
                    return n
                after = min(s.position for s in healthy)
                batch = self._store.read_all(after, self._batch_size)
                if not batch:
                    return n
                self._fed = after
                self.process(batch)
                n += len(batch)

    def run(self, stop: threading.Event) -> None:
        """Tail the log until ``stop`` is set (returns early if every projection failed)."""
        self.start()
        while not stop.is_set():
            with self._lock:
                healthy = self._healthy()
                if not healthy:
                    log.error("projection.runner_idle", reason="every projection failed")
                    return
                after = min(s.position for s in healthy)
                self._fed = after
                self._rewind = False
            batches = self._store.subscribe(after, stop=stop, batch=self._batch_size)
            try:
                for batch in batches:
                    with self._lock:
                        self.process(batch)
                        self._fed = batch[-1].position
                        if self._rewind or not self._healthy():
                            break
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

    def process(self, batch: Sequence[RecordedEvent]) -> None:
        """Apply one batch (global order, following position ``self._fed``) and commit it."""
        if not batch:
            return
        last = batch[-1]
        for slot in list(self._slots.values()):
            if slot.error is not None or last.position <= slot.position:
                continue
            if slot.position < self._fed:
                self._rewind = True  # it needs events before this batch: re-feed from it
                continue
            self._apply(slot, batch, last)

    def _apply(self, slot: _Slot, batch: Sequence[RecordedEvent], last: RecordedEvent) -> None:
        p = slot.projection
        model = slot.model
        assert model is not None
        handles = p.handles
        apply = p.apply
        pos = slot.position
        rec = last
        try:
            for rec in batch:
                if rec.position > pos and rec.type in handles:
                    apply(model, rec)
        except StaleCopy as exc:
            self._reload(slot, str(exc))
            return
        except Exception as exc:
            self._fail(slot, exc, rec)
            return
        changes = model.take_changes()
        try:
            self._read_store.commit(
                p.name, changes, last.position, copy=slot.copy, expected=pos, last_event_ts=last.ts_recorded
            )
        except StaleCopy as exc:
            self._reload(slot, str(exc))
            return
        slot.position = last.position
        slot.last_event_ts = last.ts_recorded
        model.trim()
        self._notify(p.name, changes)

    def _notify(self, name: str, changes: dict[str, dict[str, Any]]) -> None:
        if changes and self._listeners:
            keys = {t: set(rows) for t, rows in changes.items()}
            for listener in self._listeners:
                try:
                    listener(name, keys)
                except Exception:
                    log.exception("projection.listener_failed", projection=name)

    def update(self, name: str, change: Callable[[ReadModel], None]) -> None:
        """Change a projection's rows outside the log (e.g. price marks), between batches.

        ``change`` gets the projection's model; what it puts is committed at the current
        checkpoint (the events applied are the same), listeners are told. A rebuild
        forgets such changes. If ``change`` raises, nothing is committed and the
        projection reloads its rows from the store.
        """
        self.start()
        for _ in range(3):
            with self._lock:
                slot = self._slots[name]
                if slot.error is not None or slot.model is None:
                    raise RuntimeError(f"projection {name} is stopped: {slot.error}")
                try:
                    change(slot.model)
                    changes = slot.model.take_changes()
                    self._read_store.commit(name, changes, slot.position, copy=slot.copy,
                                            expected=slot.position, last_event_ts=slot.last_event_ts)
                except StaleCopy as exc:
                    self._reload(slot, str(exc))
                    continue
                except BaseException:
                    self._reload(slot, "update failed")
                    raise
                slot.model.trim()
                self._notify(name, changes)
                return
        raise RuntimeError(f"projection {name}: could not update (its copy keeps changing)")

    def _fail(self, slot: _Slot, exc: Exception, rec: RecordedEvent) -> None:
        error = f"{type(exc).__name__}: {exc} (event {rec.position} {rec.type} of {rec.stream_id})"
        log.error("projection.failed", projection=slot.name, position=rec.position, event_type=rec.type,
                  stream_id=rec.stream_id, checkpoint=slot.position, error=error, exc_info=exc)
        slot.error = error
        slot.model = None
        try:
            self._read_store.set_error(slot.name, error, copy=slot.copy)
        except Exception:
            log.exception("projection.error_not_stored", projection=slot.name)

    # --- inspection -------------------------------------------------------------------

    def status(self) -> list[ProjectionStatus]:
        """Where each projection stands in this process."""
        return [
            ProjectionStatus(
                name=s.name, copy=s.copy, position=s.position,
                state="failed" if s.error else "ok", error=s.error,
            )
            for s in list(self._slots.values())
        ]

    def wait_until(self, position: int, timeout: float = 10.0) -> bool:
        """Block until every healthy projection reached ``position`` (tests, CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.position >= position for s in self._healthy()):
                return True
            time.sleep(0.01)
        return False
