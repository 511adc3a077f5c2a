"""Read-store backends, ``open_read_store``, and what the SQL backends share.

Row documents are JSON with exact ``Decimal``/``datetime``/``date``: each such value is
stored as ``"\\x01" + str(value)`` (its type follows from the text: a space means a
datetime, ``YYYY-MM-DD`` a date, anything else a Decimal), and a real string that starts
with ``\\x01`` is escaped as ``"\\x01\\x01" + text``. orjson calls ``default`` only for
the tagged values, which it counts; the output is walked again (to escape) only when it
shows more tags than that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from projections.base import Query, Row, TableSpec
from projections.store import ReadStore, index_key, materialised_fields, utc_text

_TAG = "\x01"
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME
_UTC = UTC


def open_read_store(url: str) -> ReadStore:
    """Open the read store that ``url`` names.

    - ``memory://``: in-process (tests, backtests);
    - ``sqlite:///relative.db`` or ``sqlite:////absolute.db``;
    - ``postgresql://user@host:port/db[?schema=name]`` (also ``postgres://``,
      ``postgresql+psycopg://``); ``schema`` defaults to public.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"read store URL needs a scheme: {url!r}")
    scheme = scheme.lower()
    if scheme == "memory":
        from adapters.readstore.memory import MemoryReadStore

        return MemoryReadStore()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        from adapters.readstore.sqlite import SqliteReadStore

        return SqliteReadStore(rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from adapters.readstore.postgres import PostgresReadStore

        parts = urlsplit("postgresql://" + rest)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), "public")
        dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
        return PostgresReadStore(dsn, schema=schema)
    raise ValueError(f"unknown read store scheme {scheme!r} in {url!r}")


# --- row documents ---------------------------------------------------------------------

_TAGGABLE: dict[type, bool] = {Decimal: True, datetime: True, date: True}


def _taggable(t: type) -> bool:
    ok = _TAGGABLE.get(t)
    if ok is None:
        ok = _TAGGABLE[t] = issubclass(t, Decimal | date)  # Price, Money... and datetime
    return ok


def encode_row(row: Row) -> bytes:
    """Encode a row as JSON bytes that ``decode_row`` turns back into an equal row."""
    tagged = 0

    def default(value: Any) -> Any:
        nonlocal tagged
        t = type(value)
        if t is datetime and value.tzinfo is _UTC:
            tagged += 1
            return _TAG + utc_text(value)
        if _TAGGABLE.get(t) or _taggable(t):
            tagged += 1
            return _TAG + str(value)
        raise TypeError(f"{type(value).__name__} cannot be stored in a read-model row: {value!r}")

    out = orjson.dumps(row, default=default, option=_OPTS)
    # Each tag shows up as '"\u0001'; more of them means a real string (or key) starts
    # with \x01 and must be escaped.
    if out.count(b'"\\u0001') != tagged:
        out = orjson.dumps(_escape(row), default=default, option=_OPTS)
    return out


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape(v) for v in value]
    if isinstance(value, str) and value.startswith(_TAG):
        return _TAG + str(value)
    return value


def decode_row(data: bytes | str) -> Row:
    """Decode what ``encode_row`` produced."""
    row = orjson.loads(data)
    tagged = b"\\u0001" in data if isinstance(data, bytes) else "\\u0001" in data
    if tagged:
        return _untag_dict(row)
    return row  # type: ignore[no-any-return]


def untag(row: Any) -> Any:
    """Restore tagged values in an already-parsed document."""
    return _untag_dict(row) if type(row) is dict else _untag(row)


def _untag_dict(d: dict[str, Any]) -> dict[str, Any]:
    for k, v in d.items():
        t = type(v)
        if t is str:
            if v and v[0] == _TAG:
                d[k] = _from_tagged(v)
        elif t is dict or t is list:
            d[k] = _untag(v)
    return d


def _untag(v: Any) -> Any:
    t = type(v)
    if t is str:
        return _from_tagged(v) if v and v[0] == _TAG else v
    if t is dict:
        return _untag_dict(v)
    if t is list:
        return [_untag(x) for x in v]
    return v


def _from_tagged(v: str) -> Any:
    body = v[1:]
    if body[:1] == _TAG:
        return body  # an escaped real string
    if " " in body:
        return datetime.fromisoformat(body)
    if len(body) == 10 and body[4] == "-" and body[7] == "-":
        return date.fromisoformat(body)
    return Decimal(body)


# --- copies: table names and specs --------------------------------------------------------


