"""Commands -> relay -> Kafka -> faust workers -> PostgreSQL, against the real broker.

Every test drives the random trading session of ``tests/readside/workload.py`` through the
real ``CommandBus`` into a PostgreSQL event store, runs ``tradecore relay`` and
``tradecore worker`` as processes, and compares every row of every read model with what
the in-process runner builds from the same log.
"""

from __future__ import annotations

import time
import zlib
from datetime import timedelta
from decimal import Decimal

import pytest
from kafka_helpers import (
    Deployment,
    Trading,
    assert_equal_to_in_process,
    consume_all,
    in_process,
    produce,
    wait_caught_up,
    wait_for,
)

from adapters.kafka.topics import decode_event, decode_update, encode_event, encode_tick
from adapters.readstore.postgres import PostgresReadStore
from projections.portfolio import ASSETS, PRICES
from projections.registry import ALL_PROJECTIONS, get
from projections.store import MemoryTables
from streams.rebuild import rebuild

pytestmark = pytest.mark.postgres


def test_commands_reach_postgres_read_models_equal_to_the_in_process_runner(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    trading.run(150)  # a backlog before anything runs
    deployment.relay()
    deployment.worker("w1")
    trading.run_in_background(250)
    head = trading.join()
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)

    updates = [decode_update(m.value) for m in consume_all(deployment.bootstrap, deployment.topics.updates)]
    assert {u["projection"] for u in updates} == {p.name for p in ALL_PROJECTIONS}
    last = {u["projection"]: u["position"] for u in sorted(updates, key=lambda u: u["position"])}
    assert max(last.values()) <= head
    portfolio_keys = {k for u in updates if u["projection"] == "portfolio"
                      for k in u["tables"].get("portfolio_accounts", {}).get("keys", [])}
    assert portfolio_keys == set(trading.session.accounts)


def test_two_workers_share_the_projections_and_one_takes_over_when_the_other_stops(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.relay()
    w1 = deployment.worker("w1")
    w2 = deployment.worker("w2")
    trading.run_in_background(500, pause=0.004)
    wait_for(lambda: "lane_acquired" in w2.text() and "lane_acquired" in w1.text(), 30,
             "both workers to own lanes", deployment.diagnostics)
    wait_for(lambda: trading.done > 150, 60, "some trading")
    assert w2.stop() == 0  # a clean stop hands its projections over
    head = trading.join()
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)
    log1, log2 = w1.text(), w2.text()
    assert log2.count("lane_acquired") >= 1
    assert log1.count("lane_acquired") - log1.count("lane_released") == len(ALL_PROJECTIONS)


def test_worker_killed_mid_stream_and_restarted_equals_a_replay(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.relay()
    w1 = deployment.worker("w1")
    trading.run_in_background(500, pause=0.003)
    wait_for(lambda: any(c.position > 0 for c in read_store.copies()), 30, "a first commit", deployment.diagnostics)
    wait_for(lambda: trading.done > 200, 60, "more trading")
    w1.kill()
    time.sleep(0.5)
    w2 = deployment.worker("w2")  # a second, idle worker takes the lanes at once (no session timeout)
    wait_for(lambda: "lane_acquired" in w2.text(), 30, "the lanes to move", deployment.diagnostics)
    w2.kill()
    deployment.worker("w1")  # and the killed one comes back
    head = trading.join()
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)


def test_relay_killed_and_restarted_loses_and_doubles_nothing(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    relay = deployment.relay()
    deployment.worker("w1")
    trading.run_in_background(500, pause=0.003)
    for _ in range(2):
        wait_for(lambda r=relay: "relay.start" in r.text(), 20, "the relay to start", deployment.diagnostics)
        time.sleep(1.0)
        relay.kill()
        time.sleep(0.3)
        relay = deployment.relay()
    head = trading.join()
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)
    positions = [int(dict(m.headers)["position"]) for m in consume_all(deployment.bootstrap, deployment.topics.events)]
    assert set(positions) == set(range(1, head + 1))  # no gap (duplicates are allowed, and harmless)


def test_a_projection_rebuilt_from_the_store_continues_from_kafka(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.relay()
    deployment.worker("w1")
    head = trading.run(200)
    wait_caught_up(deployment, read_store, head)
    # Rebuilt while the worker runs, at a position BEHIND what it has applied: the worker
    # must notice the swap, go back to the rebuilt checkpoint and re-read from Kafka.
    rebuild(trading.store, read_store, [get("portfolio"), get("performance")], to_position=head // 2)
    trading.run_in_background(200)
    head = trading.join()
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)
    # Rebuilt while no worker runs, at the head: the next worker goes on from there.
    deployment.stop_all()
    trading.run(100)
    rebuild(trading.store, read_store, [get("risk"), get("bots")])
    deployment.relay()
    deployment.worker("w1")
    head = trading.run(100)
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)


def test_market_data_marks_portfolios_to_market(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    deployment.relay()
    deployment.worker("w1")
    head = trading.run(200)
    wait_caught_up(deployment, read_store, head)
    assets = read_store.load_model("portfolio").find(ASSETS)
    symbol = next(row["symbol"] for _, row in assets)
    price = Decimal("12345.6789")
    ts = trading.clock.now() + timedelta(minutes=5)

    def marked() -> bool:
        produce(deployment.bootstrap, deployment.topics.market_data, [(*encode_tick(symbol, price, ts), [])])
        row = read_store.get(PRICES, symbol)
        return row is not None and row["source"] == "mark" and row["price"] == price

    # The worker's market-data consumer starts at the end of the topic: tick until it sees one.
    wait_for(marked, 30, f"a mark of {symbol}", deployment.diagnostics, interval=0.5)
    wait_for(lambda: all(r["current_price"] == price for _, r in read_store.load_model("portfolio").find(
        ASSETS, symbol=symbol)), 10, "the positions revalued")


def test_partitions_read_in_any_order_still_feed_the_projections_in_log_order(
    deployment: Deployment, trading: Trading, read_store: PostgresReadStore
) -> None:
    head = trading.run(400)
    log = trading.store.read_all(0, head)
    parts = deployment.settings().events_partitions

    def partition(key: bytes | None) -> int:
        return zlib.crc32(key or b"") % parts

    # Each partition in log order, but whole partitions one after the other, the last
    # first: across partitions, many events now come before events that precede them.
    messages: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
    prev = 0
    for rec in log:
        key, value, headers = encode_event(rec, prev)
        messages.setdefault(partition(key), []).append((key, value, headers))
        prev = rec.position
    produce(deployment.bootstrap, deployment.topics.events,
            [m for p in sorted(messages, reverse=True) for m in messages[p]], partition)

    # Applied in that order, the bot/strategy attribution and the acknowledgements
    # between streams would come out differently from the log order:
    naive = {}
    for p in ALL_PROJECTIONS:
        proj = p()
        model = MemoryTables(proj.tables)
        for part in sorted(messages, reverse=True):
            for _, value, _ in messages[part]:
                rec = decode_event(value)
                if rec.type in proj.handles:
                    proj.apply(model, rec)
        naive[p.name] = model.tables()
    expected = in_process(trading.store)
    assert any(naive[n] != expected[n] for n in naive), "this session should depend on the order across streams"

    deployment.worker("w1")
    wait_caught_up(deployment, read_store, head)
    assert_equal_to_in_process(read_store, trading.store)
