"""The command bus over the in-memory event store: idempotency, retries, cache, snapshots."""

from __future__ import annotations

import functools
from datetime import timedelta
from decimal import Decimal

import pydantic
import pytest
from factories import ACCOUNT_ID, BTC, ETH, T0, D, Harness, types_of

from commands.bus import CommandBus
from commands.handlers import HANDLERS, UnitOfWork
from commands.messages import (
    AccountCommand,
    CancelOrder,
    ClosePosition,
    CreateBot,
    DeleteBot,
    Deposit,
    EmergencyStop,
    ExpireOrder,
    LiquidateAll,
    OpenAccount,
    PlaceOrder,
    RecordFill,
    ResumeTrading,
    SetRiskLimits,
    StartBot,
    StopBot,
    UpdateBot,
    Withdraw,
)
from commands.ports import Snapshot
from domain.account import Account
from domain.account_events import FundsWithdrawn, TradingResumed
from domain.bot import Bot
from domain.envelope import NewEvent
from domain.errors import (
    BotAlreadyActive,
    ConcurrencyError,
    Conflict,
    IdempotencyConflict,
    InsufficientFunds,
    NotFound,
    ValidationFailed,
)
from domain.values import Side, TradingMode

STREAM = f"account-{ACCOUNT_ID}"


def open_funded(h: Harness, cash: str = "10000") -> None:
    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D(cash)))


def buy(h: Harness, qty: str = "0.1", price: str = "50000", *, symbol: str = BTC,
        side: Side = Side.BUY, **kw: object) -> str:
    """Place a market order at ``price`` and record its full fill; returns the order id."""
    h.prices.update(symbol, D(price))
    result = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=symbol, side=side,
                                     quantity=D(qty), **kw))
    assert result["status"] == "accepted", result
    h.bus.handle(RecordFill(account_id=ACCOUNT_ID, order_id=result["order_id"],
                            fill_id=f"fill-{result['order_id']}", quantity=D(qty), price=D(price)))
    return result["order_id"]


def account(h: Harness) -> Account:
    """The account as stored (full replay, no cache, no snapshot)."""
    return h.bus.repo.load_at(Account, ACCOUNT_ID, h.store.read_stream(STREAM))


def position_id(h: Harness, symbol: str = BTC) -> str:
    return account(h).s.positions[symbol].position_id


# --- idempotency ----------------------------------------------------------------------------------


def test_same_key_sent_ten_times_deposits_once():
    h = Harness()
    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))
    before = h.count()

    results = [
        h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1000"), idempotency_key="dep-1"))
        for _ in range(10)
    ]

    assert h.count() == before + 1
    assert all(r == results[0] for r in results)
    assert results[0]["cash"] == "1000"
    assert account(h).s.cash == D("1000")


def test_same_key_sent_ten_times_places_one_order_with_a_stable_id():
    h = Harness()
    open_funded(h)
    h.prices.update(BTC, D("50000"))
    before = h.count()

    results = [
        h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                quantity=D("0.1"), idempotency_key="place-1"))
        for _ in range(10)
    ]

    assert h.count() == before + 1
    assert {r["order_id"] for r in results} == {results[0]["order_id"]}
    assert results[0]["reserved"] == "5050.000"  # 0.1 * 50000 * 1.01
    assert types_of(h.events()[-1:]) == ["OrderAccepted"]


def test_rejected_order_with_a_key_is_recorded_once_and_answered_the_same():
    h = Harness()
    open_funded(h)
    before = h.count()

    first = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                    quantity=D("0.1"), idempotency_key="p-1"))  # no price known
    again = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                    quantity=D("0.1"), idempotency_key="p-1"))

    assert first == again
    assert (first["status"], first["reason_code"]) == ("rejected", "NO_MARKET_PRICE")
    assert h.count() == before + 1


def test_same_key_with_a_different_amount_is_an_idempotency_conflict():
    h = Harness()
    open_funded(h)
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1000"), idempotency_key="k-1"))
    before = h.count()

    with pytest.raises(IdempotencyConflict) as info:
        h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("2000"), idempotency_key="k-1"))

    assert info.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert h.count() == before


def test_same_key_for_another_kind_of_command_is_an_idempotency_conflict():
    h = Harness()
    open_funded(h)
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1000"), idempotency_key="k-1"))

    with pytest.raises(IdempotencyConflict) as info:
        h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("1000"), idempotency_key="k-1"))

    assert info.value.details == {"first_command": "Deposit"}


