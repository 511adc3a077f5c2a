"""JSON codec for stored envelopes: orjson out, cheap ``RecordedEvent`` construction in.

Reading a row costs two ``orjson.loads`` calls and one envelope construction (a few
microseconds); the domain event itself is decoded lazily by ``RecordedEvent.event``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from commands.ports import IdempotencyRecord, Snapshot
from domain.envelope import NewEvent, RecordedEvent
from domain.events import Event

EVENT_COLUMNS = (
    "position, event_id, stream_id, version, type, schema_version, data, metadata, ts_recorded"
)
"""Column order every backend selects and ``record_from_row`` expects."""

EventRow = tuple[Any, ...]
"""(position, event_id, stream_id, version, type, schema_version, data, metadata, ts_recorded)."""

_UTC = UTC


def _refuse(value: Any) -> Any:
    raise TypeError(
        f"{type(value).__name__} is not JSON-safe; encode it in the event's fields "
        "(Decimal and datetime as strings) before storing"
    )


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON text; refuses types that would not round-trip."""
    return orjson.dumps(value, default=_refuse).decode()


loads = orjson.loads
"""Decode JSON text or bytes."""


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A ``NewEvent`` with its payload and metadata encoded once, in the caller's thread."""

    event_id: str
    type: str
    schema_version: int
    event: Event
    data: dict[str, Any]
    data_json: str
    metadata: dict[str, Any]
    metadata_json: str


def encode_event(new: NewEvent) -> EncodedEvent:
    """Encode one event for storage."""
    data = new.data()
    metadata = new.metadata.to_dict()
    return EncodedEvent(
        event_id=new.event_id,
        type=new.type,
        schema_version=new.schema_version,
        event=new.event,
        data=data,
        data_json=dumps(data),
        metadata=metadata,
        metadata_json=dumps(metadata),
    )


def encode_events(events: Sequence[NewEvent]) -> list[EncodedEvent]:
    """Encode a whole append; a repeated event id in one append is a caller bug."""
    encoded = [encode_event(e) for e in events]
    if len({e.event_id for e in encoded}) != len(encoded):
        raise ValueError("the same event id appears twice in one append")
    return encoded


def utc(ts: datetime) -> datetime:
    """Return ``ts`` in UTC (refusing naive datetimes, whose instant is unknown)."""
    tz = ts.tzinfo
    if tz is _UTC:
        return ts
    if tz is None:
        raise ValueError(f"timestamp {ts!r} has no time zone")
    return ts.astimezone(_UTC)


def recorded(
    enc: EncodedEvent, *, stream_id: str, version: int, position: int, ts_recorded: datetime
) -> RecordedEvent:
    """Build the envelope an append returns (the domain event is already at hand)."""
    return RecordedEvent(
        event_id=enc.event_id,
        stream_id=stream_id,
        version=version,
        position=position,
        type=enc.type,
        schema_version=enc.schema_version,
        data=enc.data,
        metadata=enc.metadata,
        ts_recorded=ts_recorded,
        event=enc.event,
    )


def record_from_row(row: EventRow) -> RecordedEvent:
    """Build a ``RecordedEvent`` from a row in ``EVENT_COLUMNS`` order.

    ``data``/``metadata`` may be JSON text/bytes or already-decoded dicts; ``ts_recorded``
    may be a datetime or ISO-8601 text.
    """
    position, event_id, stream_id, version, type_, schema_version, data, meta, ts = row
    if type(data) is not dict:
        data = loads(data)
    if type(meta) is not dict:
        meta = loads(meta)
    ts = datetime.fromisoformat(ts) if type(ts) is str else utc(ts)
    return RecordedEvent(
        event_id=event_id,
        stream_id=stream_id,
        version=version,
        position=position,
        type=type_,
        schema_version=schema_version,
        data=data,
        metadata=meta,
        ts_recorded=ts,
    )


def idempotency_from_row(row: tuple[Any, ...]) -> IdempotencyRecord:
    """Build an ``IdempotencyRecord`` from (key, command_type, fingerprint, result)."""
    key, command_type, fingerprint, result = row
    if type(result) is not dict:
        result = loads(result)
    return IdempotencyRecord(
        key=key, command_type=command_type, fingerprint=fingerprint, result=result
    )


def snapshot_from_row(row: tuple[Any, ...]) -> Snapshot:
    """Build a ``Snapshot`` from (stream_id, version, schema, state)."""
    stream_id, version, schema, state = row
    if type(state) is not dict:
        state = loads(state)
    return Snapshot(stream_id=stream_id, version=version, schema=schema, state=state)


_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def json_has_nul(text: str) -> bool:
    """Whether JSON text encodes a NUL character (PostgreSQL refuses it in jsonb)."""
    return "\\u0000" in text and _NUL_ESCAPE.search(text) is not None
