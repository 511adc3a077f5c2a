"""Distributed mode: the Kafka change notices feed the WebSocket hub and the portfolio cache.

With ``run_projections`` off the workers build the read models and nothing in this process
sees their commits. ``follow_updates`` (default: on exactly then) starts an
``adapters.kafka.updates.UpdatesFollower`` in the app's lifespan; ``ApiUpdates`` turns what
it reads into what the in-process runner's listeners would have heard:

- a notice's listed keys go to ``Hub.on_change`` and ``PortfolioCache.on_change``, the very
  listeners the runner calls;
- a table whose keys were left out (``truncated``) cannot be routed row by row: the hub
  sends every connection of a channel that shows that table a fresh snapshot (one read
  per caller and view; such notices are rare, they come from commits of 500+ rows), and a
  truncated portfolio table clears the cache;
- (re)connecting starts at the end of the topic, so notices published while nothing was
  followed are never read: the cache is emptied and every connection gets a fresh
  snapshot; while the follower is not connected the cache is suspended (reads go to the
  read store), since nothing would tell it about changes.
"""

from __future__ import annotations

import importlib.util

import structlog

from adapters.kafka.settings import KafkaSettings
from adapters.kafka.updates import UpdatesFollower
from api.context import PortfolioCache
from api.settings import ApiSettings
from api.ws import Hub, channels_for

log = structlog.get_logger(__name__)


class ApiUpdates:
    """The follower's listener: the hub and the cache (when there is one)."""

    def __init__(self, hub: Hub, cache: PortfolioCache | None) -> None:
        self.hub = hub
        self.cache = cache

    def on_change(self, projection: str, changed: dict[str, set[str]]) -> None:
        if self.cache is not None:
            self.cache.on_change(projection, changed)
        self.hub.on_change(projection, changed)

    def on_truncated(self, projection: str, tables: frozenset[str]) -> None:
        if self.cache is not None and projection == "portfolio":
            self.cache.invalidate(None)
        self.hub.refresh(channels_for(projection, tables))

    def on_resync(self) -> None:
        if self.cache is not None:
            self.cache.resume()
        self.hub.refresh(None)

    def on_lost(self) -> None:
        if self.cache is not None:
            self.cache.suspend()


def should_follow(api: ApiSettings) -> bool:
    """Whether this app follows the change notices (False without aiokafka, unless asked explicitly)."""
    if not api.following_updates:
        return False
    if importlib.util.find_spec("aiokafka") is None:
        if api.follow_updates:
            raise RuntimeError("TRADECORE_FOLLOW_UPDATES=true needs aiokafka (install the 'kafka' extra)")
        log.warning("updates.unavailable", reason="aiokafka is not installed: no WebSocket pushes and no portfolio "
                    "cache; install the 'kafka' extra, or set TRADECORE_FOLLOW_UPDATES=false to silence this")
        return False
    return True


def build_follower(kafka: KafkaSettings | None, hub: Hub, cache: PortfolioCache | None) -> UpdatesFollower:
    """The follower feeding ``hub`` and ``cache`` (Kafka settings from the environment unless given)."""
    return UpdatesFollower(kafka or KafkaSettings(), ApiUpdates(hub, cache))
