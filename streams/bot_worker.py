"""The bot worker (``tradecore bots``): live bots fed from ``tradecore.market-data``.

Distributed mode's counterpart of the app's embedded bot supervisor. One faust agent
reads the market-data topic (ticks keyed by symbol) and hands every tick to this process's
paper venue (``PaperExecution.on_price``): the venue fills and triggers what the price
reaches, and the price book passes the tick on to the supervisor's bar builders, exactly
as the simulation endpoint does in embedded mode. The supervisor follows the event store
(``follow_store``), since the API replicas record the bots' starts and stops.

Why a shared consumer group (``<client id>-bots``, stable across restarts):

- partitions are keyed by symbol, so several bot workers split the symbols between them,
  and a bot trades in the one worker that owns its symbol's partition (the others start
  its runner too but never feed it a bar);
- committed offsets let a restarted worker resume where it stopped: ticks delivered again
  rebuild the same bars, which the runner has handled (``BotRunner.resume``) or whose
  signal and order keys are already stored, so nothing is traded twice. A group's first
  start reads the retained ticks from the beginning; bars that closed before a bot was
  started only warm its strategy up.

faust's exactly-once is not used; the event store's idempotency keys are the truth.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from adapters.bootstrap import System
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import Tick, TopicNames, decode_market_data, ensure_topics
from adapters.settings import Settings
from adapters.tasks import Supervised, spawn_thread
from streams.agents import install_fetch_wait_floor
from streams.bot_supervisor import BotSupervisor, SupervisorSettings

log = structlog.get_logger(__name__)


def group_id(kafka: KafkaSettings) -> str:
    """The bot workers' consumer group (and faust app id): one per deployment, stable."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{kafka.topic_prefix}{kafka.client_id}-bots")


def feed_ticks(system: System, ticks: list[Tick]) -> None:
    """Give ticks to the paper venue, hence the price book and the bar builders (blocking)."""
    for t in ticks:
        system.paper.on_price(t.symbol, t.price, t.ts)


def create_bot_app(system: System, supervisor: BotSupervisor, kafka: KafkaSettings) -> Any:
    """The faust app of one bot worker (built here, never at import)."""
    import faust
    import mode

    install_fetch_wait_floor(kafka.fetch_wait_floor_ms)
    names = TopicNames.of(kafka)
    app_id = group_id(kafka)
    datadir = Path(tempfile.gettempdir()) / "tradecore-faust" / f"{app_id}-{kafka.worker_id}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{s}" for s in kafka.servers()],
        broker_client_id=f"{kafka.client_id}-bots",
        web_enabled=False,
        autodiscover=False,
        datadir=str(datadir),
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_every=100,
        broker_commit_interval=1.0,
    )
    ready = asyncio.Event()
    stop = threading.Event()
    threads: list[Supervised] = []
    market_data = app.topic(names.market_data, key_serializer="raw", value_serializer="raw")

    async def market_data_agent(stream: Any) -> None:
        await ready.wait()  # the venue has recovered and the runners are up
        async for events in stream.take_events(kafka.market_data_batch, within=kafka.market_data_within):
            ticks: list[Tick] = []
            for event in events:
                try:
                    ticks.append(decode_market_data(event.value))
                except Exception as exc:
                    # The read-side workers dead-letter the same message; here it is only skipped.
                    msg = event.message
                    log.warning("bots.bad_tick", partition=msg.partition, offset=msg.offset, error=repr(exc))
            if ticks:
                await asyncio.to_thread(feed_ticks, system, ticks)

    app.agent(market_data, name="bots-market-data")(market_data_agent)

    class Bots(mode.Service):
        """The paper venue and the bot supervisor, for as long as the worker runs."""

        async def on_start(self) -> None:
            await asyncio.to_thread(system.paper.recover)
            threads.append(spawn_thread("paper-venue", system.paper.run, stop))
            await asyncio.to_thread(supervisor.start)
            ready.set()
            log.info("bots.worker_started", group=app_id, runners=supervisor.running())

        async def on_stop(self) -> None:
            stop.set()
            await asyncio.to_thread(supervisor.stop)
            for sup in threads:
                await asyncio.to_thread(sup.finished.wait, 5.0)
            log.info("bots.worker_stopped")

    app.service(Bots)
    return app


def run_bot_worker(settings: Settings, kafka: KafkaSettings, *, loglevel: str = "info") -> None:
    """Create the topics if asked, then run the bot worker until SIGINT/SIGTERM."""
    import logging
    import time

    import faust

    from adapters.bootstrap import bootstrap

    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in ("faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if kafka.create_topics:
        for attempt in range(30):  # the broker may still be starting
            try:
                asyncio.run(ensure_topics(kafka))
                break
            except Exception as exc:
                if attempt == 29:
                    raise
                log.warning("bots.topics_not_ready", error=repr(exc), attempt=attempt + 1)
                time.sleep(2.0)
    system = bootstrap(settings)
    try:
        grace = settings.bar_close_grace
        supervisor = BotSupervisor(
            system,
            SupervisorSettings(follow_store=True, close_grace=None if grace is None else timedelta(seconds=grace)),
        )
        app = create_bot_app(system, supervisor, kafka)
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
        worker.execute_from_commandline()
    finally:
        system.close()


__all__ = ["create_bot_app", "feed_ticks", "group_id", "run_bot_worker"]
