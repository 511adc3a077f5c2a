"""Distributed bots: ``tradecore bots`` trades a running bot on ticks from tradecore.market-data.

The test appends the account and bot commands to the deployment's PostgreSQL event store
(as an API replica would), starts the bot worker as a process, and publishes ticks keyed
by symbol to the market-data topic; the worker builds one-minute bars from them, records
the signal and places the order, which its paper venue fills.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from kafka_helpers import Deployment, produce, wait_for

from adapters.bootstrap import System, bootstrap
from adapters.kafka.topics import encode_tick
from adapters.settings import Settings
from commands.messages import CreateBot, Deposit, OpenAccount, StartBot
from domain.account import Account
from domain.account_events import OrderFilled
from domain.bot import Bot
from domain.bot_events import SignalGenerated

BTC = "BTC/USDT"
CLOSES = ["100", "99", "98", "97", "105", "106"]  # sma_cross 2/3 buys at bar 5, filled at bar 6's open


@pytest.fixture
def system(deployment: Deployment) -> Iterator[System]:
    s = bootstrap(Settings(environment="test", event_store_url=deployment.event_store_url, read_store_url="memory://"))
    yield s
    s.close()


def test_bot_worker_trades_a_running_bot_on_market_data_ticks(deployment: Deployment, system: System) -> None:
    bus = system.bus
    bus.handle(OpenAccount(account_id="acc-1", owner_id="u-1", user_id="u-1"))
    bus.handle(Deposit(account_id="acc-1", amount=Decimal(10000), user_id="u-1"))
    bus.handle(CreateBot(bot_id="bot-k1", owner_id="u-1", account_id="acc-1", name="kafka SMA", symbol=BTC,
                         strategy="sma_cross", parameters={"fast": 2, "slow": 3}, timeframe="1m",
                         risk_per_trade_pct=Decimal(50), user_id="u-1"))
    bus.handle(StartBot(bot_id="bot-k1", user_id="u-1"))
    worker = deployment.start("bots", "bots", "--id", "b1")

    t0 = system.clock.now().replace(second=0, microsecond=0) + timedelta(minutes=2)
    ticks = [encode_tick(BTC, Decimal(p), t0 + timedelta(minutes=i, seconds=1)) for i, p in enumerate(CLOSES)]
    # An undecodable message is skipped, and a redelivered tick changes nothing.
    messages = [(BTC.encode(), b"not json", [])] + [(k, v, []) for k, v in ticks] + [(ticks[-1][0], ticks[-1][1], [])]
    produce(deployment.bootstrap, deployment.topics.market_data, messages)

    def signals() -> list[SignalGenerated]:
        return [r.event for r in system.store.read_stream(Bot.stream_id_for("bot-k1"))
                if isinstance(r.event, SignalGenerated)]

    def fills() -> list[OrderFilled]:
        return [r.event for r in system.store.read_stream(Account.stream_id_for("acc-1"))
                if isinstance(r.event, OrderFilled)]

    wait_for(lambda: bool(fills()), 60, "the bot's order to fill", deployment.diagnostics)
    assert worker.alive()
    assert [(s.action, s.bar_time) for s in signals()] == [("buy", t0 + timedelta(minutes=4))]
    (fill,) = fills()
    assert fill.price == Decimal("106")
    acc = bus.repo.load_from_store(Account, "acc-1")
    pos = acc.s.positions[BTC]
    assert pos.bot_id == "bot-k1" and pos.quantity == fill.quantity
    assert "bots.runner_started" in worker.text()
    assert worker.stop() == 0  # SIGTERM: the runners and the venue stop, then the process exits
    assert "bots.supervisor_stopped" in worker.text()