def test_same_key_from_another_user_and_correlation_is_still_the_same_request():
    h = Harness()
    open_funded(h)
    first = h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("5"), idempotency_key="k-1",
                                 user_id="alice", correlation_id="c-1"))
    before = h.count()

    again = h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("5"), idempotency_key="k-1",
                                 user_id="alice", correlation_id="c-2"))

    assert again == first
    assert h.count() == before


# --- closing a position through the bus ----------------------------------------------------------


def test_close_position_twice_closes_once():
    h = Harness()
    open_funded(h)
    buy(h, "0.1", "50000")
    pid = position_id(h)
    h.prices.update(BTC, D("51000"))

    first = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))
    before = h.count()
    second = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))

    assert second == first
    assert first["status"] == "closing"
    assert h.count() == before
    assert len(h.of_type("PositionClosing")) == 1
    closes = [e for e in h.of_type("OrderAccepted") if e.reduce_only]
    assert [c.order_id for c in closes] == [first["close_order_id"]]
    assert closes[0].reference_price == D("51000")


def test_close_position_with_the_same_key_twice_returns_the_first_result():
    h = Harness()
    open_funded(h)
    buy(h)
    pid = position_id(h)
    h.prices.update(BTC, D("51000"))

    first = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid, idempotency_key="c"))
    before = h.count()
    again = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid, idempotency_key="c"))

    assert again == first
    assert h.count() == before


def test_closing_after_the_close_filled_returns_closed_with_the_same_pnl_and_appends_nothing():
    h = Harness()
    open_funded(h)
    buy(h, "0.1", "50000")
    pid = position_id(h)
    h.prices.update(BTC, D("51000"))
    close = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))
    h.bus.handle(RecordFill(account_id=ACCOUNT_ID, order_id=close["close_order_id"], fill_id="cf",
                            quantity=D("0.1"), price=D("51000"), fee=D("5.1")))
    before = h.count()

    again = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))
    once_more = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid,
                                           idempotency_key="late-click"))

    assert again == once_more
    assert again["status"] == "closed"
    assert D(again["realised_pnl"]) == D("100")  # (51000 - 50000) * 0.1
    assert D(again["fees"]) == D("5.1")
    assert h.count() == before
    assert len(h.of_type("PositionClosed")) == 1


def test_closing_an_unknown_position_is_not_found():
    h = Harness()
    open_funded(h)

    with pytest.raises(NotFound):
        h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id="pos_nope"))


# --- optimistic concurrency ---------------------------------------------------------------------


def _append_behind_the_bus(h: Harness, *events: object) -> None:
    """Another writer (another process) appends to the account stream directly."""
    version = h.store.stream_version(STREAM)
    h.store.append(STREAM, [NewEvent(event=e) for e in events], version)  # type: ignore[arg-type]


def test_command_on_a_stale_cached_account_is_re_decided_on_fresh_state():
    h = Harness()
    open_funded(h, "100")  # the bus now caches the account with cash 100
    _append_behind_the_bus(h, FundsWithdrawn(account_id=ACCOUNT_ID, amount=D("80"), at=T0))
    before = h.count()

    with pytest.raises(InsufficientFunds):
        h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("50")))

    assert h.count() == before
    assert account(h).s.cash == D("20")


def test_after_a_conflict_the_bus_works_on_the_fresh_state():
    h = Harness()
    open_funded(h, "100")
    _append_behind_the_bus(h, FundsWithdrawn(account_id=ACCOUNT_ID, amount=D("80"), at=T0))

    result = h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("15")))

    assert result["cash"] == "5"
    assert account(h).s.cash == D("5")


def test_two_buses_on_one_store_never_overdraw():
    h = Harness()
    open_funded(h, "100")
    other = CommandBus(h.store, h.clock, h.prices, h.markets)

    other.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("70")))
    with pytest.raises(InsufficientFunds):
        h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("70")))

    assert account(h).s.cash == D("30")
    assert len(h.of_type("FundsWithdrawn")) == 1