def sql_table_name(projection: str, table: str, copy: int) -> str:
    """The SQL table of one projection table in one copy (at most 63 characters)."""
    name = f"rm_{projection}__{table}__{copy}"
    if len(name) > 60:
        digest = hashlib.sha1(f"{projection}/{table}".encode()).hexdigest()[:12]
        name = f"rm_{digest}__{copy}"
    return name


def spec_to_json(specs: Iterable[TableSpec], projection: str, copy: int) -> list[dict[str, Any]]:
    """The table layout stored with a copy (what its SQL tables really are)."""
    return [
        {
            "name": s.name,
            "indexes": list(s.indexes),
            "order_by": s.order_by,
            "descending": s.descending,
            "sql": sql_table_name(projection, s.name, copy),
            "columns": list(materialised_fields(s)),
        }
        for s in specs
    ]


def spec_from_json(items: list[dict[str, Any]]) -> tuple[tuple[TableSpec, ...], dict[str, str]]:
    """(table specs, table -> SQL table name) of a stored copy."""
    specs = tuple(
        TableSpec(
            name=i["name"], indexes=tuple(i["indexes"]), order_by=i["order_by"], descending=i["descending"]
        )
        for i in items
    )
    return specs, {i["name"]: i["sql"] for i in items}


def index_statements(table: str, sql_name: str, spec: TableSpec) -> list[str]:
    """``CREATE INDEX IF NOT EXISTS`` of one copy table (``table`` is the qualified name).

    Each indexed field is indexed together with the sort field and the key, so a filtered,
    sorted page is one index range scan.
    """
    cols = materialised_fields(spec)
    order = spec.order_by
    out = []
    for i, f in enumerate(cols):
        if f == order:
            parts = [column(f), "key"]
        elif order:
            parts = [column(f), column(order), "key"]
        else:
            parts = [column(f)]
        out.append(f'CREATE INDEX IF NOT EXISTS "{sql_name}_i{i}" ON {table} ({", ".join(parts)})')
    return out


def column(field: str) -> str:
    """The SQL column holding ``index_key`` of an indexed field."""
    return f"ix_{field}"


def row_params(key: str, row: Row, cols: tuple[str, ...]) -> tuple[Any, ...]:
    out: list[Any] = [key, encode_row(row).decode()]
    get = row.get
    for f in cols:
        v = get(f)
        # Most indexed values are strings (ids, symbols, statuses): no call for them.
        out.append("s" + v if type(v) is str else index_key(v))
    return tuple(out)


def where_clause(query_equals: Iterable[tuple[str, Any]], mark: str) -> tuple[list[str], list[Any]]:
    """Equality conditions on ``ix_`` columns (``IS NULL`` for None)."""
    where: list[str] = []
    params: list[Any] = []
    for f, v in query_equals:
        if v is None:
            where.append(f"{column(f)} IS NULL")
        else:
            where.append(f"{column(f)} = {mark}")
            params.append(index_key(v))
    return where, params


def select_page_sql(
    sql_name: str, spec: TableSpec, query: Query, mark: str, doc: str = "doc"
) -> tuple[str, str, list[Any]]:
    """(page SQL, count SQL, params) of a query; the page SQL takes limit and offset last.

    ``sql_name`` is a quoted, possibly schema-qualified table; ``doc`` the document expression.
    """
    where, params = where_clause(query.equals.items(), mark)
    if query.range_field is not None:
        col = column(query.range_field)
        lo, hi = index_key(query.range_from), index_key(query.range_to)
        if lo is not None:
            where.append(f"{col} >= {mark}")
            params.append(lo)
        if hi is not None:
            where.append(f"{col} <= {mark}")
            params.append(hi)
    sql_where = f" WHERE {' AND '.join(where)}" if where else ""
    if spec.order_by:
        d = " DESC" if spec.descending else ""
        col = column(spec.order_by)
        order = f" ORDER BY {col} IS NULL, {col}{d}, key{d}"
    else:
        order = " ORDER BY key"
    page = f"SELECT {doc} FROM {sql_name}{sql_where}{order} LIMIT {mark} OFFSET {mark}"
    count = f"SELECT count(*) FROM {sql_name}{sql_where}"
    return page, count, params


__all__ = [
    "column",
    "decode_row",
    "encode_row",
    "index_statements",
    "open_read_store",
    "row_params",
    "select_page_sql",
    "spec_from_json",
    "spec_to_json",
    "sql_table_name",
    "untag",
    "where_clause",
]
