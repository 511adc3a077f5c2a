"""The faust-streaming worker (``tradecore worker``): Kafka -> projections -> PostgreSQL.

``create_app`` builds (never at import) a faust app with:

- one agent per projection, ``lane-<name>``, reading that lane's channel: each item is a
  batch (the events of one fetch of the ordered feed, or a batch of marks) applied to the
  SAME projection code the in-process runner uses, rows + checkpoint in one read-store
  transaction (``streams.agents.Lane``);
- the ``market-data`` agent on ``tradecore.market-data``: every worker reads every tick
  (the app id, hence the consumer group, is unique per worker process), in batches
  (``stream.take_events``), and hands them to the lanes it owns that mark to market
  (portfolio, risk);
- a service that leases lanes (PostgreSQL advisory locks, re-checked every
  ``worker_lease_interval``) and runs the ordered feed that restores the log's global
  order from the partitions of ``tradecore.events`` and fills the lane channels.

Why the feed and the leases are not faust's consumer group: see ``streams.agents``
(projections must see the global order, which no partition-by-partition consumer
provides). faust's own exactly-once is not used: the read-store checkpoint is the truth.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import structlog

from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import TopicNames, decode_market_data, ensure_topics
from adapters.settings import Settings
from projections.base import Projection
from projections.store import ReadStore
from streams.agents import DeadLetter, FeedBatch, Lane, Mark, MarkBatch, ReadSideWorker, install_fetch_wait_floor

log = structlog.get_logger(__name__)


class FaustPublisher:
    """Sends through the faust app's producer."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        await self._app.producer.send_and_wait(topic, key, value, None, None, headers or None)


def create_app(
    settings: Settings,
    kafka: KafkaSettings,
    *,
    projections: list[type[Projection]] | None = None,
    read_store: ReadStore | None = None,
) -> tuple[Any, ReadSideWorker]:
    """The faust app of one worker process, and the read-side worker it drives."""
    import faust
    import mode

    from projections.registry import ALL_PROJECTIONS

    install_fetch_wait_floor(kafka.fetch_wait_floor_ms)
    names = TopicNames.of(kafka)
    # faust wants a data directory even without tables: one per worker id, reused by restarts.
    datadir = Path(tempfile.gettempdir()) / "tradecore-faust" / re.sub(r"[^A-Za-z0-9_.-]", "_", kafka.worker_id)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        # One consumer group per worker process: every worker must see every tick.
        f"tradecore-worker-{kafka.worker_id}-{uuid.uuid4().hex[:8]}",
        broker=[f"kafka://{s}" for s in kafka.servers()],
        broker_client_id=f"{kafka.client_id}-worker",
        web_enabled=False,
        autodiscover=False,
        datadir=str(datadir),
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="latest",
        producer_acks=-1,
        producer_linger=0.0,
        stream_wait_empty=False,
        broker_commit_every=1000,
        broker_commit_interval=5.0,
    )
    worker = ReadSideWorker(
        settings.read_store_url, kafka, projections or list(ALL_PROJECTIONS), FaustPublisher(app),
        read_store=read_store,
    )

    channels: dict[str, Any] = {}
    for p in projections or list(ALL_PROJECTIONS):
        # Small: a lane that falls behind soon stops the feed, whose next fetches (and so
        # the next batches) then grow, instead of queueing many small batches.
        channel = app.channel(maxsize=8)
        channels[p.name] = channel

        def lane_agent(name: str) -> Any:
            async def agent(stream: Any) -> None:
                # No stream.take(): its timer wakes every ``within`` even when idle. The feed
                # hands over one batch per fetch, so batches grow with the load by themselves.
                async for item in stream:
                    await worker.process(name, [item])

            agent.__name__ = f"lane_{name}"
            return agent

        app.agent(channel, name=f"lane-{p.name}", concurrency=1)(lane_agent(p.name))

    async def deliver(lane: Lane, item: FeedBatch | MarkBatch) -> None:
        await channels[lane.name].send(value=item)

    worker.deliver = deliver

    market_data = app.topic(names.market_data, key_serializer="raw", value_serializer="raw")

    async def market_data_agent(stream: Any) -> None:
        async for events in stream.take_events(kafka.market_data_batch, within=kafka.market_data_within):
            marks: list[Mark] = []
            for event in events:
                msg = event.message
                try:
                    tick = decode_market_data(event.value)
                except Exception as exc:
                    await worker.dead_letter(DeadLetter(
                        names.market_data, msg.partition, msg.offset, msg.key, msg.value, list(msg.headers or ()),
                        f"undecodable market data: {type(exc).__name__}: {exc}",
                    ))
                    continue
                marks.append(Mark(tick.symbol, tick.price, tick.ts))
            if marks:
                await worker.mark(marks)

    app.agent(market_data, name="market-data")(market_data_agent)

    class ReadSide(mode.Service):
        """Leases lanes and runs the ordered feed for as long as the worker runs."""

        async def on_start(self) -> None:
            await worker.start()

        async def on_stop(self) -> None:
            await worker.stop()

        @mode.Service.timer(kafka.worker_lease_interval)
        async def _rebalance(self) -> None:
            await worker.rebalance()

    app.service(ReadSide)
    return app, worker


def run_worker(settings: Settings, kafka: KafkaSettings, *, loglevel: str = "info") -> None:
    """Create the topics if asked, then run a faust worker until SIGINT/SIGTERM."""
    import asyncio
    import logging
    import time

    import faust

    # faust and mode narrate every service start and stop at INFO: keep their warnings only
    # (at DEBUG they say everything).
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in ("faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if kafka.create_topics:
        # The broker may still be starting (compose, rolling restarts): retry for a while.
        for attempt in range(30):
            try:
                asyncio.run(ensure_topics(kafka))
                break
            except Exception as exc:
                if attempt == 29:
                    raise
                log.warning("worker.topics_not_ready", error=repr(exc), attempt=attempt + 1)
                time.sleep(2.0)
    app, _ = create_app(settings, kafka)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