class RacingStore:
    """Wraps the in-memory store; before the first append of ``stream_id`` it lets a rival
    writer append ``rival`` events, so the bus's append meets a moved stream."""

    def __init__(self, inner, stream_id: str, rival: list) -> None:
        self.inner = inner
        self.stream_id = stream_id
        self.rival = rival
        self.appends = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def append(self, stream_id, events, expected_version, *, idempotency=None):
        if stream_id == self.stream_id:
            self.appends += 1
            if self.rival:
                rival, self.rival = self.rival, []
                v = self.inner.stream_version(stream_id)
                self.inner.append(stream_id, [NewEvent(event=e) for e in rival], v)
        return self.inner.append(stream_id, events, expected_version, idempotency=idempotency)


def test_concurrency_error_is_retried_and_the_command_re_decided():
    h = Harness()
    open_funded(h, "100")
    racing = RacingStore(h.store, STREAM, [])
    bus = CommandBus(racing, h.clock, h.prices, h.markets)  # type: ignore[arg-type]
    bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1")))  # cache the account (cash 101)
    racing.rival = [FundsWithdrawn(account_id=ACCOUNT_ID, amount=D("30"), at=T0)]
    racing.appends = 0

    result = bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("50")))

    assert racing.appends == 2  # first attempt conflicted, second one stored
    assert result["cash"] == "21"  # 101 - 30 - 50
    assert [e.amount for e in h.of_type("FundsWithdrawn")] == [D("30"), D("50")]


def test_retry_refuses_what_fresh_state_no_longer_allows():
    h = Harness()
    open_funded(h, "100")
    racing = RacingStore(h.store, STREAM, [])
    bus = CommandBus(racing, h.clock, h.prices, h.markets)  # type: ignore[arg-type]
    bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1")))
    racing.rival = [FundsWithdrawn(account_id=ACCOUNT_ID, amount=D("60"), at=T0)]

    with pytest.raises(InsufficientFunds):
        bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("50")))  # 41 left after the rival

    assert [e.amount for e in h.of_type("FundsWithdrawn")] == [D("60")]


class AlwaysConflicting:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.appends = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def append(self, stream_id, events, expected_version, *, idempotency=None):
        self.appends += 1
        raise ConcurrencyError(stream_id, expected_version or 0, (expected_version or 0) + 1)


def test_bus_gives_up_after_max_attempts():
    h = Harness()
    open_funded(h)
    store = AlwaysConflicting(h.store)
    bus = CommandBus(store, h.clock, h.prices, h.markets, max_attempts=3)  # type: ignore[arg-type]

    with pytest.raises(ConcurrencyError):
        bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1")))

    assert store.appends == 3


def test_emergency_stop_on_a_stale_cache_still_halts_trading():
    # The bus caches the halted account; another process resumes trading; a second
    # emergency stop must halt again, not answer "halted" from the stale cache.
    h = Harness()
    open_funded(h)
    h.bus.handle(EmergencyStop(account_id=ACCOUNT_ID, reason="flash crash"))
    _append_behind_the_bus(h, TradingResumed(account_id=ACCOUNT_ID, by="other-desk", at=T0))

    result = h.bus.handle(EmergencyStop(account_id=ACCOUNT_ID, reason="flash crash again"))

    assert result["halted"] is True
    assert account(h).s.halted is True
    assert len(h.of_type("TradingHalted")) == 2


def test_emergency_stop_with_a_key_on_a_stale_cache_halts_trading():
    # With an idempotency key the bus appends (an empty batch) at the cached version,
    # so the stale cache is caught and the command re-decided.
    h = Harness()
    open_funded(h)
    h.bus.handle(EmergencyStop(account_id=ACCOUNT_ID, reason="flash crash"))
    _append_behind_the_bus(h, TradingResumed(account_id=ACCOUNT_ID, by="other-desk", at=T0))

    h.bus.handle(EmergencyStop(account_id=ACCOUNT_ID, reason="again", idempotency_key="stop-2"))

    assert account(h).s.halted is True


def test_close_position_on_a_stale_cache_reports_the_stored_outcome():
    # Another process filled the close order; asking again must say "closed".
    h = Harness()
    open_funded(h)
    buy(h, "0.1", "50000")
    pid = position_id(h)
    h.prices.update(BTC, D("51000"))
    close = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))
    other = CommandBus(h.store, h.clock, h.prices, h.markets)
    other.handle(RecordFill(account_id=ACCOUNT_ID, order_id=close["close_order_id"], fill_id="cf",
                            quantity=D("0.1"), price=D("51000")))

    again = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=pid))

    assert again["status"] == "closed"


