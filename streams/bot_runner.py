"""The bot runner: a process manager that turns closed bars into signals and orders.

For each bar of its bot's pair and timeframe, in time order, the runner:

1. moves the market to the bar's open (``venue.on_price``), and places the order decided
   at the previous bar's close (fill convention ``next_open``, the default: a signal on
   bar ``i``'s close fills at bar ``i + 1``'s open, priced and sized at that open);
2. walks the bar's range for resting exits: if the low reaches the position's stop-loss
   (or the high its take-profit) the venue sees that level as a price, stop-loss first
   when both are inside one bar (the pessimistic order);
3. moves the market to the close and asks the strategy; a signal that passes the
   anti-bombardment gate (minimum confidence, cooldown, at most N signals per window) is
   recorded as ``SignalGenerated`` with its indicator values, then acted on at the next
   open (or at once, with the ``close`` convention).

Orders carry an idempotency key derived from (bot, signal bar time), so the order id is
stable: a runner killed anywhere between the signal and the order and started again (from
the bot's stream: the last recorded signal is the pending intent) places exactly one
order for that bar. Bars at or before the last one seen are ignored (at-least-once feeds).

The same runner drives live paper trading (bars fed as they close) and backtests (the
backtest driver feeds only the bars where something can happen, with the signals it
computed for the whole series at once): both produce the same events. In simulated time
(a ``sim_clock``) a price the venue would not act on (``venue.watches``: no working order,
no position with a stop-loss or take-profit, nothing to catch up on) is not sent: the next
price overwrites it before anything reads it, so skipping it changes no event; the clock
still moves to every decision's time.

Sizing: with a stop-loss, the quantity risks ``risk_per_trade_pct`` of equity over the stop
distance; without one, ``risk_per_trade_pct`` of equity is the order's cost. Either way
the order never costs more than the available cash, counting the venue's fee and slippage
(``fee_bps``/``slippage_bps``, also sent as the order's reserve buffer), and the
quantity is rounded down to ``qty_step``. The runner is long-only: a buy opens a long
position when flat, a sell closes the bot's position.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import structlog

from adapters.marketdata import Bar, ns, timeframe_delta
from commands.bot_runner_handlers import RecordSignal
from commands.bus import CommandBus
from commands.messages import PlaceOrder
from commands.ports import PriceSource
from domain.account import Account, Position
from domain.bot import Bot, BotStatus
from domain.bot_events import SignalGenerated
from domain.clock import ManualClock
from domain.errors import BotNotActive, IdempotencyConflict, NotFound
from domain.strategies.base import Action, Bars, Signal, Strategy
from domain.strategies.registry import build
from domain.values import BPS, HUNDRED, ONE, ZERO, OrderType, PositionSide, Side, Symbol

log = structlog.get_logger(__name__)

PRICE_STEP = Decimal("1e-8")


class FillConvention(StrEnum):
    NEXT_OPEN = "next_open"
    """A signal at a bar's close is executed at the next bar's open (default)."""
    CLOSE = "close"
    """A signal at a bar's close is executed at that close."""


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """How a runner executes signals (frozen; one per runner)."""

    fill: FillConvention = FillConvention.NEXT_OPEN
    fee_bps: Decimal = Decimal(10)
    slippage_bps: Decimal = Decimal(0)
    qty_step: Decimal = Decimal("0.00000001")
    min_confidence: float = 0.0
    cooldown_bars: int = 0
    max_signals: int | None = None
    signal_window_bars: int = 0
    max_history: int = 5000

    def __post_init__(self) -> None:
        if self.fee_bps < 0 or self.slippage_bps < 0:
            raise ValueError("fee and slippage must not be negative")
        if self.qty_step <= 0:
            raise ValueError("qty_step must be positive")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        if self.cooldown_bars < 0 or self.signal_window_bars < 0:
            raise ValueError("cooldown and window must not be negative")
        if self.max_signals is not None and (self.max_signals < 1 or self.signal_window_bars < 1):
            raise ValueError("max_signals needs a signal window of at least one bar")

    @property
    def cost_rate(self) -> Decimal:
        """Cost of buying one unit of price: 1 + slippage + fee on the slipped price."""
        fee, slip = self.fee_bps / BPS, self.slippage_bps / BPS
        return ONE + slip + fee + fee * slip


