"""Audit: what the system knew at time T, rebuilt from the event log alone.

``audit_stream`` replays one stream's events recorded at or before T into its aggregate
(``Account`` or ``Bot``, by stream prefix) and returns them with the resulting state.
``portfolio_at`` replays one account's events recorded at or before T through the
portfolio projection into memory: the account's portfolio rows as they stood at T.

"Recorded at or before T" is the prefix of the stream up to the last event whose
``ts_recorded`` is <= T (a stream is read in version order and never skips a version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from commands.ports import EventStore
from domain.account import Account
from domain.aggregate import Aggregate
from domain.bot import Bot
from domain.envelope import RecordedEvent
from projections.base import Projection, Row
from projections.store import WriteBackModel, projection_instance

AGGREGATES: dict[str, type[Aggregate]] = {"account": Account, "bot": Bot}
"""Stream prefix -> aggregate class."""


@dataclass(frozen=True, slots=True)
class StreamAudit:
    stream_id: str
    at: datetime | None
    version: int
    """Version of the last event known at ``at`` (0: the stream did not exist yet)."""
    events: list[RecordedEvent]
    state: dict[str, Any]
    """The aggregate's state as JSON-safe primitives (``to_snapshot``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "at": self.at.isoformat() if self.at else None,
            "version": self.version,
            "events": [e.to_dict() for e in self.events],
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class PortfolioAudit:
    account_id: str
    at: datetime
    version: int
    position: int
    """Global position of the last event applied (0: none)."""
    tables: dict[str, dict[str, Row]]
    """The account's rows of every portfolio table, by table and key."""


def _check_at(at: datetime | None) -> None:
    if at is not None and at.tzinfo is None:
        raise ValueError("the audit time needs a time zone")


def known_at(events: Sequence[RecordedEvent], at: datetime | None) -> list[RecordedEvent]:
    """The prefix of a stream's events recorded at or before ``at`` (all when None)."""
    if at is None:
        return list(events)
    out = []
    for rec in events:
        if rec.ts_recorded > at:
            break
        out.append(rec)
    return out


def aggregate_class(stream_id: str) -> tuple[type[Aggregate], str]:
    """(aggregate class, aggregate id) of a stream id like ``account-42``."""
    prefix, sep, aggregate_id = stream_id.partition("-")
    cls = AGGREGATES.get(prefix)
    if not sep or not aggregate_id or cls is None:
        raise ValueError(f"cannot audit {stream_id!r}: expected {' or '.join(p + '-<id>' for p in AGGREGATES)}")
    return cls, aggregate_id


def audit_stream(store: EventStore, stream_id: str, at: datetime | None = None) -> StreamAudit:
    """The stream's events recorded at or before ``at`` and the aggregate state they produce."""
    _check_at(at)
    cls, aggregate_id = aggregate_class(stream_id)
    events = known_at(store.read_stream(stream_id), at)
    agg = cls(aggregate_id)
    agg.replay(r.event for r in events)
    return StreamAudit(
        stream_id=stream_id, at=at, version=agg.version, events=events,
        state=agg.to_snapshot(),  # type: ignore[attr-defined]
    )


def portfolio_at(
    store: EventStore,
    account_id: str,
    at: datetime,
    *,
    projection: Projection | type[Projection] | None = None,
) -> PortfolioAudit:
    """The portfolio read model of ``account_id`` as it was at ``at``."""
    _check_at(at)
    if projection is None:
        from projections.registry import get

        projection = get("portfolio")
    p = projection_instance(projection)
    events = known_at(store.read_stream(Account.stream_id_for(account_id)), at)
    model = WriteBackModel(p.tables)
    for rec in events:
        if rec.type in p.handles:
            p.apply(model, rec)
    tables = {
        table: {k: r for k, r in rows.items() if r.get("account_id") == account_id}
        for table, rows in model.rows().items()
    }
    return PortfolioAudit(
        account_id=account_id, at=at, version=events[-1].version if events else 0,
        position=events[-1].position if events else 0, tables=tables,
    )
