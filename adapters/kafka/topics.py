"""The Kafka topics of tradecore, how they are created, and what their messages look like.

Topics (each name can carry ``KafkaSettings.topic_prefix``):

- ``tradecore.events``: every stored event, in global order per partition, keyed by stream
  id (a stream's events stay in order in one partition). Value: the envelope
  (``RecordedEvent.to_dict()``) as JSON. Headers: ``position`` (global position),
  ``prev`` (position of the event before it in the log), ``version`` (stream version),
  ``type``, ``stream``. ``prev`` lets a consumer restore the global order across
  partitions without assuming positions are dense.
- ``tradecore.events.dlq``: messages a worker could not use (undecodable, unknown event
  type, a projection error), with the original key, value and headers plus ``dlq.*``
  headers: reason, source topic/partition/offset, projection, worker, time.
- ``tradecore.projection-updates``: one small JSON change notice per read-store commit,
  keyed by projection name (for WebSocket pushes).
- ``tradecore.market-data``: ticks or bars as JSON, keyed by symbol.

Topics are created explicitly, with fixed partition counts: an auto-created topic gets the
broker's default count, which changes the key -> partition mapping. Creation is idempotent:
existing topics are kept (a different partition count is logged, never "fixed").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import structlog

from adapters.kafka.settings import KafkaSettings
from domain.envelope import RecordedEvent

log = structlog.get_logger(__name__)

EVENTS = "tradecore.events"
DLQ = "tradecore.events.dlq"
PROJECTION_UPDATES = "tradecore.projection-updates"
MARKET_DATA = "tradecore.market-data"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TopicNames:
    events: str
    dlq: str
    updates: str
    market_data: str

    @classmethod
    def of(cls, settings: KafkaSettings) -> TopicNames:
        p = settings.topic_prefix
        return cls(events=p + EVENTS, dlq=p + DLQ, updates=p + PROJECTION_UPDATES, market_data=p + MARKET_DATA)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: tuple[tuple[str, str], ...] = ()


def topic_specs(settings: KafkaSettings) -> list[TopicSpec]:
    """Every topic tradecore uses, with its partition count."""
    n = TopicNames.of(settings)
    rf = settings.replication_factor
    return [
        TopicSpec(n.events, settings.events_partitions, rf),
        TopicSpec(n.dlq, settings.dlq_partitions, rf),
        TopicSpec(n.updates, settings.updates_partitions, rf),
        TopicSpec(n.market_data, settings.market_data_partitions, rf),
    ]


async def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec] | None = None,
                        *, timeout: float = 30.0) -> dict[str, int]:
    """Create the missing topics; returns every topic's partition count as the broker has it."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    wanted = list(topic_specs(settings) if specs is None else specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.servers(), client_id=f"{settings.client_id}-admin",
                                request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        if missing:
            try:
                result = await admin.create_topics(
                    [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config))
                     for s in missing],
                    timeout_ms=int(timeout * 1000),
                )
                for name, code, *_ in getattr(result, "topic_errors", ()) or ():
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise RuntimeError(f"creating topic {name} failed with error code {code}")
            except TopicAlreadyExistsError:
                pass  # another process created it first
            log.info("kafka.topics_created", topics={s.name: s.partitions for s in missing})
        counts: dict[str, int] = {}
        for meta in await admin.describe_topics([s.name for s in wanted]):
            counts[meta["topic"]] = len(meta["partitions"])
        for s in wanted:
            have = counts.get(s.name)
            if have is None or have == 0:
                raise RuntimeError(f"topic {s.name} does not exist after creating it")
            if have != s.partitions:
                log.warning("kafka.topic_partitions_differ", topic=s.name, expected=s.partitions, actual=have)
        return counts
    finally:
        await admin.close()


# --- tradecore.events ----------------------------------------------------------------------


