"""The read-store port: projection copies, rows + checkpoint in one transaction, queries.

Every projection owns one *active copy* of its tables (a generation number) and a
checkpoint (the last global position applied to that copy). A runner reads the
checkpoint, applies later events through a ``ReadModel`` and hands the changed rows to
``commit`` together with the new checkpoint; the backend writes both in ONE transaction,
guarded by the checkpoint the runner started from, so a re-delivered batch or a second
runner on the same projection can never apply an effect twice.

A rebuild writes a fresh copy (``begin_rebuild``), then ``swap`` writes its last rows
and its checkpoint in one transaction, makes it the active copy (in the same transaction,
or right after it while the rebuild lock still keeps the copy to itself: a crash in
between leaves an inactive copy that the next rebuild drops), and drops the old copy. A live
runner still writing the old copy gets ``StaleCopy`` on its next read or commit, and
continues from the new copy's checkpoint: nothing is lost around the swap.

Query semantics shared by every backend (and by ``MemoryTables`` below, the reference):

- ``Query.equals`` names indexed fields only (``None`` matches a missing/None value);
- the range is on an indexed field or the table's ``order_by`` field, both ends
  inclusive, either end optional;
- results are sorted by the table's ``order_by`` (``descending`` as declared, missing
  values last), ties by key in the same direction; without ``order_by``, by key ascending;
- values compare through ``index_key``: numbers (int, Decimal) numerically, datetimes as
  instants (naive ones taken as UTC), strings by code point, and values of different
  kinds never equal each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

from projections.base import Page, Projection, Query, ReadModel, Row, TableSpec

Changes = Mapping[str, Mapping[str, Row | None]]
"""Changed rows of one projection: table -> key -> row (``None`` deletes the row)."""

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""Projection, table and indexed field names (they become SQL identifiers)."""


class ReadStoreError(Exception):
    """Base of the read-store errors a runner handles (never a projection's fault)."""


class StaleCopy(ReadStoreError):
    """The copy written or read is not the one expected any more.

    Raised when a commit's ``expected`` checkpoint differs from the stored one (another
    runner advanced it, or the batch was already applied), or when the copy was retired
    by a swap. The runner reloads the projection's active copy and checkpoint.
    """

    def __init__(self, name: str, copy: int, detail: str) -> None:
        super().__init__(f"projection {name} copy {copy}: {detail}")
        self.name = name
        self.copy = copy


class RebuildInProgress(ReadStoreError):
    """Another rebuild of this projection holds its rebuild lock."""


class UnknownTable(ReadStoreError, LookupError):
    """No registered projection owns this table."""


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """One stored copy of a projection and its checkpoint."""

    name: str
    copy: int
    active: bool
    version: int
    position: int
    tables: tuple[TableSpec, ...]
    created_at: datetime | None
    updated_at: datetime | None
    rebuilt_at: datetime | None
    last_event_ts: datetime | None
    """``ts_recorded`` of the event at ``position`` (None before the first event)."""
    error: str | None
    """Why the runner stopped this projection (cleared by the next successful commit)."""

    def is_stale(self, projection: Projection | type[Projection]) -> bool:
        """Whether this copy was built by another version or table layout than ``projection``."""
        return self.version != projection.version or self.tables != tuple(projection.tables)