# --- failures leave the store and the cache clean -----------------------------------------------


def test_domain_error_appends_nothing_and_the_next_command_sees_true_state():
    h = Harness()
    open_funded(h, "100")
    before = h.count()

    with pytest.raises(InsufficientFunds):
        h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("100.01")))
    result = h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("100")))

    assert h.count() == before + 1
    assert result["cash"] == "0"


class DepositThenFail(AccountCommand):
    amount: Decimal


def deposit_then_fail(cmd: DepositThenFail, uow: UnitOfWork, clock) -> dict:
    acc = uow.account(cmd.account_id)
    acc.deposit(cmd.amount, clock.now())  # decided and applied in memory...
    raise ValidationFailed("...then refused")  # ...but the command fails


def test_a_failed_command_that_changed_the_cached_aggregate_does_not_poison_the_cache():
    h = Harness()
    bus = CommandBus(h.store, h.clock, h.prices, h.markets,
                     handlers={**HANDLERS, DepositThenFail: deposit_then_fail})
    bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))
    bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("100")))
    before = h.count()

    with pytest.raises(ValidationFailed):
        bus.handle(DepositThenFail(account_id=ACCOUNT_ID, amount=D("1000")))

    assert h.count() == before
    with pytest.raises(InsufficientFunds):
        bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("500")))
    assert bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("100")))["cash"] == "0"


def test_command_without_a_handler_is_a_type_error():
    h = Harness()

    with pytest.raises(TypeError):
        h.bus.handle(DepositThenFail(account_id=ACCOUNT_ID, amount=D("1")))


def test_on_committed_callbacks_receive_the_recorded_events():
    h = Harness()
    seen: list[list[str]] = []
    h.bus.on_committed.append(lambda recs: seen.append([r.type for r in recs]))

    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("5")))

    assert seen == [["AccountOpened"], ["FundsDeposited"]]


# --- snapshots -------------------------------------------------------------------------------------


def test_snapshot_is_written_every_snapshot_every_events():
    h = Harness(snapshot_every=5)
    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="user-1"))  # version 1
    for _ in range(3):
        h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10")))  # versions 2..4
    assert h.store.load_snapshot(STREAM) is None

    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10")))  # version 5
    first = h.store.load_snapshot(STREAM)
    for _ in range(4):
        h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10")))  # versions 6..9
    still = h.store.load_snapshot(STREAM)
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("10")))  # version 10
    second = h.store.load_snapshot(STREAM)

    assert first is not None and first.version == 5 and first.schema == "account-1"
    assert still is not None and still.version == 5
    assert second is not None and second.version == 10
    assert Account.from_snapshot(ACCOUNT_ID, 10, second.state).s.cash == D("90")


def test_snapshot_is_written_when_one_command_crosses_the_boundary():
    h = Harness(snapshot_every=5)
    open_funded(h, "10000")  # versions 1, 2
    h.prices.update(BTC, D("50000"))
    placed = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                     quantity=D("0.1")))  # version 3
    h.bus.handle(Deposit(account_id=ACCOUNT_ID, amount=D("1")))  # version 4

    h.bus.handle(RecordFill(account_id=ACCOUNT_ID, order_id=placed["order_id"], fill_id="f1",
                            quantity=D("0.1"), price=D("50000")))  # versions 5, 6

    snap = h.store.load_snapshot(STREAM)
    assert snap is not None and snap.version == 6
    assert h.store.stream_version(STREAM) == 6


def _busy_session(h: Harness) -> None:
    open_funded(h, "50000")
    buy(h, "0.2", "50000")
    buy(h, "0.05", "52000", side=Side.SELL)  # reduces the long
    buy(h, "2", "3000", symbol=ETH, side=Side.SELL)  # opens a short
    h.prices.update(ETH, D("2900"))
    close = h.bus.handle(ClosePosition(account_id=ACCOUNT_ID, position_id=position_id(h, ETH)))
    h.bus.handle(RecordFill(account_id=ACCOUNT_ID, order_id=close["close_order_id"], fill_id="c1",
                            quantity=D("2"), price=D("2900"), fee=D("0.58")))
    h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY, quantity=D("0.01"),
                            order_type="limit", limit_price=D("45000")))
    h.bus.handle(Withdraw(account_id=ACCOUNT_ID, amount=D("123.45")))


