"""The bot supervisor on an in-memory system: who runs, restarts, resume after a crash, the timer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from bot_factories import of_type

from adapters.bootstrap import System, bootstrap
from adapters.settings import Settings
from commands.bot_runner_handlers import RecordSignal
from commands.messages import CreateBot, DeleteBot, Deposit, OpenAccount, StartBot, StopBot, UpdateBot
from domain.clock import ManualClock
from streams.bot_supervisor import BotSupervisor, SupervisorSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
M = timedelta(minutes=1)
BTC = "BTC/USDT"


@pytest.fixture
def system() -> Iterator[System]:
    s = bootstrap(Settings(environment="test", event_store_url="memory://", read_store_url="memory://"),
                  clock=ManualClock(T0))
    s.bus.handle(OpenAccount(account_id="acc", owner_id="u", user_id="u"))
    s.bus.handle(Deposit(account_id="acc", amount=Decimal(10_000), user_id="u"))
    yield s
    s.close()


@pytest.fixture
def supervisors(system: System) -> Iterator[Callable[..., BotSupervisor]]:
    made: list[BotSupervisor] = []

    def make(**kw: Any) -> BotSupervisor:
        sup = BotSupervisor(system, SupervisorSettings(poll_interval=0.05, **kw))
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop()


def bot(system: System, bot_id: str, *, start: bool = True, **parameters: Any) -> str:
    system.bus.handle(CreateBot(bot_id=bot_id, owner_id="u", account_id="acc", name=bot_id, symbol=BTC,
                                strategy="sma_cross", parameters={"fast": 2, "slow": 3, **parameters}, timeframe="1m",
                                risk_per_trade_pct=Decimal(50), user_id="u"))
    if start:
        system.bus.handle(StartBot(bot_id=bot_id, user_id="u"))
    return bot_id


def until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError("condition not met")


def runner_threads(bot_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"bot-runner-{bot_id}" and t.is_alive()]


def test_start_up_runs_exactly_the_running_bots(system: System, supervisors: Callable[..., BotSupervisor]) -> None:
    bot(system, "bot-run")
    bot(system, "bot-stopped")
    system.bus.handle(StopBot(bot_id="bot-stopped", user_id="u"))
    bot(system, "bot-idle", start=False)
    sup = supervisors()
    sup.start()
    assert sup.running() == ["bot-run"]
    system.bus.handle(StartBot(bot_id="bot-idle", user_id="u"))
    assert sup.running() == ["bot-idle", "bot-run"]
    system.bus.handle(StopBot(bot_id="bot-idle", user_id="u"))
    system.bus.handle(DeleteBot(bot_id="bot-idle", user_id="u"))
    assert sup.running() == ["bot-run"]
    sup.stop()
    assert sup.running() == [] and until(lambda: not runner_threads("bot-run"))


def test_a_changed_or_restarted_bot_gets_a_fresh_runner_and_never_two(
    system: System, supervisors: Callable[..., BotSupervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    active, most = [0], [0]
    lock = threading.Lock()
    work = BotSupervisor._work

    def counted(self: BotSupervisor, slot: Any) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.02)  # widen the window two overlapping runners would share
            work(self, slot)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(BotSupervisor, "_work", counted)
    bot(system, "bot-a")
    sup = supervisors()
    sup.start()
    first = until(lambda: sup.runner("bot-a"))
    assert first.strategy.params.fast == 2
    system.bus.handle(UpdateBot(bot_id="bot-a", changes={"parameters": {"fast": 3, "slow": 5}}, user_id="u"))
    second = until(lambda: (r := sup.runner("bot-a")) is not first and r)
    assert second.strategy.params.fast == 3
    for _ in range(5):
        system.bus.handle(StopBot(bot_id="bot-a", user_id="u"))
        system.bus.handle(StartBot(bot_id="bot-a", user_id="u"))
    until(lambda: len(runner_threads("bot-a")) == 1)
    assert sup.running() == ["bot-a"]
    assert most[0] == 1  # each successor waited for its predecessor's thread to end


def test_signal_recorded_before_a_crash_is_ordered_once_after_the_restart(
    system: System, supervisors: Callable[..., BotSupervisor]
) -> None:
    bot(system, "bot-c")
    clock = system.clock
    assert isinstance(clock, ManualClock)
    bar = T0 + 5 * M
    # The previous process recorded the signal of bar 09:05 and died before its order.
    system.bus.handle(RecordSignal(bot_id="bot-c", bar_time=bar, action="buy", confidence=Decimal("0.5"),
                                   price=Decimal(100), idempotency_key=f"bot:bot-c:{bar.isoformat()}:signal",
                                   user_id="bot:bot-c"))
    clock.set(bar + M + timedelta(seconds=30))
    sup = supervisors()
    sup.start()
    runner = until(lambda: sup.runner("bot-c"))
    assert runner.pending is not None and runner.pending.bar_time == bar
    system.paper.on_price(BTC, Decimal(101), bar + M + timedelta(seconds=1))  # bar 09:06 opens
    system.paper.on_price(BTC, Decimal(102), bar + 2 * M)  # and closes: the intent is executed
    until(lambda: of_type(system.store, "OrderFilled"))
    sup.stop()

    again = supervisors()
    again.start()
    second = until(lambda: again.runner("bot-c"))
    assert second.pending is None and second.last_bar == bar
    system.paper.on_price(BTC, Decimal(103), bar + 2 * M + timedelta(seconds=1))
    system.paper.on_price(BTC, Decimal(104), bar + 3 * M)
    until(lambda: second.stats.bars == 1)
    assert len(of_type(system.store, "OrderAccepted")) == 1


def test_timer_closes_the_bar_of_a_quiet_market(system: System, supervisors: Callable[..., BotSupervisor]) -> None:
    bot(system, "bot-t")
    sup = supervisors(close_grace=timedelta(seconds=2))
    sup.start()
    runner = until(lambda: sup.runner("bot-t"))
    system.paper.on_price(BTC, Decimal(100), T0 + 10 * M + timedelta(seconds=5))
    assert sup.close_due(T0 + 11 * M + timedelta(seconds=1)) == 0
    assert sup.close_due(T0 + 11 * M + timedelta(seconds=2)) == 1
    until(lambda: runner.stats.bars == 1)


def test_a_bot_whose_parameters_no_strategy_accepts_gets_no_runner_and_fails_nothing(
    system: System, supervisors: Callable[..., BotSupervisor]
) -> None:
    from adapters.tasks import REGISTRY

    bot(system, "bot-bad", fast=9)  # fast >= slow
    bot(system, "bot-listed", indicators=["SMA"])  # the bots API's display list is not a parameter
    sup = supervisors()
    sup.start()
    assert sup.runner_state("bot-bad") == "invalid" and sup.running() == ["bot-listed"]
    assert REGISTRY.get("bot-runner-bot-bad") is None
    system.paper.on_price(BTC, Decimal(100), T0 + timedelta(seconds=1))
    system.paper.on_price(BTC, Decimal(100), T0 + M)
    system.bus.handle(UpdateBot(bot_id="bot-bad", changes={"parameters": {"fast": 2, "slow": 3}}, user_id="u"))
    assert sup.running() == ["bot-bad", "bot-listed"]