class ReadStore(Protocol):
    """Rows of every projection copy, checkpoints, the active pointer, queries."""

    def register(self, projections: Iterable[Projection | type[Projection]]) -> None:
        """Know these projections; create an empty first copy for each new one."""
        ...

    def active_copy(self, name: str) -> int:
        """The active copy of ``name`` (``LookupError`` when not registered)."""
        ...

    def checkpoint(self, name: str, copy: int | None = None) -> int:
        """Last position applied to ``copy`` (default: the active copy)."""
        ...

    def commit(
        self,
        name: str,
        changes: Changes,
        position: int,
        *,
        copy: int | None = None,
        expected: int | None = None,
        last_event_ts: datetime | None = None,
    ) -> None:
        """Write ``changes`` and the checkpoint ``position`` in one transaction.

        ``copy`` defaults to the active copy. With ``expected``, the stored checkpoint
        must equal it; without, ``position`` must be above it. Otherwise, or when the
        copy is gone, raise ``StaleCopy`` and write nothing. Clears a stored error.
        """
        ...

    def get(self, table: str, key: str) -> Row | None:
        """A row of the active copy of the projection owning ``table``."""
        ...

    def query(self, query: Query) -> Page:
        """Filter, sort and page rows of the active copy (semantics in the module doc)."""
        ...

    def load_model(self, name: str, copy: int | None = None) -> ReadModel:
        """A read-only view of one copy's committed rows (writes raise ``TypeError``).

        Reads raise ``StaleCopy`` once the copy is retired.
        """
        ...

    def begin_rebuild(self, projection: Projection | type[Projection]) -> int:
        """Take the projection's rebuild lock, drop leftover copies, create an empty copy.

        Raises ``RebuildInProgress`` when another rebuild holds the lock. The new copy
        starts at checkpoint 0 with ``projection.version`` and its current tables.
        """
        ...

    def swap(
        self,
        name: str,
        copy: int,
        changes: Changes | None = None,
        position: int | None = None,
        *,
        last_event_ts: datetime | None = None,
    ) -> None:
        """Make ``copy`` active: last rows and checkpoint in ONE transaction, then the pointer.

        Then drop the previous copy and release the rebuild lock. Swaps of different
        projections may run at once (from several threads). ``changes`` are handed over:
        the caller must not change those rows afterwards.
        """
        ...

    def abandon(self, name: str, copy: int) -> None:
        """Drop a copy that was being rebuilt and release the rebuild lock."""
        ...

    def copies(self, name: str | None = None) -> list[CopyInfo]:
        """Every stored copy (of ``name``), active or not, by name then copy."""
        ...

    def set_error(self, name: str, error: str | None, *, copy: int | None = None) -> None:
        """Record (or clear) why the runner stopped this projection."""
        ...

    def close(self) -> None: ...


# --- shared semantics ----------------------------------------------------------------

_NUM_OFFSET = 500_000


def index_key(value: Any) -> str | None:
    """Encode a scalar so that text order (code points) equals value order.

    The first character tags the kind (``b`` bool, ``n`` number, ``s`` string,
    ``t`` datetime, ``d`` date); numbers use a sign / exponent / digits layout. ``None``
    stays ``None`` (SQL NULL).
    """
    if value is None:
        return None
    t = type(value)
    if t is str:
        return "s" + str(value)
    if t is bool:
        return "b1" if value else "b0"
    if t is int:
        return "n" + _number_key(Decimal(value))
    if isinstance(value, Decimal):
        return "n" + _number_key(value)
    if isinstance(value, Enum):
        return index_key(value.value)
    if isinstance(value, str):
        return "s" + str(value)
    if isinstance(value, int):
        return "n" + _number_key(Decimal(int(value)))
    if isinstance(value, float):
        if value != value:
            return None
        return "n" + _number_key(Decimal(value))
    if isinstance(value, datetime):
        tz = value.tzinfo
        if tz is not UTC:
            value = value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)
        elif t is datetime:
            return _utc_key(value)
        # ISO text without the offset sorts by instant: a missing fraction sorts first.
        iso: str = value.isoformat()
        return "t" + iso[:-6]
    if isinstance(value, date):
        return "d" + value.isoformat()
    raise TypeError(f"{type(value).__name__} values cannot be indexed or sorted: {value!r}")


_UTC_CACHE_MAX = 100_000
"""Distinct datetimes whose text each cache keeps (then it starts afresh)."""
_UTC_KEYS: dict[datetime, str] = {}
_UTC_TEXTS: dict[datetime, str] = {}


def _utc_key(value: datetime) -> str:
    # Formatting a datetime costs more than encoding the rest of a row, and the rows a
    # rebuild writes share their timestamps (an event's time is in several rows). Equal
    # datetimes in UTC have equal text (same fields, fixed offset; fold plays no part).
    key = _UTC_KEYS.get(value)
    if key is None:
        if len(_UTC_KEYS) >= _UTC_CACHE_MAX:
            _UTC_KEYS.clear()
        key = _UTC_KEYS[value] = "t" + value.isoformat()[:-6]
    return key


def utc_text(value: datetime) -> str:
    """``str(value)`` of a ``datetime`` in ``UTC`` (exact type), formatted once per instant."""
    text = _UTC_TEXTS.get(value)
    if text is None:
        if len(_UTC_TEXTS) >= _UTC_CACHE_MAX:
            _UTC_TEXTS.clear()
        text = _UTC_TEXTS[value] = str(value)
    return text