def test_loading_from_snapshot_plus_tail_equals_a_full_replay():
    h = Harness(snapshot_every=4)
    _busy_session(h)
    snap = h.store.load_snapshot(STREAM)
    assert snap is not None and 0 < snap.version < h.store.stream_version(STREAM)

    from_snapshot = h.bus.repo.load_from_store(Account, ACCOUNT_ID)
    full = h.bus.repo.load_at(Account, ACCOUNT_ID, h.store.read_stream(STREAM))

    assert from_snapshot.s == full.s
    assert from_snapshot.version == full.version == h.store.stream_version(STREAM)


def test_a_fresh_bus_over_the_same_store_continues_from_snapshot_and_tail():
    h = Harness(snapshot_every=4)
    _busy_session(h)
    fresh = CommandBus(h.store, h.clock, h.prices, h.markets, snapshot_every=4)

    result = fresh.handle(Deposit(account_id=ACCOUNT_ID, amount=D("0.45")))

    assert D(result["cash"]) == account(h).s.cash


def test_snapshot_with_another_schema_is_ignored():
    h = Harness()
    open_funded(h, "100")
    h.store.save_snapshot(Snapshot(stream_id=STREAM, version=2, schema="account-0",
                                   state={"garbage": True}))

    loaded = h.bus.repo.load_from_store(Account, ACCOUNT_ID)

    assert loaded.s.cash == D("100")


# --- metadata -----------------------------------------------------------------------------------


def test_events_carry_correlation_causation_user_key_and_event_time():
    h = Harness()
    h.clock.set(T0 + timedelta(minutes=3))
    cmd = Deposit(account_id=ACCOUNT_ID, amount=D("1"), correlation_id="corr-1", user_id="alice",
                  idempotency_key="dep-7")
    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="alice"))

    h.bus.handle(cmd)

    rec = h.store.read_stream(STREAM)[-1]
    assert rec.metadata == {
        "correlation_id": "corr-1",
        "causation_id": cmd.command_id,
        "user_id": "alice",
        "idempotency_key": "dep-7",
        "ts_event": (T0 + timedelta(minutes=3)).isoformat(),
    }
    assert rec.ts_recorded == T0 + timedelta(minutes=3)


def test_correlation_defaults_to_the_command_id():
    h = Harness()
    cmd = OpenAccount(account_id=ACCOUNT_ID, owner_id="u")

    h.bus.handle(cmd)

    meta = h.store.read_stream(STREAM)[0].metadata
    assert meta["correlation_id"] == cmd.command_id
    assert meta["causation_id"] == cmd.command_id
    assert meta["user_id"] == "system"
    assert meta["idempotency_key"] is None


def test_fill_time_from_the_venue_is_the_event_time():
    h = Harness()
    open_funded(h)
    h.prices.update(BTC, D("50000"))
    placed = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                     quantity=D("0.1")))
    venue_time = T0 - timedelta(seconds=2)

    h.bus.handle(RecordFill(account_id=ACCOUNT_ID, order_id=placed["order_id"], fill_id="f1",
                            quantity=D("0.1"), price=D("50000"), ts_event=venue_time))

    recs = h.store.read_stream(STREAM)[-2:]
    assert [r.type for r in recs] == ["OrderFilled", "PositionOpened"]
    assert all(r.metadata["ts_event"] == venue_time.isoformat() for r in recs)
    assert all(r.event.at == venue_time for r in recs)
    assert all(r.ts_recorded == T0 for r in recs)


# --- every handler -------------------------------------------------------------------------------


