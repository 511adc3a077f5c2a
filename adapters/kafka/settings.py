"""Settings of the distributed read side (relay and workers), from the environment.

Every field reads ``TRADECORE_KAFKA_<FIELD>``; the broker address also accepts
``TRADECORE_KAFKA_BOOTSTRAP`` and ``KAFKA_BOOTSTRAP_SERVERS`` (the names the test
fixture reads). The event store and read store URLs stay in ``adapters.settings.Settings``.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class KafkaSettings(BaseSettings):
    """Broker, topics, relay and worker tuning. Frozen: one per process."""

    model_config = SettingsConfigDict(env_prefix="TRADECORE_KAFKA_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "bootstrap_servers", "TRADECORE_KAFKA_BOOTSTRAP_SERVERS", "TRADECORE_KAFKA_BOOTSTRAP",
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        description="comma-separated host:port list",
    )
    client_id: str = Field(default="tradecore", description="client id prefix sent to the broker")
    topic_prefix: str = Field(default="", description="prepended to every topic name (tests, shared clusters)")
    create_topics: bool = Field(default=True, description="relay and workers create missing topics at start")
    replication_factor: int = Field(default=1, ge=1, description="of the topics created by tradecore")
    events_partitions: int = Field(default=8, ge=1, description="tradecore.events (key: stream id)")
    market_data_partitions: int = Field(default=4, ge=1, description="tradecore.market-data (key: symbol)")
    updates_partitions: int = Field(default=4, ge=1, description="tradecore.projection-updates (key: projection)")
    dlq_partitions: int = Field(default=1, ge=1, description="tradecore.events.dlq")

    relay_name: str = Field(default="default", description="relay checkpoint name (one per relayed event log)")
    relay_checkpoint_url: str | None = Field(
        default=None, description="where the relay checkpoint lives (default: the event store's database)"
    )
    relay_batch: int = Field(default=2000, ge=1, le=100_000, description="events read and published per batch")
    relay_poll_interval: float | None = Field(
        default=None, gt=0, description="event-store re-read period when not woken (default: the store's own)"
    )
    relay_checkpoint_interval: float = Field(
        default=0.2, ge=0, description="at most one checkpoint write per this many seconds while busy"
    )
    relay_linger_ms: int = Field(default=0, ge=0, description="producer linger (0: lowest latency)")
    relay_backoff_initial: float = Field(default=0.2, gt=0, description="first retry delay when the broker fails")
    relay_backoff_max: float = Field(default=10.0, gt=0, description="longest retry delay")
    relay_send_timeout: float = Field(default=30.0, gt=0, description="seconds before a batch publish is retried")

    worker_id: str = Field(default_factory=_default_worker_id, description="unique per worker process")
    worker_batch: int = Field(default=5000, ge=1, description="most events the feed reads per fetch (one batch)")
    market_data_batch: int = Field(default=1000, ge=1, description="most ticks marked per read-store transaction")
    market_data_within: float = Field(
        default=0.05, gt=0, description="seconds the market-data agent gathers ticks (faust stream.take within)"
    )
    worker_commit_idle: float = Field(
        default=1.0, ge=0, description="seconds between checkpoint-only commits for events a projection skips"
    )
    worker_lease_interval: float = Field(default=1.0, gt=0, description="seconds between lane rebalancing checks")
    worker_projections: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="projections this worker may run (default: all registered)"
    )
    fetch_wait_floor_ms: int = Field(
        default=5, ge=0,
        description="an empty fetch answered sooner than this is held until then "
        "(brokers that ignore fetch_max_wait_ms make idle consumers spin; 0 disables)",
    )

    @field_validator("worker_projections", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
