"""The command bus: idempotency, per-stream serialisation, optimistic retry, commit."""

from __future__ import annotations

import inspect
import threading
import zlib
from collections.abc import Callable
from typing import Any

import structlog

from commands.handlers import HANDLERS, Result, UnitOfWork
from commands.messages import Command
from commands.ports import AlreadyHandled, EventStore, IdempotencyRecord, Markets, PriceSource
from commands.unit_of_work import AggregateCache, Repository
from domain.aggregate import Aggregate
from domain.clock import Clock
from domain.envelope import Metadata, RecordedEvent
from domain.errors import ConcurrencyError, IdempotencyConflict

log = structlog.get_logger(__name__)

_STRIPES = 1024


class CommandBus:
    """Runs commands through their handlers and appends the decided events.

    - The same idempotency key returns the first result and appends nothing.
    - Commands on one stream are serialised inside the process (no self-inflicted
      conflicts); across processes the expected-version check catches races, and the
      command is re-decided on fresh state.
    """

    def __init__(
        self,
        store: EventStore,
        clock: Clock,
        prices: PriceSource,
        markets: Markets,
        *,
        cache_capacity: int = 10_000,
        snapshot_every: int = 500,
        max_attempts: int = 50,
        handlers: dict[type[Command], Callable[..., Result]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.repo = Repository(store, AggregateCache(cache_capacity), snapshot_every)
        self.max_attempts = max_attempts
        self._handlers = dict(handlers or HANDLERS)
        self._deps: dict[str, Any] = {"clock": clock, "prices": prices, "markets": markets}
        self._params = {cls: list(inspect.signature(fn).parameters)[1:] for cls, fn in self._handlers.items()}
        # Each handler's dependencies other than ``uow``, resolved once.
        self._kwargs = {
            cls: {name: self._deps[name] for name in params if name != "uow"}
            for cls, params in self._params.items()
        }
        self._takes_uow = {cls: "uow" in params for cls, params in self._params.items()}
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self.on_committed: list[Callable[[list[RecordedEvent]], None]] = []

    def handle(self, cmd: Command) -> Result:
        """Run ``cmd`` and return its result (the first result, for a repeated idempotency key)."""
        handler = self._handlers.get(type(cmd))
        if handler is None:
            raise TypeError(f"no handler for {type(cmd).__name__}")
        key = cmd.idempotency_key
        # A repeated key is the exception: it is not looked up first (a read per command),
        # the append refuses it atomically (``AlreadyHandled``), and a decision that fails
        # looks it up then (a retried request may fail on the state its first run made).
        stream_id = cmd.stream_id
        lock = self._locks[zlib.crc32(stream_id.encode()) % _STRIPES]
        with lock:
            for attempt in range(1, self.max_attempts + 1):
                uow = UnitOfWork(self._load)
                try:
                    kwargs = self._kwargs[type(cmd)]
                    result = handler(cmd, uow=uow, **kwargs) if self._takes_uow[type(cmd)] else handler(cmd, **kwargs)
                    agg = uow.aggregate
                    if agg is None:
                        raise RuntimeError(f"{handler.__name__} loaded no aggregate")
                    # The fingerprint is computed when first read (storing it, or a repeated key).
                    idem = IdempotencyRecord(key, type(cmd).__name__, cmd.fingerprint, result) if key else None
                    recorded = self.repo.save(agg, self._metadata(cmd), idem)
                except ConcurrencyError as exc:
                    self.repo.cache.evict(stream_id)
                    log.info(
                        "command.retry", command=type(cmd).__name__, stream=stream_id, attempt=attempt, error=str(exc)
                    )
                    continue
                except AlreadyHandled as exc:
                    self.repo.cache.evict(stream_id)
                    return self._replay_result(cmd, exc.record)
                except Exception:
                    self.repo.cache.evict(stream_id)
                    stored = self.store.lookup_idempotency(key) if key else None
                    if stored is not None:
                        return self._replay_result(cmd, stored)
                    raise
                except BaseException:
                    self.repo.cache.evict(stream_id)
                    raise
                for callback in self.on_committed:
                    callback(recorded)
                return result
        raise ConcurrencyError(stream_id, -1, -1)

    def _load(self, cls: type[Aggregate], aggregate_id: str) -> Aggregate:
        return self.repo.load(cls, aggregate_id)

    def _metadata(self, cmd: Command) -> Metadata:
        ts_event = cmd.__dict__.get("ts_event")  # only some commands carry it; skips pydantic's __getattr__
        return Metadata(
            correlation_id=cmd.correlation_id or cmd.command_id,
            causation_id=cmd.command_id,
            user_id=cmd.user_id,
            idempotency_key=cmd.idempotency_key,
            ts_event=ts_event or self.clock.now(),
        )

    @staticmethod
    def _replay_result(cmd: Command, stored: IdempotencyRecord) -> Result:
        if stored.command_type != type(cmd).__name__ or stored.fingerprint != cmd.fingerprint():
            raise IdempotencyConflict(
                f"idempotency key {cmd.idempotency_key!r} was used for a different request",
                details={"first_command": stored.command_type},
            )
        return stored.result
