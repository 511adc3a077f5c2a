"""What a projection is, and the read-model port it writes through.

A projection is a pure function of (read model, event envelope): ``apply`` reads and
writes rows of its own tables through ``ReadModel`` and nothing else. The runner (embedded
or faust) feeds events in global order, collects the changed rows, and writes them with
the projection's checkpoint in ONE transaction, so re-delivery of an event at or below the
checkpoint is skipped and a crash never loses or doubles an effect.

Rows are dicts of JSON-safe values plus ``Decimal`` and ``datetime`` (the read store
serialises them exactly). Each table declares which row fields are indexed for queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from domain.envelope import RecordedEvent

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A read-model table: rows addressed by a string key, some fields indexed for filtering."""

    name: str
    indexes: tuple[str, ...] = ()
    order_by: str | None = None
    """Default sort field for queries (e.g. ``ts``), newest first when ``descending``."""
    descending: bool = True


class ReadModel(Protocol):
    """The rows a projection can see and change (its own tables only)."""

    def get(self, table: str, key: str) -> Row | None: ...

    def put(self, table: str, key: str, row: Row) -> None: ...

    def delete(self, table: str, key: str) -> None: ...

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        """Rows whose indexed fields equal the given values."""
        ...


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Row]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class Query:
    """A read-side query: equality filters on indexed fields, an optional range, paging."""

    table: str
    equals: dict[str, Any] = field(default_factory=dict)
    range_field: str | None = None
    range_from: Any = None
    range_to: Any = None
    limit: int = 100
    offset: int = 0


class Projection:
    """Base class: subclasses set ``name``, ``version``, ``tables`` and ``handles``.

    ``version`` is bumped whenever ``apply`` changes meaning; a stored copy built by an
    older version must be rebuilt.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[TableSpec, ...]]
    handles: ClassVar[frozenset[str]]
    """Event type names this projection reacts to; others are skipped without decoding."""

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        raise NotImplementedError

    @classmethod
    def table_names(cls) -> Iterable[str]:
        return (t.name for t in cls.tables)
