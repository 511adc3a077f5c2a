"""Event envelopes: what is appended (``NewEvent``) and what is read back (``RecordedEvent``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.events import EVENT_TYPES, Event
from domain.values import uuid4_str


def new_event_id() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())`` (see ``uuid4_str``)."""
    return uuid4_str()


@dataclass(frozen=True, kw_only=True, slots=True)
class Metadata:
    """Who caused an event, why, and when (venue time apart from our time)."""

    correlation_id: str | None = None
    causation_id: str | None = None
    user_id: str | None = None
    idempotency_key: str | None = None
    ts_event: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "user_id": self.user_id,
            "idempotency_key": self.idempotency_key,
            "ts_event": self.ts_event.isoformat() if self.ts_event else None,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class NewEvent:
    """A domain event on its way into a stream."""

    event: Event
    metadata: Metadata = field(default_factory=Metadata)
    event_id: str = field(default_factory=new_event_id)

    @property
    def type(self) -> str:
        return type(self.event).__name__

    @property
    def schema_version(self) -> int:
        return type(self.event).schema_version

    def data(self) -> dict[str, Any]:
        return EVENT_TYPES.to_data(self.event)


class RecordedEvent:
    """A stored event as every reader sees it. ``event`` decodes (and upcasts) on first use.

    A store that keeps the event object (the in-memory store) may leave ``data`` and
    ``metadata`` to be encoded on first use instead: most records of a backtest are never
    read as JSON.
    """

    __slots__ = (
        "event_id",
        "stream_id",
        "version",
        "position",
        "type",
        "schema_version",
        "_data",
        "_metadata",
        "ts_recorded",
        "_event",
    )

    def __init__(
        self,
        *,
        event_id: str,
        stream_id: str,
        version: int,
        position: int,
        type: str,
        schema_version: int,
        data: dict[str, Any] | None,
        metadata: dict[str, Any] | Metadata,
        ts_recorded: datetime,
        event: Event | None = None,
    ) -> None:
        if data is None and event is None:
            raise ValueError("a recorded event needs its data or its event")
        self.event_id = event_id
        self.stream_id = stream_id
        self.version = version
        self.position = position
        self.type = type
        self.schema_version = schema_version
        self._data = data
        self._metadata = metadata
        self.ts_recorded = ts_recorded
        self._event = event

    @property
    def event(self) -> Event:
        ev = self._event
        if ev is None:
            assert self._data is not None
            ev = self._event = EVENT_TYPES.from_data(self.type, self.schema_version, self._data)
        return ev

    @property
    def data(self) -> dict[str, Any]:
        d = self._data
        if d is None:
            assert self._event is not None
            d = self._data = EVENT_TYPES.to_data(self._event)
        return d

    @property
    def metadata(self) -> dict[str, Any]:
        m = self._metadata
        if isinstance(m, Metadata):
            m = self._metadata = m.to_dict()
        return m

    def to_dict(self) -> dict[str, Any]:
        """Return the envelope as JSON-safe primitives (as published to Kafka and audit)."""
        return {
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "version": self.version,
            "position": self.position,
            "type": self.type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": {**self.metadata, "ts_recorded": self.ts_recorded.isoformat()},
        }

    def __repr__(self) -> str:
        return f"RecordedEvent({self.stream_id}@{self.version} #{self.position} {self.type})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
