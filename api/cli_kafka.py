"""``tradecore relay``, ``tradecore worker`` and ``tradecore bots``: the distributed side.

Both read ``Settings`` (event store / read store URLs) and ``KafkaSettings``
(``TRADECORE_KAFKA_*``) when they run; nothing is opened at import.
"""

from __future__ import annotations

import asyncio
import signal

import typer


def register(app: typer.Typer) -> None:
    """Add ``relay``, ``worker`` and ``bots`` to the ``tradecore`` command."""
    app.command("relay")(relay)
    app.command("worker")(worker)
    app.command("bots")(bots)


def relay() -> None:
    """Publish the event log to Kafka (tradecore.events) in global order, from the last checkpoint."""
    from adapters.kafka.relay import run_relay
    from adapters.kafka.settings import KafkaSettings
    from adapters.logging import configure_logging
    from adapters.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    kafka = KafkaSettings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_relay(settings.event_store_url, kafka, stop)

    asyncio.run(main())


def worker(
    worker_id: str | None = typer.Option(None, "--id", help="unique worker id (default TRADECORE_KAFKA_WORKER_ID)"),
) -> None:
    """Run a faust worker: Kafka events -> the projections -> the PostgreSQL read store."""
    from adapters.kafka.settings import KafkaSettings
    from adapters.logging import configure_logging
    from adapters.settings import Settings
    from streams.faust_app import run_worker

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    kafka = KafkaSettings() if worker_id is None else KafkaSettings(worker_id=worker_id)
    run_worker(settings, kafka, loglevel=settings.log_level.lower())


def bots(
    worker_id: str | None = typer.Option(None, "--id", help="unique worker id (default TRADECORE_KAFKA_WORKER_ID)"),
) -> None:
    """Run the live bots: ticks from Kafka (tradecore.market-data) -> bars -> signals and orders.

    Run the API with TRADECORE_RUN_BOTS=false beside it (else the API's own supervisor
    trades the same bots too; their order keys keep that from doubling orders, not work).
    """
    from adapters.kafka.settings import KafkaSettings
    from adapters.logging import configure_logging
    from adapters.settings import Settings
    from streams.bot_worker import run_bot_worker

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    kafka = KafkaSettings() if worker_id is None else KafkaSettings(worker_id=worker_id)
    run_bot_worker(settings, kafka, loglevel=settings.log_level.lower())
