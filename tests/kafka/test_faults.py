"""Faults the distributed read side rides out: a broker outage, poison messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from kafka_helpers import (
    Deployment,
    Trading,
    assert_equal_to_in_process,
    consume_all,
    produce,
    wait_caught_up,
    wait_for,
)

from adapters.kafka.broker import NoidaBroker
from adapters.readstore.postgres import PostgresReadStore
from domain.envelope import NewEvent
from domain.events import EVENT_TYPES, Event
from streams.agents import dead_letter_counts

pytestmark = pytest.mark.postgres


@pytest.fixture
def stoppable_broker(kafka_broker: tuple[str, object]) -> Iterator[NoidaBroker]:
    """The session's embedded broker (stopped and started by the test), else a private one."""
    broker = kafka_broker[1]
    if isinstance(broker, NoidaBroker):
        yield broker
        broker.start()
        return
    try:
        NoidaBroker.binary()
    except (FileNotFoundError, ModuleNotFoundError):
        pytest.skip("the broker comes from the environment and noida-db is not installed")
    own = NoidaBroker()
    own.start()
    try:
        yield own
    finally:
        own.close()


def test_commands_accepted_while_the_broker_is_down_reach_the_read_models(
    stoppable_broker: NoidaBroker, deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.bootstrap = stoppable_broker.bootstrap
    import asyncio

    from adapters.kafka.topics import ensure_topics

    asyncio.run(ensure_topics(deployment.settings()))
    relay = deployment.relay()
    deployment.worker("w1")
    head = trading.run(100)
    wait_caught_up(deployment, read_store, head)

    stoppable_broker.stop()
    during = trading.run(150)  # the command side does not need the broker
    assert during > head
    wait_for(lambda: "relay.publish_failed" in relay.text(), 30, "the relay to notice", deployment.diagnostics)
    time.sleep(2.0)
    stoppable_broker.start()

    trading.run_in_background(100)
    head = trading.join()
    wait_caught_up(deployment, read_store, head, timeout=90)
    assert_equal_to_in_process(read_store, trading.store)
    assert "relay.recovered" in relay.text()


@dataclass(frozen=True, kw_only=True, slots=True)
class GadgetCalibrated(Event):
    """An event type only this test process knows: to the worker it is an unknown type."""

    gadget_id: str
    at: datetime


def test_poison_messages_go_to_the_dlq_and_the_next_good_event_is_processed(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.relay()
    deployment.worker("w1")
    head = trading.run(100)
    wait_caught_up(deployment, read_store, head)

    # A message nobody can place in the log order (no headers, not JSON)...
    produce(deployment.bootstrap, deployment.topics.events, [(b"account-x", b"\x00garbage", [])])
    # ...and an event of a type the worker does not know, stored and relayed like any other.
    trading.store.append("gadget-1", [NewEvent(event=GadgetCalibrated(gadget_id="g1", at=trading.clock.now()))], 0)
    try:
        head = trading.run(60)  # the next good events
        wait_caught_up(deployment, read_store, head)
        assert_equal_to_in_process(read_store, trading.store)
        dead = consume_all(deployment.bootstrap, deployment.topics.dlq)
        reasons = sorted(dict(m.headers)["dlq.reason"].decode() for m in dead)
        assert len(dead) == 2, reasons
        assert reasons[0].startswith("cannot place the message"), reasons
        assert reasons[1].startswith("unknown event type"), reasons
        unknown = next(m for m in dead if dict(m.headers)["dlq.reason"].startswith(b"unknown"))
        assert dict(unknown.headers)["type"] == b"GadgetCalibrated"
        assert dict(unknown.headers)["dlq.source.topic"] == deployment.topics.events.encode()
        assert dead_letter_counts(deployment.read_store_url) == {"*": 2}
    finally:
        EVENT_TYPES._types.pop("GadgetCalibrated", None)