class SignalGate:
    """Anti-bombardment: minimum confidence, cooldown and a cap of signals per window.

    Times are bar times, so the gate decides the same live and in a backtest, and its
    state can be rebuilt from the signals recorded in the bot's stream.
    """

    def __init__(
        self,
        *,
        min_confidence: float,
        cooldown: timedelta,
        max_signals: int | None,
        window: timedelta,
    ) -> None:
        self.min_confidence = min_confidence
        self.cooldown = cooldown
        self.max_signals = max_signals
        self.window = window
        self._admitted: deque[datetime] = deque()

    def seed(self, times: Iterable[datetime]) -> None:
        for t in times:
            self._admitted.append(t)

    def check(self, bar_time: datetime, confidence: float) -> str | None:
        """None if the signal may pass, else why not."""
        if confidence < self.min_confidence:
            return "LOW_CONFIDENCE"
        last = self._admitted[-1] if self._admitted else None
        if last is not None and self.cooldown and bar_time - last < self.cooldown:
            return "COOLDOWN"
        if self.max_signals is not None:
            while self._admitted and bar_time - self._admitted[0] >= self.window:
                self._admitted.popleft()
            if len(self._admitted) >= self.max_signals:
                return "TOO_MANY_SIGNALS"
        return None

    def admit(self, bar_time: datetime) -> None:
        self._admitted.append(bar_time)
        if self.max_signals is None:
            while len(self._admitted) > 1:
                self._admitted.popleft()


class Venue(Protocol):
    """Where prices go and orders get filled (``PaperExecution`` here)."""

    def on_price(self, symbol: str, price: Decimal, ts: datetime | None = None) -> None: ...

    def catch_up(self) -> int: ...

    def watches(self, symbol: str) -> bool:
        """False when a price of ``symbol`` would only become the last price (nothing to fill,
        trigger, expire or catch up on)."""
        ...


@dataclass(frozen=True, slots=True)
class Intent:
    """What a recorded signal asks for, waiting for its execution price."""

    bar_time: datetime
    action: Action


@dataclass
class RunnerStats:
    bars: int = 0
    signals: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    rejected: int = 0


