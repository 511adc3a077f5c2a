"""Following ``tradecore.projection-updates``: the change notices the read-side workers publish.

In distributed mode the API does not run the projections; the workers commit the read
models and then publish one notice per commit (``topics.encode_update``). An API process
follows them to learn what changed, so it can push WebSocket updates and drop cached
reads. Every API process must see every notice, so there is no consumer group: one
consumer, every partition assigned manually, read from the end (``auto_offset_reset=
"latest"``); nothing is committed.

Start-up and recovery are one code path: connect, assign every partition, seek to the end
and wait until each position is known, then tell the listener ``on_resync`` (anything may
have changed while nothing was followed: notices published before this point are not
read), then hand it each notice. Any failure (cannot bootstrap, topic missing, a fetch
error, no fetch answered for ``stale_after`` seconds, the partition count changed) calls
``on_lost``, drops the consumer, waits with exponential backoff and jitter (up to
``backoff_max``), logs the attempt, and starts again from the end. A shorter silence
(``stall_after``: aiokafka retries by itself, and a worker may give up publishing a notice
meanwhile) calls ``on_lost`` at once and ``on_resync`` when fetches are answered again.

A notice lists the changed keys of each table, except a table with more than
``topics.MAX_KEYS_PER_TABLE`` changed keys: that one says ``truncated`` and carries no keys,
and the listener hears ``on_truncated(projection, tables)``, never silence. A message that
is not a notice at all cannot say what changed either: it causes ``on_resync``.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from adapters.kafka.clients import stop_client
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import TopicNames, decode_update

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Notice:
    """One read-store commit of one projection, as the worker announced it."""

    projection: str
    copy: int
    position: int
    changed: dict[str, set[str]]
    """Tables whose changed keys are listed."""
    truncated: frozenset[str]
    """Tables that changed too many rows to list (their keys are unknown)."""
    ts: datetime | None


def parse_notice(value: bytes | None) -> Notice:
    """The notice ``value`` carries; ``ValueError`` when it is not one."""
    if value is None:
        raise ValueError("empty message")
    try:
        d = decode_update(value)
        if not isinstance(d, dict) or not isinstance(d.get("projection"), str):
            raise ValueError("no projection")
        tables = d.get("tables", {})
        if not isinstance(tables, Mapping):
            raise ValueError("tables is not an object")
        changed: dict[str, set[str]] = {}
        truncated: set[str] = set()
        for table, entry in tables.items():
            if entry.get("truncated"):
                truncated.add(str(table))
            else:
                keys = {str(k) for k in entry.get("keys") or ()}
                if keys:
                    changed[str(table)] = keys
        ts = datetime.fromisoformat(d["ts"]) if d.get("ts") else None
        return Notice(projection=d["projection"], copy=int(d.get("copy") or 0), position=int(d.get("position") or 0),
                      changed=changed, truncated=frozenset(truncated), ts=ts)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a change notice: {exc!r}") from exc


class UpdateListener(Protocol):
    """What the follower tells; called on the event loop, so each must return quickly."""

    def on_change(self, projection: str, changed: dict[str, set[str]]) -> None:
        """Rows with these keys changed (the projection runner's listener signature)."""

    def on_truncated(self, projection: str, tables: frozenset[str]) -> None:
        """Rows of these tables changed, which ones is not known."""

    def on_resync(self) -> None:
        """Following (again) from now on; anything may have changed before."""

    def on_lost(self) -> None:
        """Not following any more: changes go unseen until the next ``on_resync``."""


class _Reconnect(Exception):
    """The consumer must be replaced (stalled, partitions changed)."""


class UpdatesFollower:
    """Reads every change notice from the end of the topic and hands it to ``listener``."""

    def __init__(
        self,
        settings: KafkaSettings,
        listener: UpdateListener,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        stall_after: float = 3.0,
        stale_after: float = 10.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topic = TopicNames.of(settings).updates
        self.listener = listener
        self.client_id = f"{settings.client_id}-api-updates-{socket.gethostname()}-{os.getpid()}"
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stall_after = stall_after
        self._stale_after = stale_after
        self._request_timeout_ms = int(request_timeout * 1000)
        self.state = "starting"
        self.connected_since: datetime | None = None
        self.last_notice_at: datetime | None = None
        self.last_notice_delay: float | None = None
        self.last_error: str | None = None
        self.lag: int | None = None
        self.positions: dict[str, int] = {}
        self.counts = {"notices": 0, "truncated": 0, "malformed": 0, "resyncs": 0, "failures": 0,
                       "listener_errors": 0}

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def status(self) -> dict[str, Any]:
        """What ``/api/health/detailed`` shows."""
        return {
            "topic": self.topic, "state": self.state, "connected": self.connected,
            "connected_since": self.connected_since, "last_notice_at": self.last_notice_at,
            "last_notice_delay": self.last_notice_delay, "lag": self.lag, "last_error": self.last_error,
            "positions": dict(self.positions), **self.counts,
        }

    async def run(self) -> None:
        """Follow until cancelled, reconnecting with backoff."""
        backoff = self._backoff_initial
        try:
            while True:
                try:
                    await self._follow()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counts["failures"] += 1
                    self.last_error = repr(exc)
                    was_following = self.state in ("connected", "stalled")
                    if was_following:
                        backoff = self._backoff_initial  # it worked until now: retry soon
                    self.state = "reconnecting"
                    delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
                    log.warning("updates.disconnected" if was_following else "updates.connect_failed",
                                topic=self.topic, error=repr(exc), retry_in=round(delay, 3),
                                failures=self.counts["failures"])
                    await asyncio.sleep(delay)
                    backoff = min(backoff * 2, self._backoff_max)
        finally:
            self.state = "stopped"

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.servers(), client_id=self.client_id, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", request_timeout_ms=self._request_timeout_ms,
            metadata_max_age_ms=30_000, retry_backoff_ms=500,  # fewer retries (and error lines) while it is down
        )
        following = False
        try:
            await consumer.start()
            parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                await consumer.topics()  # refreshes the metadata
                parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                raise RuntimeError(f"topic {self.topic} does not exist (yet)")
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            offsets = {tp.partition: await consumer.position(tp) for tp in tps}
            # From here on every notice is read: what came before is covered by a resync.
            following = True
            self.state = "connected"
            self.connected_since = datetime.now(UTC)
            self.last_error = None
            self.counts["resyncs"] += 1
            self._tell("on_resync")
            log.info("updates.connected", topic=self.topic, partitions=len(tps), offsets=offsets)
            await self._loop(consumer, tps, set(parts))
        finally:
            if following and self.state == "connected":  # (a stalled follower has said so already)
                self._tell("on_lost")
            await stop_client(consumer)

    async def _loop(self, consumer: Any, tps: list[Any], parts: set[int]) -> None:
        connected_at = time.time()
        checked = 0.0
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for m in records:
                    self._handle(m.value)
            now = time.time()
            if now - checked < 1.0:
                continue
            checked = now
            polled = [consumer.last_poll_timestamp(tp) for tp in tps]
            last = max([p / 1000 for p in polled if p is not None], default=connected_at)
            silent = now - max(last, connected_at)
            if silent > self._stale_after:
                raise _Reconnect(f"no fetch answered for {silent:.1f}s")
            if silent > self._stall_after and self.state == "connected":
                self.state = "stalled"
                log.warning("updates.stalled", topic=self.topic, silent=round(silent, 1))
                self._tell("on_lost")
            elif silent <= self._stall_after and self.state == "stalled":
                self.state = "connected"
                self.counts["resyncs"] += 1
                log.info("updates.resumed", topic=self.topic)
                self._tell("on_resync")
            if (consumer.partitions_for_topic(self.topic) or parts) != parts:
                raise _Reconnect("the topic's partitions changed")
            lag = 0
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None:
                    lag += max(high - await consumer.position(tp), 0)
            self.lag = lag

    def _handle(self, value: bytes | None) -> None:
        try:
            notice = parse_notice(value)
        except ValueError as exc:
            self.counts["malformed"] += 1
            log.warning("updates.malformed", topic=self.topic, error=str(exc))
            self.counts["resyncs"] += 1
            self._tell("on_resync")  # it cannot say what changed: assume anything did
            return
        received = datetime.now(UTC)
        self.counts["notices"] += 1
        self.last_notice_at = received
        if notice.ts is not None:
            self.last_notice_delay = round((received - notice.ts).total_seconds(), 6)
        if notice.position > self.positions.get(notice.projection, 0):
            self.positions[notice.projection] = notice.position
        if notice.changed:
            self._tell("on_change", notice.projection, notice.changed)
        if notice.truncated:
            self.counts["truncated"] += 1
            log.info("updates.truncated", projection=notice.projection, tables=sorted(notice.truncated),
                     position=notice.position)
            self._tell("on_truncated", notice.projection, notice.truncated)

    def _tell(self, method: str, *args: Any) -> None:
        try:
            getattr(self.listener, method)(*args)
        except Exception:
            # One bad listener call must not stop the notices that follow; it is logged and counted.
            self.counts["listener_errors"] += 1
            log.exception("updates.listener_failed", method=method)
