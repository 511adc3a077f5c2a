"""Group commit: many writer threads share one durable transaction per batch.

Callers submit an ``AppendRequest`` and block on its completion; one appender thread drains
the queue and hands every pending request (up to ``max_batch``) to the backend's
``write_batch``, which writes them all in ONE transaction. A lone writer (no other writer
in the last batches, nothing being written or queued) writes its request itself, in its
own thread: handing it over would cost two thread wake-ups, dear on a small machine. Each request is checked on its
own inside that transaction by ``plan_batch`` (versions, idempotency keys and event ids
resolved in Python against what the batch itself already wrote), so a request that
fails fails alone; only a database error fails the whole batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from adapters.eventstore.codec import EncodedEvent, dumps, encode_events, recorded
from commands.ports import AlreadyHandled, IdempotencyRecord
from domain.envelope import NewEvent, RecordedEvent
from domain.errors import ConcurrencyError

log = structlog.get_logger(__name__)

Outcome = list[RecordedEvent] | Exception
WriteBatch = Callable[[Sequence["AppendRequest"]], Sequence[Outcome]]


class Completion:
    """The outcome of one request, set once by the appender thread, awaited by its caller.

    Lighter than ``concurrent.futures.Future`` (a bare lock, no condition, no callbacks):
    the appender wakes every writer of a batch one by one, on its critical path.
    """

    __slots__ = ("_lock", "_outcome", "_failed", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._outcome: list[RecordedEvent] | BaseException | None = None
        self._failed = False
        self._set = False

    def done(self) -> bool:
        return self._set

    def set_result(self, result: list[RecordedEvent]) -> None:
        self._outcome, self._set = result, True
        self._lock.release()

    def set_exception(self, exc: BaseException) -> None:
        self._outcome, self._failed, self._set = exc, True, True
        self._lock.release()

    def result(self) -> list[RecordedEvent]:
        """Block until the outcome is set; return it, or raise it."""
        self._lock.acquire()
        self._lock.release()  # leave it released: ``done`` stays true, a second wait returns
        outcome = self._outcome
        if self._failed:
            assert isinstance(outcome, BaseException)
            raise outcome
        assert isinstance(outcome, list)
        return outcome


@dataclass(slots=True, eq=False)
class AppendRequest:
    """One ``append`` call, encoded in the caller's thread, waiting for its batch."""

    stream_id: str
    events: list[EncodedEvent]
    expected_version: int | None
    idempotency: IdempotencyRecord | None
    idempotency_result_json: str | None
    future: Completion = field(default_factory=Completion)
    writer: int = 0
    """Thread id of the submitter (to tell how many writers are active)."""

    @classmethod
    def build(
        cls,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        idempotency: IdempotencyRecord | None,
    ) -> AppendRequest:
        """Encode ``events`` (raising here, in the caller, for anything unstorable)."""
        return cls(
            stream_id=stream_id,
            events=encode_events(events),
            expected_version=expected_version,
            idempotency=idempotency,
            idempotency_result_json=dumps(idempotency.result) if idempotency else None,
        )


class AppenderClosed(RuntimeError):
    """The event store was closed; nothing more can be appended."""


class AppenderCrashed(RuntimeError):
    """The appender thread died; the cause is chained."""


class GroupCommitAppender:
    """One thread that writes queued append requests in batches, one transaction each."""

    def __init__(
        self,
        write_batch: WriteBatch,
        *,
        name: str = "eventstore-appender",
        max_batch: int = 512,
        linger: float = 0.002,
    ) -> None:
        """Start the appender thread.

        ``linger``: how long a batch may wait for writers that were active in the last two
        batches but have not resubmitted yet (0 disables). A lone writer never waits.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._linger = linger
        self._active: set[int] = set()
        self._previous: set[int] = set()
        self._cond = threading.Condition()
        self._queue: deque[AppendRequest] = deque()
        self._wake_at = 1
        """Queue length at which a submit wakes the appender (more while it lingers)."""
        self._busy = False
        """A batch is being written (by the appender thread or by a lone writer)."""
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def failure(self) -> BaseException | None:
        """The exception that killed the appender thread, if it died."""
        return self._failure

    def submit(self, request: AppendRequest) -> list[RecordedEvent]:
        """Queue ``request`` and block until its batch committed (or failed)."""
        with self._cond:
            if self._failure is not None:
                raise AppenderCrashed("event store appender thread died") from self._failure
            if self._closing:
                raise AppenderClosed("event store is closed")
            me = request.writer = threading.get_ident()
            alone = not self._busy and not self._queue and self._active <= {me}
            if alone:
                self._busy = True
                self._note_batch({me})
            else:
                self._queue.append(request)
                # Wake the appender only when it wants to look: a lingering appender would
                # otherwise be woken (a system call, and a thread switch) by every writer.
                if len(self._queue) >= self._wake_at:
                    self._cond.notify()
        if alone:
            self._write_here(request)
        return request.future.result()

    def _write_here(self, request: AppendRequest) -> None:
        """Write a lone writer's request in its own thread (``_busy`` is set for it)."""
        try:
            self._write([request])
        except BaseException as exc:
            self._crash(exc, [request])
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # the appender: requests queued meanwhile, or closing

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the appender thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("event store appender did not stop", timeout=timeout)

    def _run(self) -> None:
        batch: list[AppendRequest] = []
        try:
            while True:
                with self._cond:
                    while (self._busy or not self._queue) and not self._closing:
                        if self._failure is not None:
                            return  # a lone writer's batch crashed
                        self._cond.wait()
                    while self._busy:  # closing: a lone writer's batch is still being written
                        self._cond.wait()
                    if not self._queue or self._failure is not None:
                        return
                    self._linger_for_writers()
                    take = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(take)]
                    self._note_batch({r.writer for r in batch})
                    self._busy = True
                try:
                    self._write(batch)
                finally:
                    with self._cond:
                        self._busy = False
                batch = []
        except BaseException as exc:
            self._crash(exc, batch)

    def _note_batch(self, writers: set[int]) -> None:
        # Called with self._cond held.
        self._active = self._previous | writers
        self._previous = writers

    def _linger_for_writers(self) -> None:
        # Like PostgreSQL's commit_delay: writers whose last append just committed are
        # usually about to append again; one batch for all of them halves the commits.
        # Called with self._cond held.
        want = min(len(self._active), self._max_batch)
        if self._linger <= 0 or len(self._queue) >= want:
            return
        deadline = time.monotonic() + self._linger
        self._wake_at = want
        try:
            while len(self._queue) < want and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
        finally:
            self._wake_at = 1

    def _write(self, batch: list[AppendRequest]) -> None:
        try:
            outcomes = self._write_batch(batch)
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"write_batch returned {len(outcomes)} outcomes for {len(batch)} requests"
                )
        except Exception as exc:
            log.warning("event store batch failed", requests=len(batch), error=repr(exc))
            for req in batch:
                req.future.set_exception(exc)
            return
        for req, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                req.future.set_exception(outcome)
            else:
                req.future.set_result(outcome)

    def _crash(self, exc: BaseException, in_flight: list[AppendRequest]) -> None:
        with self._cond:
            self._failure = exc
            pending = [*in_flight, *self._queue]
            self._queue.clear()
            self._cond.notify_all()  # the appender thread stops too
        log.critical(
            "event store appender thread crashed", pending=len(pending), exc_info=exc
        )
        error = AppenderCrashed("event store appender thread died")
        error.__cause__ = exc
        for req in pending:
            if not req.future.done():
                req.future.set_exception(error)