class _History:
    """Growing OHLCV columns (capacity doubling), trimmed to ``limit`` bars."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 2)
        self.n = 0
        cap = 1024
        self.cols = np.empty((6, cap), dtype=np.float64)
        self.time = np.empty(cap, dtype=np.int64)

    def append(self, bar: Bar) -> None:
        if self.n == self.time.size:
            if self.n >= 2 * self.limit:
                keep = self.limit
                self.cols[:, :keep] = self.cols[:, self.n - keep : self.n]
                self.time[:keep] = self.time[self.n - keep : self.n]
                self.n = keep
            else:
                cols = np.empty((6, self.n * 2), dtype=np.float64)
                cols[:, : self.n] = self.cols[:, : self.n]
                t = np.empty(self.n * 2, dtype=np.int64)
                t[: self.n] = self.time[: self.n]
                self.cols, self.time = cols, t
        i = self.n
        self.time[i] = ns(bar.time)
        self.cols[:5, i] = (float(bar.open), float(bar.high), float(bar.low), float(bar.close), float(bar.volume))
        self.n += 1

    def bars(self) -> Bars:
        lo = max(self.n - self.limit, 0)
        c = self.cols
        return Bars(
            self.time[lo : self.n],
            c[0, lo : self.n],
            c[1, lo : self.n],
            c[2, lo : self.n],
            c[3, lo : self.n],
            c[4, lo : self.n],
        )


_COMPUTE: Any = object()


class BotRunner:
    """Runs one bot: bars in, signals and orders out (see the module docstring)."""

    def __init__(
        self,
        bus: CommandBus,
        venue: Venue,
        prices: PriceSource,
        bot_id: str,
        *,
        settings: RunnerSettings | None = None,
        strategy: Strategy | None = None,
        sim_clock: ManualClock | None = None,
    ) -> None:
        self.bus = bus
        self.venue = venue
        self.prices = prices
        self.bot_id = bot_id
        self._user_id = f"bot:{bot_id}"
        self.settings = settings or RunnerSettings()
        self.sim_clock = sim_clock
        bot = bus.repo.load(Bot, bot_id)
        if not bot.s.created:
            raise NotFound(f"bot {bot_id} not found")
        cfg = bot.config
        self.account_id = cfg.account_id
        self.symbol = str(cfg.symbol)
        self._sym = Symbol(cfg.symbol)
        self.timeframe = cfg.timeframe
        self.step = timeframe_delta(cfg.timeframe)
        self.risk_pct = cfg.risk_per_trade_pct
        self.stop_loss_pct = cfg.stop_loss_pct
        self.take_profit_pct = cfg.take_profit_pct
        self.strategy = strategy or build(cfg.strategy, dict(cfg.parameters))
        s = self.settings
        self.gate = SignalGate(
            min_confidence=s.min_confidence,
            cooldown=self.step * s.cooldown_bars,
            max_signals=s.max_signals,
            window=self.step * s.signal_window_bars,
        )
        self._cost = s.cost_rate
        self._reserve_buffer = (self._cost - ONE).quantize(Decimal("1e-12"), rounding="ROUND_CEILING")
        self._history = _History(s.max_history)
        self.pending: Intent | None = None
        self.last_bar: datetime | None = None
        self.stopped: str | None = None
        self.stats = RunnerStats()

    # --- start-up (crash-only: the same path after a clean stop or a crash) ----------------

    def recover(self, history: Iterable[Bar] = ()) -> None:
        """Warm up on ``history`` (closed bars, no action) and restore the pending intent.

        The bot's stream is the runner's memory: the anti-bombardment gate is seeded from
        the recorded signals, and the last recorded signal is still pending when its bar is
        the last closed bar (its order, if already placed, is found by its idempotency key).
        """
        for bar in history:
            if self.last_bar is None or bar.time > self.last_bar:
                self._history.append(bar)
                self.last_bar = bar.time
        signals = [
            r.event
            for r in self.bus.store.read_stream(Bot.stream_id_for(self.bot_id))
            if isinstance(r.event, SignalGenerated)
        ]
        horizon = max(self.gate.window, self.gate.cooldown)
        if self.last_bar is not None:
            self.gate.seed(e.bar_time for e in signals if e.bar_time > self.last_bar - horizon - self.step)
        if signals and self.last_bar is not None and signals[-1].bar_time == self.last_bar:
            last = signals[-1]
            intent = Intent(last.bar_time, Action.BUY if last.action == "buy" else Action.SELL)
            if self.settings.fill is FillConvention.CLOSE and self.prices.last_price(self._sym) is not None:
                self._execute(intent)
            else:
                self.pending = intent  # no price known yet (a fresh process): execute at the next open

    def resume(self, now: datetime) -> None:
        """Live start without stored bars: continue after the last recorded signal.

        Bars up to the last signal's bar count as handled (a feed that delivers them again
        changes nothing). The signal is still pending when its order was never placed (a
        crash between the two) and its bar closed at most one bar before ``now``; an older
        one is stale and dropped.
        """
        if self.last_bar is not None:
            return
        signals = [
            r.event
            for r in self.bus.store.read_stream(Bot.stream_id_for(self.bot_id))
            if isinstance(r.event, SignalGenerated)
        ]
        if not signals:
            return
        last = signals[-1]
        self.last_bar = last.bar_time
        horizon = max(self.gate.window, self.gate.cooldown)
        self.gate.seed(e.bar_time for e in signals if e.bar_time > last.bar_time - horizon - self.step)
        key = f"bot:{self.bot_id}:{last.bar_time.isoformat()}:order"
        if self.bus.store.lookup_idempotency(key) is None and now < last.bar_time + 2 * self.step:
            self.pending = Intent(last.bar_time, Action.BUY if last.action == "buy" else Action.SELL)

    def warm(self, bar: Bar) -> None:
        """Add a closed bar to the strategy's history without acting on it (warm-up)."""
        self._warm_history(bar)
        if self.last_bar is None or bar.time > self.last_bar:
            self.last_bar = bar.time

    def _warm_history(self, bar: Bar) -> None:
        h = self._history
        if h.n == 0 or ns(bar.time) > int(h.time[h.n - 1]):
            h.append(bar)

    # --- the per-bar path ----------------------------------------------------------------

    def on_bar(self, bar: Bar, signal: Signal | None = _COMPUTE) -> None:
        """Process one closed bar. ``signal`` given: the backtest's precomputed decision."""
        if self.stopped is not None:
            return
        if self.last_bar is not None and bar.time <= self.last_bar:
            if signal is _COMPUTE:
                self._warm_history(bar)  # replayed after a restart: handled, but still history
            return
        self.stats.bars += 1
        t_open = bar.time
        # In simulated time nobody else reads the market between two ticks: a price the venue
        # does not act on is only overwritten by the next one, so it is not sent (the events
        # are the same; the last price moves with the next tick that matters, the clock at
        # least with every decision).
        sim = self.sim_clock is not None
        if self.pending is not None:
            intent, self.pending = self.pending, None
            self._tick(bar.open, t_open)
            self._execute(intent)
            self._walk_exits(bar, t_open)
        elif not sim or self.venue.watches(self._sym):
            self._tick(bar.open, t_open)
            self._walk_exits(bar, t_open)
        # (else: no position with an exit to walk either)
        self.last_bar = bar.time
        if signal is _COMPUTE:
            self._history.append(bar)
            self._tick(bar.close, t_open + self.step)
            signal = self.strategy.latest(self._history.bars())
        elif not sim or (signal is not None and self.settings.fill is FillConvention.CLOSE):
            self._tick(bar.close, t_open + self.step)  # (a close fill is priced at the close)
        elif self.venue.watches(self._sym):
            self._tick(bar.close, t_open + self.step)
        elif signal is not None and self.sim_clock is not None:
            self.sim_clock.set(t_open + self.step)  # the signal is recorded at the close
        if signal is None or self.stopped is not None:
            return
        self._decide(bar, signal)

    def _decide(self, bar: Bar, signal: Signal) -> None:
        why = self.gate.check(bar.time, signal.confidence)
        if why is not None:
            self.stats.filtered[why] = self.stats.filtered.get(why, 0) + 1
            return
        action = "buy" if signal.action is Action.BUY else "sell"
        at = bar.time.isoformat()
        confidence = _unit(signal.confidence)
        cmd = RecordSignal.trusted(
            bot_id=self.bot_id,
            bar_time=bar.time,
            action=action,
            confidence=confidence,
            strength=confidence if signal.strength == signal.confidence else _unit(signal.strength),
            price=bar.close,
            indicators=signal.indicators,
            idempotency_key=f"bot:{self.bot_id}:{at}:signal",
            command_id=f"sig:{self.bot_id}:{at}",
            correlation_id=None,
            user_id=self._user_id,
        )
        try:
            self.bus.handle(cmd)
        except BotNotActive as exc:
            self._stop(f"bot not running: {exc.message}")
            return
        except IdempotencyConflict:
            # Recorded for this bar by an earlier run that saw other history (a restart
            # with less warm-up): the recorded signal stands, and its order key still
            # keeps the bar to one order.
            log.info("bot.signal_already_recorded", bot_id=self.bot_id, bar_time=bar.time.isoformat())
        self.gate.admit(bar.time)
        self.stats.signals += 1
        intent = Intent(bar.time, signal.action)
        if self.settings.fill is FillConvention.CLOSE:
            self._execute(intent)
        else:
            self.pending = intent

    def _tick(self, price: Decimal, ts: datetime) -> None:
        if self.sim_clock is not None:
            self.sim_clock.set(ts)
        self.venue.on_price(self._sym, price, ts)

    def _walk_exits(self, bar: Bar, ts: datetime) -> None:
        """Show the venue the stop-loss / take-profit level when the bar's range reaches it."""
        pos = self._position()
        if pos is None or pos.closing_order_id is not None:
            return
        levels = []
        if pos.side is PositionSide.LONG:
            if pos.stop_loss is not None and bar.low <= pos.stop_loss < bar.open:
                levels.append(pos.stop_loss)
            if pos.take_profit is not None and bar.high >= pos.take_profit > bar.open:
                levels.append(pos.take_profit)
        for level in levels:
            self._tick(level, ts)
            pos = self._position()
            if pos is None or pos.closing_order_id is not None:
                break

    # --- orders ------------------------------------------------------------------------------

    def _account(self) -> Account:
        return self.bus.repo.load(Account, self.account_id)

    def _position(self, account: Account | None = None) -> Position | None:
        acc = account or self._account()
        pos = acc.s.positions.get(self.symbol)
        if pos is None or pos.bot_id != self.bot_id:
            return None
        return pos

    def _execute(self, intent: Intent) -> None:
        at = intent.bar_time.isoformat()
        key = f"bot:{self.bot_id}:{at}:order"
        if self.bus.store.lookup_idempotency(key) is not None:
            return  # placed before a restart
        acc = self._account()
        pos = self._position(acc)
        price = self.prices.last_price(self._sym)
        if price is None:
            return
        if intent.action is Action.BUY:
            if pos is not None or self._has_open_order(acc):
                return
            qty = self._size(acc, price)
            if qty <= 0:
                self.stats.filtered["TOO_SMALL"] = self.stats.filtered.get("TOO_SMALL", 0) + 1
                return
            sl = tp = None
            if self.stop_loss_pct is not None:
                sl = _price(price * (ONE - self.stop_loss_pct / HUNDRED))
            if self.take_profit_pct is not None:
                tp = _price(price * (ONE + self.take_profit_pct / HUNDRED))
            cmd = self._order(key, at, Side.BUY, qty, reduce_only=False, stop_loss=sl, take_profit=tp)
        else:
            if pos is None or pos.side is not PositionSide.LONG or pos.closing_order_id is not None:
                return
            cmd = self._order(key, at, Side.SELL, pos.quantity, reduce_only=True)
        try:
            result = self.bus.handle(cmd)
        except IdempotencyConflict:
            return  # the same bar's order, placed by an earlier run
        self.stats.orders += 1
        if result.get("status") == "rejected":
            self.stats.rejected += 1
            log.warning(
                "bot.order_rejected", bot_id=self.bot_id, code=result.get("reason_code"), reason=result.get("reason")
            )
            if result.get("reason_code") == "TRADING_HALTED":
                self._stop("trading halted")
        self.venue.catch_up()

    def _order(
        self,
        key: str,
        at: str,
        side: Side,
        qty: Decimal,
        *,
        reduce_only: bool,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
    ) -> PlaceOrder:
        # Built without re-validation: every field comes from validated state or exact arithmetic.
        return PlaceOrder.trusted(
            account_id=self.account_id,
            order_id=None,
            symbol=self._sym,
            side=side,
            order_type=OrderType.MARKET,
            quantity=qty,
            limit_price=None,
            stop_price=None,
            take_profit=take_profit,
            stop_loss=stop_loss,
            leverage=ONE,
            reduce_only=reduce_only,
            bot_id=self.bot_id,
            expires_at=None,
            reserve_buffer=None if reduce_only else self._reserve_buffer,
            idempotency_key=key,
            command_id=f"ord:{self.bot_id}:{at}",
            correlation_id=f"sig:{self.bot_id}:{at}",
            user_id=self._user_id,
        )

    def _has_open_order(self, acc: Account) -> bool:
        return any(o.bot_id == self.bot_id and o.symbol == self.symbol for o in acc.s.orders.values())

    def _size(self, acc: Account, price: Decimal) -> Decimal:
        cost = price * self._cost
        available = acc.available
        equity = acc.equity({self.symbol: price})
        if self.stop_loss_pct is not None:
            qty = equity * self.risk_pct / HUNDRED / (price * self.stop_loss_pct / HUNDRED)
        else:
            qty = equity * self.risk_pct / HUNDRED / cost
        qty = min(qty, available / cost)
        step = self.settings.qty_step
        return (qty / step).to_integral_value(rounding=ROUND_DOWN) * step if qty > 0 else ZERO

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        log.info("bot.runner_stopped", bot_id=self.bot_id, reason=reason)

    # --- live loop (embedded mode) -------------------------------------------------------------

    def run(self, feed: Iterable[Bar], stop: threading.Event | None = None) -> None:
        """Process bars from ``feed`` until it ends, ``stop`` is set or the bot stops."""
        for bar in feed:
            if (stop is not None and stop.is_set()) or self.stopped is not None:
                break
            if self._bot_status() is not BotStatus.RUNNING:
                self._stop("bot not running")
                break
            self.on_bar(bar)

    def _bot_status(self) -> BotStatus:
        return self.bus.repo.load(Bot, self.bot_id).s.status


_MICRO = Decimal("1e-6")


def _unit(x: float) -> Decimal:
    return Decimal(repr(min(max(float(x), 0.0), 1.0))).quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def _price(p: Decimal) -> Decimal:
    return p.quantize(PRICE_STEP, rounding=ROUND_HALF_EVEN)


def start_runner_thread(
    runner: BotRunner,
    feed: Iterable[Bar],
    *,
    history: Iterable[Bar] = (),
    name: str | None = None,
) -> tuple[threading.Event, Any]:
    """Start ``runner`` in a supervised thread (embedded mode); returns (stop event, Supervised)."""
    from adapters.tasks import spawn_thread

    stop = threading.Event()

    def target() -> None:
        runner.recover(history)
        runner.run(feed, stop)

    sup = spawn_thread(name or f"bot-runner-{runner.bot_id}", target)
    return stop, sup


__all__ = [
    "BotRunner",
    "FillConvention",
    "Intent",
    "RunnerSettings",
    "SignalGate",
    "Venue",
    "start_runner_thread",
]
