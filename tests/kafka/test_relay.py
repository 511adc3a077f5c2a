"""The relay against an in-memory store and a producer that acknowledges slowly (no broker)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.eventstore.memory import InMemoryEventStore
from adapters.kafka.relay import MemoryRelayCheckpoints, Relay
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import decode_event, placement
from domain.clock import ManualClock
from domain.envelope import NewEvent
from domain.events import Event


@dataclass(frozen=True, kw_only=True, slots=True)
class RelayTestNoted(Event):
    n: int


class SlowAckProducer:
    """Records every message; each ``send`` is acknowledged ``ack_delay`` seconds later."""

    def __init__(self, ack_delay: float) -> None:
        self.ack_delay = ack_delay
        self.messages: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        self.sends_per_publish: list[int] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> Any:
        self.messages.append((value, headers))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.ack_delay, ack.set_result, None)
        return ack


class CountingCheckpoints(MemoryRelayCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    def save(self, name: str, position: int) -> None:
        self.saves += 1
        super().save(name, position)


class GatedCheckpoints(MemoryRelayCheckpoints):
    """``save`` blocks until ``gate`` is set (a checkpoint database that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.saving = threading.Event()

    def save(self, name: str, position: int) -> None:
        self.saving.set()
        assert self.gate.wait(10.0)
        super().save(name, position)


def settings(**kw: Any) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="127.0.0.1:1", create_topics=False, relay_poll_interval=0.05, **kw)


def append_one_by_one(store: InMemoryEventStore, count: int, pause: float) -> None:
    for n in range(count):
        store.append(f"note-{n % 7}", [NewEvent(event=RelayTestNoted(n=n))], None)
        time.sleep(pause)


async def relay_until(relay: Relay, done: Any, timeout: float = 20.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the relay did not get there in time"
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    stop.set()
    await task


def test_commits_made_while_a_publish_awaits_acks_go_out_in_order_with_one_checkpoint_per_interval() -> None:
    store = InMemoryEventStore(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    producer = SlowAckProducer(ack_delay=0.02)
    checkpoints = CountingCheckpoints()
    relay = Relay(store, checkpoints, settings(relay_checkpoint_interval=0.2), producer_factory=lambda s: producer)
    writer = threading.Thread(target=append_one_by_one, args=(store, 200, 0.002))

    async def scenario() -> None:
        writer.start()
        await relay_until(relay, lambda: not writer.is_alive() and relay.stats.position == 200)

    asyncio.run(scenario())

    positions = [placement(h) for _, h in producer.messages]
    assert [p.position for p in positions] == list(range(1, 201))  # each event once, in log order
    assert [p.prev for p in positions] == list(range(0, 200))
    assert [decode_event(v).event.n for v, _ in producer.messages] == list(range(200))  # type: ignore[attr-defined]
    # 200 commits over ~0.5 s, each publish waiting 20 ms for its acks: they leave in batches.
    assert relay.stats.batches < 100
    # The checkpoint follows at most every 0.2 s while busy, not once per batch, and is
    # current once the relay stops.
    assert checkpoints.saves <= 8
    assert checkpoints.load("default") == 200


def test_an_idle_relay_makes_its_checkpoint_current() -> None:
    store = InMemoryEventStore(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    checkpoints = CountingCheckpoints()
    relay = Relay(
        store,
        checkpoints,
        settings(relay_checkpoint_interval=60.0),
        producer_factory=lambda s: SlowAckProducer(ack_delay=0.0),
    )
    append_one_by_one(store, 3, 0.0)

    async def scenario() -> None:
        # The interval is a minute, but nothing more arrives: the idle relay saves at once.
        await relay_until(relay, lambda: checkpoints.load("default") == 3, timeout=5.0)

    asyncio.run(scenario())
    assert relay.stats.published == 3


def test_a_slow_checkpoint_save_does_not_hold_up_publishing() -> None:
    store = InMemoryEventStore(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    checkpoints = GatedCheckpoints()
    relay = Relay(
        store,
        checkpoints,
        settings(relay_checkpoint_interval=0.0),
        producer_factory=lambda s: SlowAckProducer(ack_delay=0.0),
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        append_one_by_one(store, 1, 0.0)
        while not checkpoints.saving.is_set():  # the first save has started, and hangs
            assert not task.done()
            await asyncio.sleep(0.01)
        append_one_by_one(store, 5, 0.0)
        deadline = time.monotonic() + 5.0
        while relay.stats.published < 6:
            assert time.monotonic() < deadline, "publishing waited for the checkpoint save"
            await asyncio.sleep(0.01)
        assert checkpoints.load("default") < 6
        checkpoints.gate.set()
        stop.set()
        await task

    asyncio.run(scenario())
    assert checkpoints.load("default") == 6