def test_every_handler_runs_through_the_bus():
    h = Harness()
    handled: list[type] = []

    def recording(fn):
        @functools.wraps(fn)
        def wrapper(cmd, *args, **kwargs):
            handled.append(type(cmd))
            return fn(cmd, *args, **kwargs)
        return wrapper

    bus = CommandBus(h.store, h.clock, h.prices, h.markets,
                     handlers={cls: recording(fn) for cls, fn in HANDLERS.items()})
    acc = {"account_id": ACCOUNT_ID}
    h.prices.update(BTC, D("50000"))
    h.prices.update(ETH, D("3000"))

    assert bus.handle(OpenAccount(**acc, owner_id="user-1", currency="USDT")) == {
        "account_id": ACCOUNT_ID, "mode": "paper", "currency": "USDT"}
    assert bus.handle(Deposit(**acc, amount=D("20000")))["cash"] == "20000"
    assert bus.handle(Withdraw(**acc, amount=D("0.5")))["available"] == "19999.5"
    limits = bus.handle(SetRiskLimits(**acc, max_position_size_pct=D(60), max_open_positions=4,
                                      max_daily_loss_pct=D(5), max_drawdown_pct=D(20),
                                      max_leverage=D(2)))
    assert limits["limits"]["max_open_positions"] == "4"
    placed = bus.handle(PlaceOrder(**acc, symbol=BTC, side=Side.BUY, quantity=D("0.1")))
    assert placed["status"] == "accepted"
    filled = bus.handle(RecordFill(**acc, order_id=placed["order_id"], fill_id="f1",
                                   quantity=D("0.1"), price=D("50000")))
    assert filled == {"order_id": placed["order_id"], "fill_id": "f1", "applied": True,
                      "status": "filled"}
    working = bus.handle(PlaceOrder(**acc, symbol=ETH, side=Side.BUY, quantity=D("1"),
                                    order_type="limit", limit_price=D("2500")))
    assert bus.handle(CancelOrder(**acc, order_id=working["order_id"])) == {
        "order_id": working["order_id"], "status": "cancelled"}
    expiring = bus.handle(PlaceOrder(**acc, symbol=ETH, side=Side.BUY, quantity=D("1"),
                                     order_type="limit", limit_price=D("2500"),
                                     expires_at=T0 + timedelta(minutes=1)))
    h.clock.advance(timedelta(minutes=1))
    assert bus.handle(ExpireOrder(**acc, order_id=expiring["order_id"]))["status"] == "expired"
    pid = account(h).s.positions[BTC].position_id
    assert bus.handle(ClosePosition(**acc, position_id=pid))["status"] == "closing"
    halted = bus.handle(EmergencyStop(**acc, reason="drill", user_id="ops"))
    assert (halted["halted"], halted["halted_by"], halted["reason"]) == (True, "ops", "drill")
    assert halted["halted_at"] == h.clock.now().isoformat()
    assert bus.handle(ResumeTrading(**acc, user_id="ops")) == {"account_id": ACCOUNT_ID,
                                                               "halted": False}
    liquidated = bus.handle(LiquidateAll(**acc))
    assert liquidated == {"account_id": ACCOUNT_ID, "close_order_ids": []}  # already closing
    bot = {"bot_id": "bot-1"}
    created = bus.handle(CreateBot(**bot, owner_id="user-1", account_id=ACCOUNT_ID, name="b",
                                   symbol="btc/usdt", strategy="sma_cross"))
    assert created == {"bot_id": "bot-1", "name": "b", "symbol": "BTC/USDT",
                       "strategy": "sma_cross", "mode": "paper", "status": "stopped"}
    assert bus.handle(UpdateBot(**bot, changes={"name": "c"}))["name"] == "c"
    assert bus.handle(StartBot(**bot))["status"] == "running"
    assert bus.handle(StopBot(**bot))["status"] == "stopped"
    assert bus.handle(DeleteBot(**bot)) == {"bot_id": "bot-1", "status": "deleted"}

    assert set(handled) == set(HANDLERS)


# --- handlers in detail --------------------------------------------------------------------------


def test_opening_an_existing_account_conflicts():
    h = Harness()
    h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="u"))

    with pytest.raises(Conflict) as info:
        h.bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id="u"))

    assert info.value.code == "ACCOUNT_EXISTS"


@pytest.mark.parametrize(
    ("symbol", "code"),
    [("BTCUSDT", "INVALID_SYMBOL"), ("DOGE/USDT", "INVALID_SYMBOL"), ("ETH/USDT", "NO_MARKET_PRICE")],
    ids=["malformed", "not-listed", "no-price"],
)
def test_place_order_rejections_are_recorded_and_answered(symbol, code):
    h = Harness()
    open_funded(h)
    h.prices.update(BTC, D("50000"))

    result = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=symbol, side=Side.BUY,
                                     quantity=D("0.1")))

    assert (result["status"], result["reason_code"]) == ("rejected", code)
    rejected = h.of_type("OrderRejected")
    assert [(e.order_id, e.reason_code) for e in rejected] == [(result["order_id"], code)]


