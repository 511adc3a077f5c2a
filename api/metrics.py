"""Prometheus metrics of one app: requests, commands, events appended, projection lag.

Each app has its own registry (several apps can live in one test process). The lag of
each projection is computed when scraped: last global position of the event store
minus the checkpoint of the projection's active copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from commands.ports import EventStore
from domain.envelope import RecordedEvent
from projections.store import ReadStore

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ProjectionLag(Collector):
    def __init__(self, store: Callable[[], EventStore | None], read_store: Callable[[], ReadStore | None]) -> None:
        self._store = store
        self._read_store = read_store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("tradecore_projection_lag_events", "Events not yet applied", labels=["projection"])
        pos = GaugeMetricFamily("tradecore_projection_position", "Checkpoint of the active copy", labels=["projection"])
        head = GaugeMetricFamily("tradecore_event_store_position", "Last global position of the event store")
        store, rs = self._store(), self._read_store()
        if store is not None and rs is not None:
            try:
                last = store.last_position()
                head.add_metric([], last)
                for info in rs.copies():
                    if info.active:
                        lag.add_metric([info.name], max(last - info.position, 0))
                        pos.add_metric([info.name], info.position)
            except Exception:  # a scrape must not fail because a store is down; health says so
                pass
        yield lag
        yield pos
        yield head


class ApiMetrics:
    """The metrics of one app and the ``/metrics`` exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tradecore_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "tradecore_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.commands = Counter(
            "tradecore_commands", "Commands sent by the API", ["command", "outcome"], registry=self.registry
        )
        self.command_latency = Histogram(
            "tradecore_command_duration_seconds", "Command latency", ["command"], buckets=_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "tradecore_events_appended", "Events appended by this process", ["type"], registry=self.registry
        )
        self.websockets = Gauge(
            "tradecore_websocket_connections", "Open WebSocket connections", ["channel"], registry=self.registry
        )
        self._store: EventStore | None = None
        self._read_store: ReadStore | None = None
        self.registry.register(_ProjectionLag(lambda: self._store, lambda: self._read_store))

    def watch(self, store: EventStore, read_store: ReadStore | None) -> None:
        self._store = store
        self._read_store = read_store

    def on_committed(self, recorded: list[RecordedEvent]) -> None:
        for rec in recorded:
            self.events.labels(rec.type).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
