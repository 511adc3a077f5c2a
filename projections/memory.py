"""An in-memory ``ReadModel``: a dict of tables with hash indexes on the declared fields.

Used by tests and by in-memory rebuilds (replay into memory, then write the rows out).
Semantics follow ``projections.store`` (equality filters on indexed fields only, the
shared query evaluation); this class is the lean variant for replay hot paths. Rows are
stored as given, not copied: a projection owns the dicts it puts, and readers that hand
rows out of the process copy them (``query`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from projections.base import Page, Projection, Query, Row, TableSpec
from projections.store import UnknownTable, check_query, evaluate_query


class _Table:
    __slots__ = ("spec", "rows", "fields", "positions", "buckets", "keyvals", "values")

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.rows: dict[str, Row] = {}
        self.fields = tuple(dict.fromkeys(spec.indexes))
        self.values: Callable[[Row], tuple[Any, ...]] | None = _values_getter(self.fields)
        self.positions = {name: i for i, name in enumerate(self.fields)}
        # One map per indexed field: value -> keys (a dict used as an ordered set).
        self.buckets: tuple[dict[Any, dict[str, None]], ...] = tuple({} for _ in self.fields)
        # The indexed values each key was filed under: rows may be mutated in place before
        # ``put``, so the old values cannot be read back from the row itself.
        self.keyvals: dict[str, tuple[Any, ...]] = {}


def _values_getter(fields: tuple[str, ...]) -> Callable[[Row], tuple[Any, ...]] | None:
    """A fast function returning a row's indexed values (None for a missing field)."""
    if not fields:
        return None
    if len(fields) == 1:
        (only,) = fields
        return lambda row: (row.get(only),)
    present = itemgetter(*fields)

    def values(row: Row) -> tuple[Any, ...]:
        try:
            return present(row)  # type: ignore[no-any-return]
        except KeyError:
            return tuple([row.get(f) for f in fields])

    return values


class InMemoryReadModel:
    """Tables of rows keyed by string, with equality indexes; implements ``ReadModel``."""

    def __init__(self, tables: Iterable[TableSpec] = ()) -> None:
        self._tables: dict[str, _Table] = {}
        self._rows: dict[str, dict[str, Row]] = {}
        self.add_tables(tables)

    @classmethod
    def for_projections(cls, *projections: type[Projection] | Projection) -> InMemoryReadModel:
        """Return an empty model holding the tables of ``projections``."""
        model = cls()
        for p in projections:
            model.add_tables(p.tables)
        return model

    def add_tables(self, tables: Iterable[TableSpec]) -> None:
        for spec in tables:
            if spec.name not in self._tables:
                t = self._tables[spec.name] = _Table(spec)
                self._rows[spec.name] = t.rows

    def _t(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            raise UnknownTable(f"no table {table!r} in this model") from None

    # --- the ReadModel port ------------------------------------------------------------

    def get(self, table: str, key: str) -> Row | None:
        try:
            return self._rows[table].get(key)
        except KeyError:
            raise UnknownTable(f"no table {table!r} in this model") from None

    def put(self, table: str, key: str, row: Row) -> None:
        try:
            t = self._tables[table]
        except KeyError:
            raise UnknownTable(f"no table {table!r} in this model") from None
        t.rows[key] = row
        values = t.values
        if values is None:
            return
        new = values(row)
        old = t.keyvals.get(key)
        if old == new:
            return
        t.keyvals[key] = new
        if old is None:
            for bucket_map, value in zip(t.buckets, new):  # noqa: B905 - same length by construction
                bucket = bucket_map.get(value)
                if bucket is None:
                    bucket_map[value] = {key: None}
                else:
                    bucket[key] = None
            return
        for bucket_map, was, value in zip(t.buckets, old, new):  # noqa: B905
            if was == value:
                continue
            bucket = bucket_map.get(was)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del bucket_map[was]
            bucket = bucket_map.get(value)
            if bucket is None:
                bucket_map[value] = {key: None}
            else:
                bucket[key] = None

    def delete(self, table: str, key: str) -> None:
        t = self._t(table)
        if t.rows.pop(key, None) is None:
            return
        old = t.keyvals.pop(key, None)
        if old is None:
            return
        for i, was in enumerate(old):
            bucket = t.buckets[i].get(was)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del t.buckets[i][was]

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        """Rows whose indexed fields equal ``equals`` (every row when none is given)."""
        t = self._t(table)
        rows = t.rows
        if not equals:
            return iter(list(rows.items()))
        found: list[tuple[int, str, Any, dict[str, None]]] = []
        for name, value in equals.items():
            i = t.positions.get(name)
            if i is None:
                raise ValueError(f"{table}.{name} is not indexed; filter on one of {list(t.fields)}")
            bucket = t.buckets[i].get(value)
            if bucket is None:
                return iter(())
            found.append((len(bucket), name, value, bucket))
        if len(found) == 1:
            return iter([(k, rows[k]) for k in found[0][3]])
        found.sort(key=lambda f: f[0])
        rest = [(name, value) for _, name, value, _ in found[1:]]
        out = []
        for k in found[0][3]:
            row = rows[k]
            if all(row.get(n) == v for n, v in rest):
                out.append((k, row))
        return iter(out)

    # --- extras for rebuilds, queries and tests -------------------------------------------

    def query(self, q: Query) -> Page:
        """Filter, sort and page like every read store; the rows returned are copies."""
        t = self._t(q.table)
        check_query(t.spec, q)
        page = evaluate_query(t.spec, q, self.find(q.table, **q.equals))
        return Page(items=[dict(r) for r in page.items], total=page.total, limit=page.limit, offset=page.offset)

    def rows(self, table: str) -> dict[str, Row]:
        """The live rows of ``table`` by key (do not mutate)."""
        return self._t(table).rows

    def tables(self) -> dict[str, dict[str, Row]]:
        """Every table's rows by key (by reference), e.g. to write a rebuilt copy out."""
        return {name: t.rows for name, t in self._tables.items()}

    def dump(self) -> dict[str, dict[str, Row]]:
        """A copy of every table (rows shallow-copied), for comparisons in tests."""
        return {name: {k: dict(r) for k, r in t.rows.items()} for name, t in self._tables.items()}

    def __len__(self) -> int:
        return sum(len(t.rows) for t in self._tables.values())