def test_place_order_uses_marks_from_the_price_book_for_risk():
    h = Harness()
    open_funded(h, "10000")
    buy(h, "0.1", "50000")
    h.prices.update(BTC, D("35000"))  # equity 8500: 15% drawdown
    h.prices.update(ETH, D("3000"))

    result = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=ETH, side=Side.BUY,
                                     quantity=D("0.1")))

    assert result["reason_code"] == "RISK_LIMIT_EXCEEDED"
    assert "drawdown" in result["reason"]


def test_duplicate_fill_through_the_bus_is_reported_not_applied():
    h = Harness()
    open_funded(h)
    h.prices.update(BTC, D("50000"))
    placed = h.bus.handle(PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side=Side.BUY,
                                     quantity=D("0.1")))
    fill = RecordFill(account_id=ACCOUNT_ID, order_id=placed["order_id"], fill_id="f1",
                      quantity=D("0.04"), price=D("50000"))
    h.bus.handle(fill)
    before = h.count()

    again = h.bus.handle(fill.model_copy(update={"command_id": "other"}))

    assert again["applied"] is False
    assert again["status"] == "partially_filled"
    assert h.count() == before


def test_liquidate_all_closes_every_position_with_marks_from_the_price_book():
    h = Harness()
    open_funded(h, "20000")
    buy(h, "0.1", "50000")
    buy(h, "1", "3000", symbol=ETH, side=Side.SELL)
    h.prices.update(BTC, D("51000"))
    h.prices.update(ETH, D("2900"))

    result = h.bus.handle(LiquidateAll(account_id=ACCOUNT_ID, idempotency_key="liq-1"))

    closes = {e.symbol: e for e in h.of_type("OrderAccepted") if e.reduce_only}
    assert sorted(result["close_order_ids"]) == sorted(c.order_id for c in closes.values())
    assert closes[BTC].reference_price == D("51000")
    assert closes[ETH].reference_price == D("2900")


def test_update_bot_coerces_json_values():
    h = Harness()
    h.bus.handle(CreateBot(bot_id="bot-1", owner_id="u", account_id=ACCOUNT_ID, name="b",
                           symbol="BTC/USDT", strategy="sma_cross"))

    h.bus.handle(UpdateBot(bot_id="bot-1", changes={"risk_per_trade_pct": "1.5", "mode": "live",
                                                    "stop_loss_pct": 0.5}))

    bot = h.bus.repo.load_from_store(Bot, "bot-1")
    assert bot.config.risk_per_trade_pct == Decimal("1.5")
    assert bot.config.mode is TradingMode.LIVE
    assert bot.config.stop_loss_pct == Decimal("0.5")


@pytest.mark.parametrize(
    "changes",
    [{"mode": "demo"}, {"risk_per_trade_pct": "lots"}, {"parameters": [1]}, {"name": 5}],
    ids=["bad-mode", "bad-number", "parameters-not-object", "name-not-string"],
)
def test_update_bot_with_bad_values_is_a_validation_error(changes):
    h = Harness()
    h.bus.handle(CreateBot(bot_id="bot-1", owner_id="u", account_id=ACCOUNT_ID, name="b",
                           symbol="BTC/USDT", strategy="sma_cross"))
    before = h.count()

    with pytest.raises(ValidationFailed):
        h.bus.handle(UpdateBot(bot_id="bot-1", changes=changes))

    assert h.count() == before


def test_bot_lifecycle_errors_through_the_bus():
    h = Harness()
    h.bus.handle(CreateBot(bot_id="bot-1", owner_id="u", account_id=ACCOUNT_ID, name="b",
                           symbol="BTC/USDT", strategy="sma_cross"))
    h.bus.handle(StartBot(bot_id="bot-1"))

    with pytest.raises(BotAlreadyActive):
        h.bus.handle(StartBot(bot_id="bot-1"))
    with pytest.raises(BotAlreadyActive):
        h.bus.handle(DeleteBot(bot_id="bot-1"))
    h.bus.handle(StopBot(bot_id="bot-1"))
    h.bus.handle(DeleteBot(bot_id="bot-1"))
    with pytest.raises(NotFound):
        h.bus.handle(StartBot(bot_id="bot-1"))