# --- resolving one batch -----------------------------------------------------------


@dataclass(slots=True)
class BatchPlan:
    """What one transaction must insert, and what each request gets back."""

    outcomes: list[Outcome]
    event_rows: list[tuple[int, str, str, int, str, int, str, str]]
    """(position, event_id, stream_id, version, type, schema_version, data, metadata)."""
    idempotency_rows: list[tuple[str, str, str, str, int | None]]
    """(key, command_type, fingerprint, result, position of the request's last event)."""
    recorded: list[RecordedEvent]
    last_position: int


def batch_keys(requests: Iterable[AppendRequest]) -> tuple[list[str], list[str], list[str]]:
    """Return the distinct stream ids, idempotency keys and event ids a batch touches."""
    streams: dict[str, None] = {}
    keys: dict[str, None] = {}
    ids: list[str] = []
    for req in requests:
        streams[req.stream_id] = None
        if req.idempotency is not None:
            keys[req.idempotency.key] = None
        ids.extend(e.event_id for e in req.events)
    return list(streams), list(keys), list(dict.fromkeys(ids))


def plan_batch(
    requests: Sequence[AppendRequest],
    *,
    last_position: int,
    versions: Mapping[str, int],
    idempotency: Mapping[str, IdempotencyRecord],
    stored_events: Mapping[str, RecordedEvent],
    ts_recorded: datetime,
) -> BatchPlan:
    """Apply ``requests`` in order against the stored state read under the write lock.

    ``versions`` holds the current version of the batch's streams (missing: 0),
    ``idempotency`` the stored records of its keys, ``stored_events`` the stored events
    with its event ids. The rules are exactly those of ``InMemoryEventStore.append``.
    """
    versions = dict(versions)
    keys = dict(idempotency)
    known = dict(stored_events)
    plan = BatchPlan([], [], [], [], last_position)
    position = last_position
    for req in requests:
        stream_id = req.stream_id
        if req.idempotency is not None:
            stored = keys.get(req.idempotency.key)
            if stored is not None:
                plan.outcomes.append(AlreadyHandled(stored))
                continue
        current = versions.get(stream_id, 0)
        seen = [known[e.event_id] for e in req.events if e.event_id in known]
        if seen:
            if len(seen) == len(req.events) and all(r.stream_id == stream_id for r in seen):
                plan.outcomes.append(seen)
            else:
                plan.outcomes.append(
                    ConcurrencyError(stream_id, req.expected_version or 0, current)
                )
            continue
        if req.expected_version is not None and req.expected_version != current:
            plan.outcomes.append(ConcurrencyError(stream_id, req.expected_version, current))
            continue
        out: list[RecordedEvent] = []
        for enc in req.events:
            position += 1
            current += 1
            rec = recorded(
                enc, stream_id=stream_id, version=current, position=position,
                ts_recorded=ts_recorded,
            )
            out.append(rec)
            known[enc.event_id] = rec
            plan.event_rows.append(
                (position, enc.event_id, stream_id, current, enc.type, enc.schema_version,
                 enc.data_json, enc.metadata_json)
            )
        versions[stream_id] = current
        if req.idempotency is not None:
            idem = req.idempotency
            keys[idem.key] = idem
            plan.idempotency_rows.append(
                (idem.key, idem.command_type, idem.fingerprint,
                 req.idempotency_result_json or dumps(idem.result), position if out else None)
            )
        plan.recorded.extend(out)
        plan.outcomes.append(out)
    plan.last_position = position
    return plan
