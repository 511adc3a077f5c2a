"""The Bot aggregate: configuration, lifecycle (stopped/running/deleted) and validation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from factories import T0, types_of

from domain.bot import Bot, BotConfig, BotStatus
from domain.errors import BotAlreadyActive, BotNotActive, Conflict, NotFound, ValidationFailed
from domain.values import Symbol, TradingMode


def config(**overrides: object) -> BotConfig:
    values: dict[str, object] = {
        "name": "BTC trend", "account_id": "acc-1", "symbol": Symbol("BTC/USDT"),
        "strategy": "sma_cross", "parameters": {"fast": 10, "slow": 30},
    }
    values.update(overrides)
    return BotConfig(**values)  # type: ignore[arg-type]


def new_bot(bot_id: str = "bot-1", **overrides: object) -> Bot:
    bot = Bot(bot_id)
    bot.create(owner_id="user-1", config=config(**overrides), now=T0)
    return bot


def running_bot() -> Bot:
    bot = new_bot()
    bot.start(by="user-1", now=T0)
    return bot


# --- create ------------------------------------------------------------------------------------


def test_create_records_owner_config_and_stopped_status():
    bot = new_bot()

    assert types_of(bot.pending) == ["BotCreated"]
    assert bot.s.owner_id == "user-1"
    assert bot.s.status is BotStatus.STOPPED
    assert bot.s.created_at == T0
    assert bot.config.symbol == "BTC/USDT"
    assert bot.config.mode is TradingMode.PAPER
    assert bot.config.timeframe == "1h"
    assert bot.config.risk_per_trade_pct == Decimal(2)


def test_creating_the_same_bot_twice_conflicts():
    bot = new_bot()

    with pytest.raises(Conflict) as info:
        bot.create(owner_id="user-1", config=config(), now=T0)

    assert info.value.code == "BOT_EXISTS"
    assert types_of(bot.pending) == ["BotCreated"]


def test_a_bot_that_was_never_created_is_not_found():
    bot = Bot("ghost")

    with pytest.raises(NotFound) as info:
        bot.start(by="u", now=T0)

    assert info.value.code == "NOT_FOUND"
    with pytest.raises(NotFound):
        _ = bot.config


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "   "},
        {"name": "x" * 101},
        {"strategy": "SMA"},
        {"strategy": "x"},
        {"strategy": "1abc"},
        {"timeframe": "1y"},
        {"timeframe": "0m"},
        {"timeframe": "h"},
        {"risk_per_trade_pct": Decimal(0)},
        {"risk_per_trade_pct": Decimal("100.1")},
        {"stop_loss_pct": Decimal(0)},
        {"stop_loss_pct": Decimal(100)},
        {"take_profit_pct": Decimal(0)},
        {"take_profit_pct": Decimal("1000.01")},
        {"parameters": {"threshold": 0.5}},  # floats lose exactness: decimals go as strings
        {"parameters": {"threshold": Decimal("0.5")}},
        {"parameters": {"nested": {"a": 1}}},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}"[:30] for k, v in o.items()),
)
def test_invalid_configuration_is_refused(overrides):
    with pytest.raises(ValidationFailed) as info:
        config(**overrides)

    assert info.value.code == "VALIDATION_ERROR"


def test_configuration_bounds_are_inclusive_where_documented():
    cfg = config(risk_per_trade_pct=Decimal(100), take_profit_pct=Decimal(1000),
                 stop_loss_pct=Decimal("99.99"), timeframe="15m")

    assert cfg.take_profit_pct == Decimal(1000)


def test_malformed_symbol_is_refused_when_building_the_config():
    with pytest.raises(ValidationFailed) as info:
        config(symbol=Symbol("BTCUSDT"))

    assert info.value.code == "INVALID_SYMBOL"


# --- update --------------------------------------------------------------------------------------


def test_update_changes_the_configuration():
    bot = new_bot()

    new = bot.update(changes={"name": "renamed", "risk_per_trade_pct": Decimal("1.5")}, by="user-1",
                     now=T0)

    assert (new.name, new.risk_per_trade_pct) == ("renamed", Decimal("1.5"))
    assert bot.config == new
    assert types_of(bot.pending) == ["BotCreated", "BotUpdated"]
    assert bot.pending[-1].by == "user-1"


def test_update_normalises_the_symbol():
    bot = new_bot()

    new = bot.update(changes={"symbol": "eth/usdt"}, by="user-1", now=T0)

    assert new.symbol == "ETH/USDT"
    assert isinstance(new.symbol, Symbol)


def test_update_without_a_real_change_emits_nothing():
    bot = new_bot()

    bot.update(changes={"name": "BTC trend"}, by="user-1", now=T0)

    assert types_of(bot.pending) == ["BotCreated"]


def test_account_of_a_bot_cannot_be_changed():
    bot = new_bot()

    with pytest.raises(ValidationFailed, match="account_id"):
        bot.update(changes={"account_id": "acc-2"}, by="user-1", now=T0)


def test_unknown_field_cannot_be_updated():
    bot = new_bot()

    with pytest.raises(ValidationFailed):
        bot.update(changes={"colour": "blue"}, by="user-1", now=T0)


def test_update_to_an_invalid_configuration_is_refused_and_emits_nothing():
    bot = new_bot()

    with pytest.raises(ValidationFailed):
        bot.update(changes={"timeframe": "forever"}, by="user-1", now=T0)

    assert types_of(bot.pending) == ["BotCreated"]
    assert bot.config.timeframe == "1h"


@pytest.mark.parametrize("changes", [{"mode": TradingMode.LIVE}, {"symbol": "ETH/USDT"}])
def test_mode_or_pair_cannot_change_while_running(changes):
    bot = running_bot()

    with pytest.raises(BotAlreadyActive) as info:
        bot.update(changes=changes, by="user-1", now=T0)

    assert info.value.code == "BOT_ALREADY_ACTIVE"
    assert types_of(bot.pending) == ["BotCreated", "BotStarted"]


def test_parameters_can_change_while_running():
    bot = running_bot()

    new = bot.update(changes={"parameters": {"fast": 5, "slow": 20}}, by="user-1", now=T0)

    assert new.parameters == {"fast": 5, "slow": 20}
    assert bot.s.status is BotStatus.RUNNING


# --- start / stop / delete ----------------------------------------------------------------------


def test_start_runs_the_bot():
    bot = new_bot()

    bot.start(by="user-1", now=T0 + timedelta(minutes=1))

    assert bot.s.status is BotStatus.RUNNING
    assert bot.s.started_at == T0 + timedelta(minutes=1)


def test_starting_a_running_bot_is_bot_already_active():
    bot = running_bot()

    with pytest.raises(BotAlreadyActive) as info:
        bot.start(by="user-1", now=T0)

    assert info.value.code == "BOT_ALREADY_ACTIVE"
    assert types_of(bot.pending) == ["BotCreated", "BotStarted"]


def test_stop_records_who_and_why():
    bot = running_bot()

    bot.stop(by="user-1", reason="drawdown", now=T0 + timedelta(hours=1))

    ev = bot.pending[-1]
    assert (ev.by, ev.reason) == ("user-1", "drawdown")
    assert bot.s.status is BotStatus.STOPPED
    assert bot.s.stopped_at == T0 + timedelta(hours=1)


def test_stopping_a_stopped_bot_is_bot_not_active():
    bot = new_bot()

    with pytest.raises(BotNotActive) as info:
        bot.stop(by="user-1", reason="x", now=T0)

    assert info.value.code == "BOT_NOT_ACTIVE"


def test_a_stopped_bot_can_be_started_again():
    bot = running_bot()
    bot.stop(by="user-1", reason="pause", now=T0)

    bot.start(by="user-1", now=T0)

    assert bot.s.status is BotStatus.RUNNING
    assert types_of(bot.pending) == ["BotCreated", "BotStarted", "BotStopped", "BotStarted"]


def test_a_running_bot_cannot_be_deleted():
    bot = running_bot()

    with pytest.raises(BotAlreadyActive):
        bot.delete(by="user-1", now=T0)


def test_delete_a_stopped_bot():
    bot = new_bot()

    bot.delete(by="user-1", now=T0)

    assert bot.s.status is BotStatus.DELETED
    assert types_of(bot.pending) == ["BotCreated", "BotDeleted"]


@pytest.mark.parametrize(
    "action",
    [
        lambda b: b.start(by="u", now=T0),
        lambda b: b.stop(by="u", reason="x", now=T0),
        lambda b: b.update(changes={"name": "n"}, by="u", now=T0),
        lambda b: b.delete(by="u", now=T0),
    ],
    ids=["start", "stop", "update", "delete"],
)
def test_a_deleted_bot_is_not_found(action):
    bot = new_bot()
    bot.delete(by="user-1", now=T0)

    with pytest.raises(NotFound) as info:
        action(bot)

    assert info.value.code == "NOT_FOUND"
    assert types_of(bot.pending) == ["BotCreated", "BotDeleted"]


def test_a_deleted_bot_cannot_be_created_again_under_the_same_id():
    bot = new_bot()
    bot.delete(by="user-1", now=T0)

    with pytest.raises(Conflict):
        bot.create(owner_id="user-1", config=config(), now=T0)


# --- replay and snapshots ------------------------------------------------------------------------


def _busy_bot() -> Bot:
    bot = new_bot(parameters={"fast": 10, "levels": [1, 2, 3], "label": "x", "on": True})
    bot.update(changes={"stop_loss_pct": Decimal("0.5"), "take_profit_pct": Decimal("1.5")},
               by="user-1", now=T0)
    bot.start(by="user-1", now=T0 + timedelta(minutes=1))
    bot.stop(by="user-1", reason="pause", now=T0 + timedelta(minutes=2))
    return bot


def test_replaying_the_events_rebuilds_the_bot():
    bot = _busy_bot()

    replayed = Bot(bot.id)
    replayed.replay(bot.pending)

    assert replayed.s == bot.s


def test_snapshot_round_trip_equals_the_live_state():
    bot = _busy_bot()

    restored = Bot.from_snapshot(bot.id, 4, bot.to_snapshot())

    assert restored.s == bot.s
    assert restored.version == 4