# --- command validation at the edge ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Deposit, {"amount": Decimal(0)}),
        (Deposit, {"amount": Decimal("NaN")}),
        (Deposit, {"amount": Decimal(1), "surprise": 1}),
        (Withdraw, {"amount": Decimal(-1)}),
        (PlaceOrder, {"symbol": BTC, "side": "buy", "quantity": Decimal(1), "leverage": Decimal(101)}),
        (PlaceOrder, {"symbol": BTC, "side": "buy", "quantity": Decimal(1),
                      "expires_at": T0.replace(tzinfo=None)}),
        (PlaceOrder, {"symbol": BTC, "side": "hold", "quantity": Decimal(1)}),
        (EmergencyStop, {"reason": ""}),
        (SetRiskLimits, {"max_position_size_pct": Decimal(101), "max_open_positions": 1,
                         "max_daily_loss_pct": Decimal(1), "max_drawdown_pct": Decimal(1),
                         "max_leverage": Decimal(1)}),
    ],
    ids=["deposit-zero", "deposit-nan", "extra-field", "withdraw-negative", "leverage-101",
         "naive-expiry", "bad-side", "empty-reason", "pct-over-100"],
)
def test_malformed_commands_are_refused_at_construction(cls, kwargs):
    with pytest.raises(pydantic.ValidationError):
        cls(account_id=ACCOUNT_ID, **kwargs)


def test_account_id_must_be_a_plain_identifier():
    with pytest.raises(pydantic.ValidationError):
        Deposit(account_id="acc 1; drop", amount=Decimal(1))


def test_update_bot_needs_changes():
    with pytest.raises(pydantic.ValidationError):
        UpdateBot(bot_id="bot-1", changes={})


def test_create_bot_normalises_and_validates_the_symbol():
    assert CreateBot(owner_id="u", account_id="a", name="n", symbol="eth/usdt",
                     strategy="s_x").symbol == "ETH/USDT"
    with pytest.raises((pydantic.ValidationError, ValidationFailed)):
        CreateBot(owner_id="u", account_id="a", name="n", symbol="ETHUSDT", strategy="s_x")


def test_fingerprint_ignores_envelope_fields_but_not_the_request():
    a = Deposit(account_id=ACCOUNT_ID, amount=D("1"), idempotency_key="k", user_id="u1")
    b = Deposit(account_id=ACCOUNT_ID, amount=D("1"), idempotency_key="k2", user_id="u2",
                correlation_id="c")
    c = Deposit(account_id=ACCOUNT_ID, amount=D("2"), idempotency_key="k")

    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert a.fingerprint() != Withdraw(account_id=ACCOUNT_ID, amount=D("1")).fingerprint()


def test_order_id_comes_from_the_key_so_retries_reuse_it():
    a = PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side="buy", quantity=D(1), idempotency_key="k")
    b = PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side="buy", quantity=D(1), idempotency_key="k")
    c = PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side="buy", quantity=D(1))

    assert a.resolved_order_id() == b.resolved_order_id()
    assert c.resolved_order_id() != a.resolved_order_id()
    assert PlaceOrder(account_id=ACCOUNT_ID, symbol=BTC, side="buy", quantity=D(1),
                      order_id="mine").resolved_order_id() == "mine"


def test_trusted_command_equals_the_validated_one_and_has_its_fingerprint():
    from domain.values import OrderType, Side, Symbol

    values = dict(account_id=ACCOUNT_ID, order_id=None, symbol=Symbol(BTC), side=Side.BUY,
                  order_type=OrderType.MARKET, quantity=D("2"), limit_price=None, stop_price=None,
                  take_profit=None, stop_loss=D("90"), leverage=D(1), reduce_only=False, bot_id="b1",
                  expires_at=None, reserve_buffer=D("0.001"), idempotency_key="k", command_id="c",
                  correlation_id=None, user_id="bot:b1")
    trusted = PlaceOrder.trusted(**values)
    validated = PlaceOrder(**values)

    assert trusted == validated
    assert list(trusted.__dict__) == list(validated.__dict__)
    assert trusted.fingerprint() == validated.fingerprint()
    with pytest.raises(KeyError):
        PlaceOrder.trusted(**{k: v for k, v in values.items() if k != "side"})


def test_idempotency_record_computes_a_deferred_fingerprint_once():
    from commands.ports import IdempotencyRecord

    calls = []

    def fingerprint() -> str:
        calls.append(1)
        return "fp"

    record = IdempotencyRecord("k", "Deposit", fingerprint, {"ok": True})

    assert calls == []
    assert record.fingerprint == "fp" and record.fingerprint == "fp"
    assert calls == [1]
    assert record == IdempotencyRecord("k", "Deposit", "fp", {"ok": True})