def event_headers(rec: RecordedEvent, prev: int) -> Headers:
    return [
        ("position", str(rec.position).encode()),
        ("prev", str(prev).encode()),
        ("version", str(rec.version).encode()),
        ("type", rec.type.encode()),
        ("stream", rec.stream_id.encode()),
    ]


def encode_event(rec: RecordedEvent, prev: int) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of the message carrying ``rec``; ``prev`` is the position before it."""
    return rec.stream_id.encode(), orjson.dumps(rec.to_dict()), event_headers(rec, prev)


def decode_event(value: bytes) -> RecordedEvent:
    """The envelope a message carries (``ValueError``/``KeyError``/``TypeError`` when it is not one)."""
    d = orjson.loads(value)
    meta = dict(d["metadata"])
    ts = datetime.fromisoformat(meta.pop("ts_recorded"))
    if ts.tzinfo is None:
        raise ValueError("ts_recorded has no time zone")
    return RecordedEvent(
        event_id=str(d["event_id"]), stream_id=str(d["stream_id"]), version=int(d["version"]),
        position=int(d["position"]), type=str(d["type"]), schema_version=int(d["schema_version"]),
        data=dict(d["data"]), metadata=meta, ts_recorded=ts,
    )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an event message sits in the global order (from its headers)."""

    position: int
    prev: int


def placement(headers: Sequence[tuple[str, bytes]] | None) -> Placement:
    """The ``position`` and ``prev`` headers (``prev`` defaults to position - 1)."""
    position = prev = None
    for k, v in headers or ():
        if k == "position":
            position = int(v)
        elif k == "prev":
            prev = int(v)
    if position is None or position <= 0:
        raise ValueError("no position header")
    if prev is None:
        prev = position - 1
    if prev >= position or prev < 0:
        raise ValueError(f"prev {prev} is not before position {position}")
    return Placement(position, prev)


# --- tradecore.market-data -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str
    price: Decimal
    ts: datetime


def encode_tick(symbol: str, price: Decimal, ts: datetime) -> tuple[bytes, bytes]:
    """(key, value) of a tick: ``{"symbol", "price", "ts"}``."""
    return symbol.encode(), orjson.dumps({"symbol": symbol, "price": str(price), "ts": ts.isoformat()})


def decode_market_data(value: bytes) -> Tick:
    """A tick (``price``) or a bar (``close``; ``ts`` or else ``time``) as the price to mark at."""
    d = orjson.loads(value)
    if not isinstance(d, dict):
        raise ValueError("market data must be a JSON object")
    symbol = d["symbol"]
    raw = d.get("price", d.get("close"))
    if not isinstance(symbol, str) or not symbol or raw is None:
        raise ValueError("market data needs a symbol and a price (or close)")
    price = Decimal(str(raw))
    if not price.is_finite() or price <= 0:
        raise ValueError(f"price must be positive: {raw!r}")
    when = d.get("ts") or d.get("time")
    if isinstance(when, int | float):
        ts = datetime.fromtimestamp(when / 1000 if when > 1e11 else when, UTC)
    else:
        ts = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
    return Tick(symbol=symbol, price=price, ts=ts)


# --- tradecore.projection-updates ------------------------------------------------------------

MAX_KEYS_PER_TABLE = 500


def encode_update(projection: str, copy: int, position: int, changed: dict[str, Iterable[str]],
                  ts: datetime) -> tuple[bytes, bytes]:
    """(key, value) of a change notice; a table with too many changed keys says ``truncated``."""
    tables: dict[str, Any] = {}
    for table, keys in changed.items():
        ks = sorted(keys)
        if len(ks) > MAX_KEYS_PER_TABLE:
            tables[table] = {"count": len(ks), "keys": [], "truncated": True}
        else:
            tables[table] = {"count": len(ks), "keys": ks, "truncated": False}
    value = {"projection": projection, "copy": copy, "position": position, "tables": tables,
             "ts": ts.isoformat()}
    return projection.encode(), orjson.dumps(value)


def decode_update(value: bytes) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(value)
    return out
