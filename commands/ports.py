"""Ports the command side needs: the event store, market prices, the symbol list."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from domain.envelope import NewEvent, RecordedEvent
from domain.values import Symbol

NO_STREAM = 0
"""Expected version of a stream that has no events yet (versions start at 1)."""


class IdempotencyRecord:
    """The first result of a command, stored atomically with its events.

    ``fingerprint`` may be given as a function that computes it: it is then computed on
    first read (a database store reads it to write it; the in-memory store only when the
    key comes back), so a command's fingerprint costs nothing until someone needs it.
    """

    __slots__ = ("key", "command_type", "_fingerprint", "result")

    def __init__(
        self, key: str, command_type: str, fingerprint: str | Callable[[], str], result: dict[str, Any]
    ) -> None:
        self.key = key
        self.command_type = command_type
        self._fingerprint = fingerprint
        self.result = result

    @property
    def fingerprint(self) -> str:
        fp = self._fingerprint
        if not isinstance(fp, str):
            fp = self._fingerprint = fp()
        return fp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdempotencyRecord):
            return NotImplemented
        return (self.key, self.command_type, self.fingerprint, self.result) == (
            other.key,
            other.command_type,
            other.fingerprint,
            other.result,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"IdempotencyRecord(key={self.key!r}, command_type={self.command_type!r},"
            f" fingerprint={self.fingerprint!r}, result={self.result!r})"
        )


class AlreadyHandled(Exception):
    """The idempotency key of an append is already stored; ``record`` is the first result."""

    def __init__(self, record: IdempotencyRecord):
        super().__init__(f"idempotency key {record.key!r} already handled")
        self.record = record


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream_id: str
    version: int
    schema: str
    state: dict[str, Any]
    """JSON-safe (as produced by the aggregate's ``to_snapshot``)."""


class EventStore(Protocol):
    """Append-only event log with per-stream optimistic concurrency and a global order.

    Positions grow in commit order (a reader never sees a position before a smaller one);
    stream versions start at 1. Memory, SQLite and PostgreSQL number positions 1, 2, 3...;
    KurrentDB uses its commit positions, which are sparse: compare positions, never
    subtract them to count events.
    """

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[RecordedEvent]:
        """Append atomically after ``expected_version`` (None: no check).

        Raises ``ConcurrencyError`` when the stream is at another version and
        ``AlreadyHandled`` when ``idempotency.key`` is stored already. Re-appending events
        whose ids are all stored in this stream returns the stored events (a retried
        append after a lost acknowledgement); a mix of stored and new ids is a conflict, and
        the same id twice in one call raises ``ValueError``. An append of no events with an
        idempotency record stores the record alone (a command that decided nothing).
        ``idempotency.result`` must be JSON-safe (Decimal as a string). After ``close()``
        the database stores refuse appends.
        """
        ...

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None: ...

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]: ...

    def stream_version(self, stream_id: str) -> int: ...

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events with position > ``after_position`` in global order, at most ``limit``."""
        ...

    def last_position(self) -> int: ...

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event | None = None,
        batch: int = 1000,
        poll_interval: float | None = None,
    ) -> Iterator[list[RecordedEvent]]:
        """Yield batches of events after ``after_position`` forever (until ``stop`` is set).

        Never skips an event, even one committed late by a slower transaction.
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    def close(self) -> None: ...


class PriceSource(Protocol):
    """Last known prices, for pre-trade checks and paper fills."""

    def last_price(self, symbol: Symbol) -> Decimal | None: ...


class Markets(Protocol):
    """The symbols that can be traded."""

    def is_tradable(self, symbol: Symbol) -> bool: ...