def _number_key(d: Decimal) -> str:
    if not d.is_finite():
        if d.is_nan():
            raise TypeError("NaN cannot be indexed")
        # Infinities sort beyond every finite number of their sign.
        return "0" if d.is_signed() else "3"
    if not d:
        return "1"
    mantissa, _, _ = f"{d:E}".partition("E")
    digits = mantissa.replace("-", "").replace(".", "").rstrip("0")
    exp = d.adjusted() + _NUM_OFFSET
    if d > 0:
        return f"2{exp:07d}{digits}"
    # Negative: bigger magnitude sorts first; '~' ends the digits (above every digit).
    return f"0{2 * _NUM_OFFSET - exp:07d}{digits.translate(_COMPLEMENT)}~"


_COMPLEMENT = str.maketrans("0123456789", "9876543210")


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"{kind} name must match {NAME.pattern}: {name!r}")
    return name


def materialised_fields(spec: TableSpec) -> tuple[str, ...]:
    """Fields a backend stores in their own (indexed) columns: indexes, then ``order_by``."""
    fields = tuple(dict.fromkeys(spec.indexes))
    if spec.order_by and spec.order_by not in fields:
        fields += (spec.order_by,)
    for f in fields:
        check_name("field", f)
    return fields


def check_query(spec: TableSpec, query: Query) -> None:
    """Refuse filters on fields that are not indexed (they would be scans, or impossible)."""
    for f in query.equals:
        if f not in spec.indexes:
            raise ValueError(f"{spec.name}.{f} is not indexed; filter on one of {list(spec.indexes)}")
    if query.range_field is not None and query.range_field not in spec.indexes and (
        query.range_field != spec.order_by
    ):
        raise ValueError(f"{spec.name}.{query.range_field} is neither indexed nor the sort field")
    if query.limit < 0 or query.offset < 0:
        raise ValueError("limit and offset must not be negative")


def projection_instance(p: Projection | type[Projection]) -> Projection:
    return p() if isinstance(p, type) else p


def table_owners(
    projections: Iterable[tuple[str, Iterable[TableSpec]]],
) -> dict[str, tuple[str, TableSpec]]:
    """Map each table to (projection name, spec); a table owned twice is an error."""
    out: dict[str, tuple[str, TableSpec]] = {}
    for name, specs in projections:
        check_name("projection", name)
        for spec in specs:
            check_name("table", spec.name)
            materialised_fields(spec)
            owner = out.get(spec.name)
            if owner is not None and owner[0] != name:
                raise ValueError(f"table {spec.name} is declared by both {owner[0]} and {name}")
            out[spec.name] = (name, spec)
    return out


class _Table:
    __slots__ = ("spec", "rows", "indexable", "fields", "index", "ixvals")

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.rows: dict[str, Row] = {}
        self.indexable = frozenset(spec.indexes)
        # Indexes are built on first use: most tables are only read by key, and keeping
        # unused indexes would cost every put on the replay hot path.
        self.fields: tuple[str, ...] = ()
        self.index: dict[str, dict[Any, set[str]]] = {}
        self.ixvals: dict[str, dict[str, Any]] = {}

    def add_index(self, f: str) -> dict[Any, set[str]]:
        index: dict[Any, set[str]] = {}
        values: dict[str, Any] = {}
        for key, row in self.rows.items():
            v = row.get(f)
            values[key] = v
            try:
                bucket = index.get(v)
            except TypeError:
                continue  # unhashable: cannot match an equality filter anyway
            if bucket is None:
                index[v] = {key}
            else:
                bucket.add(key)
        self.index[f] = index
        self.ixvals[f] = values
        self.fields = (*self.fields, f)
        return index


_MISSING = object()


