"""Event store backends and ``open_event_store``, which picks one from a URL."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from commands.ports import EventStore
from domain.clock import Clock

# The same list as ``adapters.eventstore.kurrentdb.SCHEMES`` (kept here so that choosing a
# backend does not import kurrentdbclient, an optional dependency).
_KURRENTDB_SCHEMES = ("kurrentdb", "kurrentdb+discover", "esdb", "esdb+discover", "kdb", "kdb+discover")


def open_event_store(url: str, clock: Clock) -> EventStore:
    """Open the event store that ``url`` names.

    - ``memory://``: in-process, gone on exit (tests, backtests);
    - ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (SQLAlchemy style);
    - ``postgresql://user@host:port/db[?schema=name]`` (also ``postgres://`` and
      ``postgresql+psycopg://``); ``schema`` selects the PostgreSQL schema (default public),
      other query parameters go to libpq;
    - ``kurrentdb://host:2113?tls=false[&namespace=name]`` (also ``esdb://``, ``kdb://`` and
      their ``+discover`` forms): KurrentDB/EventStoreDB; ``namespace`` prefixes every stream
      name, other query parameters go to ``kurrentdbclient``. Its positions are sparse.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"event store URL needs a scheme: {url!r}")
    scheme = scheme.lower()
    if scheme == "memory":
        from adapters.eventstore.memory import InMemoryEventStore

        return InMemoryEventStore(clock)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        from adapters.eventstore.sqlite import SqliteEventStore

        return SqliteEventStore(rest[1:], clock)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from adapters.eventstore.postgres import PostgresEventStore

        parts = urlsplit("postgresql://" + rest)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), "public")
        dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
        return PostgresEventStore(dsn, clock, schema=schema)
    if scheme in _KURRENTDB_SCHEMES:
        from adapters.eventstore.kurrentdb import KurrentDBEventStore

        return KurrentDBEventStore(url, clock)
    raise ValueError(f"unknown event store scheme {scheme!r} in {url!r}")
