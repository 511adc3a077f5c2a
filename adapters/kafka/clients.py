"""Helpers shared by every aiokafka client tradecore runs (relay, workers, the API's follower)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def stop_client(client: Any, timeout: float = 5.0) -> None:
    """Stop an aiokafka consumer or producer; only a cancellation of the calling task gets out.

    aiokafka's fetcher awaits the fetch tasks it has just cancelled, so stopping a consumer
    while a fetch waits out its retry backoff (the broker is down) raises CancelledError
    although nobody cancelled the caller: that one must not end the caller's task (a
    supervised task that ends "cancelled" is taken as a clean stop). Other errors on the way
    out are logged and dropped: the client is being discarded anyway.
    """
    try:
        await asyncio.wait_for(client.stop(), timeout)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("kafka.stop_cancelled_inside_aiokafka", client=type(client).__name__)
    except Exception as exc:
        log.debug("kafka.stop_failed", client=type(client).__name__, error=repr(exc))