class MemoryTables:
    """Indexed in-memory tables of one projection copy: a ``ReadModel`` and the query reference.

    Rows are kept by reference; callers that hand them out copy them first.
    """

    __slots__ = ("_tables",)

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        self._tables = {s.name: _Table(s) for s in specs}

    def _t(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            raise UnknownTable(f"no table {table!r} in this model") from None

    def get(self, table: str, key: str) -> Row | None:
        return self._t(table).rows.get(key)

    def put(self, table: str, key: str, row: Row) -> None:
        t = self._t(table)
        if t.fields:
            _reindex(t, key, row)
        t.rows[key] = row

    def delete(self, table: str, key: str) -> None:
        t = self._t(table)
        if t.rows.pop(key, None) is None:
            return
        for f in t.fields:
            old = t.ixvals[f].pop(key, _MISSING)
            if old is not _MISSING:
                _unfile(t.index[f], old, key)

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        """Rows whose fields equal ``equals``: indexed fields are looked up, others scanned."""
        t = self._t(table)
        rows = t.rows
        if not equals:
            return iter(list(rows.items()))
        sets = []
        rest = []
        for f, v in equals.items():
            idx = t.index.get(f)
            if idx is None:
                if f not in t.indexable:
                    rest.append((f, v))
                    continue
                idx = t.add_index(f)
            try:
                bucket = idx.get(v)
            except TypeError:
                return iter(())
            if not bucket:
                return iter(())
            sets.append(bucket)
        keys: Iterable[str]
        if sets:
            sets.sort(key=len)
            keys = sets[0] if len(sets) == 1 else sets[0].intersection(*sets[1:])
        else:
            keys = rows
        if rest:
            return iter([(k, rows[k]) for k in keys if matches(rows[k], rest)])
        return iter([(k, rows[k]) for k in keys])

    def load(self, table: str, rows: Mapping[str, Row | None]) -> None:
        """Put many rows at once (``None`` deletes); rows are kept by reference."""
        t = self._t(table)
        if t.fields:
            for key, row in rows.items():
                if row is None:
                    self.delete(table, key)
                else:
                    _reindex(t, key, row)
                    t.rows[key] = row
            return
        gone = [key for key, row in rows.items() if row is None]
        if gone:
            for key in gone:
                t.rows.pop(key, None)
            t.rows.update((key, row) for key, row in rows.items() if row is not None)
        else:
            t.rows.update(rows)  # type: ignore[arg-type]  # no None among them

    def clear(self) -> None:
        for t in self._tables.values():
            t.rows.clear()
            t.fields = ()
            t.index = {}
            t.ixvals = {}

    def __len__(self) -> int:
        return sum(len(t.rows) for t in self._tables.values())

    def tables(self) -> dict[str, dict[str, Row]]:
        """Every table's rows by key (by reference)."""
        return {name: t.rows for name, t in self._tables.items()}

    def query(self, query: Query) -> Page:
        t = self._t(query.table)
        check_query(t.spec, query)
        return evaluate_query(t.spec, query, self.find(query.table, **query.equals))


def _reindex(t: _Table, key: str, row: Row) -> None:
    for f in t.fields:
        values = t.ixvals[f]
        new = row.get(f)
        old = values.get(key, _MISSING)
        if old is not _MISSING:
            if old == new:
                continue
            _unfile(t.index[f], old, key)
        values[key] = new
        try:
            bucket = t.index[f].get(new)
        except TypeError:
            continue
        if bucket is None:
            t.index[f][new] = {key}
        else:
            bucket.add(key)


def _unfile(index: dict[Any, set[str]], value: Any, key: str) -> None:
    try:
        keys = index.get(value)
    except TypeError:
        return
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[value]


def matches(row: Row, equals: Iterable[tuple[str, Any]]) -> bool:
    """Whether ``row`` has every (field, value) of ``equals`` (Python equality)."""
    return all(row.get(f) == v for f, v in equals)


def evaluate_query(spec: TableSpec, query: Query, candidates: Iterable[tuple[str, Row]]) -> Page:
    """Apply the range, the order and the page to rows already filtered by ``equals``."""
    items = list(candidates)
    if query.range_field is not None and (query.range_from is not None or query.range_to is not None):
        f = query.range_field
        lo = index_key(query.range_from)
        hi = index_key(query.range_to)
        kept = []
        for k, row in items:
            v = index_key(row.get(f))
            if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
                continue
            kept.append((k, row))
        items = kept
    if spec.order_by:
        f = spec.order_by
        desc = spec.descending
        present: list[tuple[str, str, Row]] = []
        missing: list[tuple[str, Row]] = []
        for k, row in items:
            v = index_key(row.get(f))
            if v is None:
                missing.append((k, row))
            else:
                present.append((v, k, row))
        present.sort(key=lambda e: (e[0], e[1]), reverse=desc)
        missing.sort(key=lambda e: e[0], reverse=desc)
        ordered = [(k, row) for _, k, row in present] + missing
    else:
        ordered = sorted(items, key=lambda e: e[0])
    page = ordered[query.offset : query.offset + query.limit]
    return Page(items=[row for _, row in page], total=len(ordered), limit=query.limit, offset=query.offset)


class ReplayModel:
    """A ``ReadModel`` holding every row of a copy that is written once, at the end.

    For a rebuild into an empty copy without intermediate flushes: nothing is read from
    the store and no change is tracked, since every row is new; ``take_changes`` hands
    all rows over (by reference).
    """

    __slots__ = ("_mem", "_tabs", "complete")

    def __init__(self, tables: Iterable[TableSpec]) -> None:
        self._mem = MemoryTables(tables)
        self._tabs = self._mem._tables
        self.complete = True

    def get(self, table: str, key: str) -> Row | None:
        return self._tabs[table].rows.get(key)

    def put(self, table: str, key: str, row: Row) -> None:
        t = self._tabs[table]
        if t.fields:
            _reindex(t, key, row)
        t.rows[key] = row

    def delete(self, table: str, key: str) -> None:
        self._mem.delete(table, key)

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        return self._mem.find(table, **equals)

    def take_changes(self) -> dict[str, dict[str, Row | None]]:
        """Every row, by table (the copy was empty, so nothing needs deleting)."""
        return self._mem.tables()  # type: ignore[return-value]

    def trim(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._mem)


class WriteBackModel:
    """A ``ReadModel`` over one stored copy that keeps rows in memory and records changes.

    ``complete`` means the memory holds every row of the copy (a copy at checkpoint 0,
    or a rebuild): reads never go to the store. Otherwise a miss reads through ``base``
    (the copy's committed rows) and is cached. ``take_changes`` hands the rows changed
    since the last call to the caller, which commits them; ``trim`` forgets clean rows
    when the cache outgrows ``max_rows``. Rows are held by reference: a projection must
    ``put`` a row it changed (even one it changed in place).
    """

    __slots__ = ("_mem", "_tabs", "_base", "complete", "_dirty", "_missing", "max_rows")

    def __init__(
        self,
        tables: Iterable[TableSpec],
        base: ReadModel | None = None,
        *,
        complete: bool = False,
        max_rows: int | None = None,
    ) -> None:
        specs = tuple(tables)
        self._mem = MemoryTables(specs)
        # The replay hot path goes straight to the tables (get/put are most of its calls).
        self._tabs = self._mem._tables
        self._base = base
        self.complete = complete or base is None
        self._dirty: dict[str, dict[str, Row | None]] = {s.name: {} for s in specs}
        self._missing: dict[str, set[str]] = {s.name: set() for s in specs}
        self.max_rows = max_rows

    def get(self, table: str, key: str) -> Row | None:
        row = self._tabs[table].rows.get(key)
        if row is not None or self.complete:
            return row
        if key in self._missing[table] or key in self._dirty[table]:
            return None
        assert self._base is not None
        row = self._base.get(table, key)
        if row is None:
            self._missing[table].add(key)
        else:
            self._mem.put(table, key, row)
        return row

    def put(self, table: str, key: str, row: Row) -> None:
        t = self._tabs[table]
        if t.fields:
            _reindex(t, key, row)
        t.rows[key] = row
        self._dirty[table][key] = row

    def delete(self, table: str, key: str) -> None:
        self._mem.delete(table, key)
        self._dirty[table][key] = None

    def find(self, table: str, **equals: Any) -> Iterator[tuple[str, Row]]:
        mem = self._mem
        if self.complete:
            return mem.find(table, **equals)
        assert self._base is not None
        cached = dict(mem.find(table, **equals))
        dirty = self._dirty[table]
        out = []
        for key, row in self._base.find(table, **equals):
            if key in cached or key in dirty or mem.get(table, key) is not None:
                continue  # the cached or changed version wins
            mem.put(table, key, row)
            out.append((key, row))
        out.extend(cached.items())
        return iter(out)

    def take_changes(self) -> dict[str, dict[str, Row | None]]:
        """The rows changed since the last call (None = deleted), by table; resets them."""
        out = {t: rows for t, rows in self._dirty.items() if rows}
        for t in out:
            self._dirty[t] = {}
        return out

    @property
    def dirty(self) -> bool:
        return any(self._dirty.values())

    def __len__(self) -> int:
        return len(self._mem)

    def trim(self) -> None:
        """Forget clean rows when more than ``max_rows`` are cached (call after a commit)."""
        if self.max_rows is None or self._base is None or self.dirty:
            return
        if len(self._mem) > self.max_rows or sum(map(len, self._missing.values())) > self.max_rows:
            self._mem.clear()
            for s in self._missing.values():
                s.clear()
            self.complete = False

    def rows(self) -> dict[str, dict[str, Row]]:
        """Cached rows by table (every row when ``complete``); by reference."""
        return self._mem.tables()
