"""The bot supervisor: one live runner per running bot, fed with bars built from ticks.

What it keeps true, in one process:

- every paper bot whose status is ``running`` (and whose account is not halted) has exactly
  one runner, and no other bot has one. The bot's state decides, not the event that
  announced it: any lifecycle event of a bot (``BotStarted``, ``BotStopped``,
  ``BotDeleted``, ``BotUpdated``) or of its account (``TradingHalted``, ``TradingResumed``)
  makes the supervisor load the bot and the account and *reconcile*: start what should run,
  stop what should not, restart a runner whose pair or timeframe changed. Reconciling twice,
  or after a stale event, changes nothing, so start-up (scan the log for bots, reconcile
  each) and following the log are one code path (crash-only).
- a bot's runner never runs twice: a runner started again (stop then start, a config
  change) waits for its predecessor's thread to end before it recovers from the bot's
  stream (``BotRunner.recover`` and ``resume``).
- ticks reach the runners as closed bars: every price the ``PriceBook`` records (the
  simulation endpoint, the paper venue's feed, the Kafka market-data agent) goes to one
  ``BarBuilder`` per (symbol, timeframe) in use; a closed bar is queued to each runner of
  that pair and timeframe, and each runner works through its queue in its own thread, so
  a slow strategy or a command retry never holds up the price path.

Runners execute live: a signal at a bar's close is executed at once (``FillConvention.CLOSE``)
at the last price, which is the first tick of the next bucket (the tick that closed the
bar), i.e. the next bar's open; the venue's prices come from the feed, so the runner does
not move the market itself (``LiveVenue``). Bars that closed before the bot was started
only warm its strategy up.

Embedded mode learns of bot changes from the command bus (``on_committed``: the events
this process records); a separate process (``tradecore bots``) tails the event store
instead (``follow_store``), since other processes record them.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import structlog

from adapters.bars import BarBuilder
from adapters.marketdata import Bar
from adapters.tasks import Supervised, spawn_thread
from domain import account_events as ae
from domain.account import Account
from domain.bot import Bot, BotConfig, BotDeleted, BotStarted, BotStatus, BotStopped, BotUpdated
from domain.envelope import RecordedEvent
from domain.errors import DomainError
from domain.strategies.base import Strategy
from domain.strategies.registry import build, strategy_class
from domain.values import TradingMode
from streams.bot_runner import BotRunner, FillConvention, RunnerSettings

if TYPE_CHECKING:
    from adapters.bootstrap import System
    from adapters.paper import PaperExecution

log = structlog.get_logger(__name__)

_BOT_EVENTS = (BotStarted, BotStopped, BotDeleted, BotUpdated)
_BOT_PREFIX = Bot.stream_id_for("")


def strategy_for(config: BotConfig) -> Strategy:
    """The bot's strategy; ``indicators`` (a display list of the bots API) is not a parameter."""
    params = dict(config.parameters)
    if "indicators" not in strategy_class(config.strategy).Params.model_fields:
        params.pop("indicators", None)
    return build(config.strategy, params)


class LiveVenue:
    """The paper venue as a live runner sees it: the feed moves the market, not the runner."""

    def __init__(self, paper: PaperExecution) -> None:
        self._paper = paper

    def on_price(self, symbol: str, price: Decimal, ts: datetime | None = None) -> None:
        return None  # the last price is already the market's

    def catch_up(self) -> int:
        n: int = self._paper.catch_up()
        return n

    def watches(self, symbol: str) -> bool:
        return False  # its ``on_price`` does nothing


@dataclass(frozen=True, kw_only=True)
class SupervisorSettings:
    """How the supervisor runs (frozen; one per supervisor)."""

    close_grace: timedelta | None = None
    """Also close a bar on a timer, this long after its bucket ended (None: ticks only)."""
    timer_interval: float = 1.0
    poll_interval: float = 0.25
    """How often an idle runner thread looks at its stop flag."""
    follow_store: bool = False
    """Learn of bot changes by tailing the event store (another process records them)."""


@dataclass(eq=False)
class _Slot:
    bot_id: str
    config: BotConfig
    started_at: datetime | None
    stop: threading.Event = field(default_factory=threading.Event)
    bars: queue.SimpleQueue[Bar] = field(default_factory=queue.SimpleQueue)
    sup: Supervised | None = None
    runner: BotRunner | None = None
    strategy: Strategy | None = None
    invalid: str | None = None

    @property
    def symbol(self) -> str:
        return str(self.config.symbol)

    @property
    def timeframe(self) -> str:
        return self.config.timeframe


class BotSupervisor:
    """Starts, feeds and stops the live bot runners of one process (see the module docstring)."""

    def __init__(self, system: System, settings: SupervisorSettings | None = None) -> None:
        self.system = system
        self.settings = settings or SupervisorSettings()
        self.runner_settings = RunnerSettings(
            fill=FillConvention.CLOSE,
            fee_bps=system.settings.paper_fee_bps,
            slippage_bps=system.settings.paper_slippage_bps,
        )
        self._venue = LiveVenue(system.paper)
        self._lock = threading.RLock()  # slots and builders; never held over I/O
        self._reconciling = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._builders: dict[tuple[str, str], BarBuilder] = {}
        self._accounts: dict[str, set[str]] = {}  # account id -> bot ids seen
        self._last: dict[str, Supervised] = {}  # bot id -> its latest runner thread
        self._stop = threading.Event()
        self._threads: list[Supervised] = []
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start a runner for every running bot, then follow bot and account changes."""
        if self._started:
            return
        self._started = True
        self._stop.clear()
        self.system.prices.add_listener(self.on_tick)
        if not self.settings.follow_store:
            # Registered before the scan: a change committed meanwhile is reconciled twice, never missed.
            self.system.bus.on_committed.append(self.on_committed)
        head, bots = self._scan()
        for bot_id in bots:
            self.reconcile(bot_id)
        if self.settings.follow_store:
            self._threads.append(spawn_thread("bot-supervisor-follow", self._follow, head))
        if self.settings.close_grace is not None:
            self._threads.append(spawn_thread("bot-supervisor-timer", self._timer))
        log.info("bots.supervisor_started", runners=sorted(self._slots), scanned_to=head)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every runner and stop following; waits up to ``timeout`` for their threads."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self.system.prices.remove_listener(self.on_tick)
        if self.on_committed in self.system.bus.on_committed:
            self.system.bus.on_committed.remove(self.on_committed)
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            slot.stop.set()
        with self._lock:
            runners = list(self._last.values())  # retired ones too: they may still be ending
        for sup in runners + self._threads:
            sup.finished.wait(timeout)
        self._threads.clear()
        log.info("bots.supervisor_stopped", runners=len(slots))

    # --- what runs -------------------------------------------------------------------------------

    def runner_state(self, bot_id: str) -> str | None:
        """``running``, ``failed``, ``stopped`` (it stopped itself) or None (no runner here)."""
        with self._lock:
            slot = self._slots.get(bot_id)
        if slot is not None and slot.invalid is not None:
            return "invalid"
        if slot is None or slot.sup is None:
            return None
        if slot.sup.failed:
            return "failed"
        return "stopped" if slot.sup.finished.is_set() else "running"

    def runner(self, bot_id: str) -> BotRunner | None:
        with self._lock:
            slot = self._slots.get(bot_id)
        return None if slot is None else slot.runner

    def running(self) -> list[str]:
        with self._lock:
            return sorted(b for b, s in self._slots.items() if s.sup is not None and not s.sup.finished.is_set())

    def on_committed(self, records: list[RecordedEvent]) -> None:
        """React to recorded events: reconcile the bots and accounts whose lifecycle changed."""
        if not self._started:
            return
        for rec in records:
            ev = rec.event
            if isinstance(ev, _BOT_EVENTS):
                self.reconcile(ev.bot_id)
            elif isinstance(ev, ae.TradingHalted | ae.TradingResumed):
                with self._lock:
                    bots = sorted(self._accounts.get(ev.account_id, ()))
                for bot_id in bots:
                    self.reconcile(bot_id)

    def reconcile(self, bot_id: str) -> None:
        """Make this process run ``bot_id``'s runner exactly when the bot should trade."""
        # One reconcile at a time, each loading the state anew: the last one to run saw the
        # latest state, so two racing events (a stop and a start) cannot leave a stale outcome.
        with self._reconciling:
            self._reconcile(bot_id)

    def _reconcile(self, bot_id: str) -> None:
        # From the store, not the aggregate cache: another process may have changed them.
        repo = self.system.bus.repo
        bot = repo.load_from_store(Bot, bot_id)
        cfg = bot.config if bot.s.created else None
        running = cfg is not None and bot.s.status is BotStatus.RUNNING
        halted = cfg is not None and repo.load_from_store(Account, cfg.account_id).s.halted
        run = running and cfg is not None and cfg.mode is TradingMode.PAPER and not halted
        with self._lock:
            if cfg is not None:
                self._accounts.setdefault(cfg.account_id, set()).add(bot_id)
            slot = self._slots.get(bot_id)
            alive = slot is not None and slot.sup is not None and not slot.sup.finished.is_set()
            if not run or cfg is None:
                if slot is not None:
                    self._retire(slot, "account halted" if halted else "bot not running")
                return
            # Any change of configuration (parameters too) or a new start: a fresh runner.
            same = slot is not None and alive and slot.config == cfg and slot.started_at == bot.s.started_at
            if same or not self._started:
                return
            previous = self._last.get(bot_id)  # the bot's latest thread, even a retired one
            if slot is not None:
                self._retire(slot, "restarted")
            new = _Slot(bot_id, cfg, bot.s.started_at)
            try:
                new.strategy = strategy_for(cfg)
            except DomainError as exc:
                # A configuration no strategy accepts is the bot's problem, not a failure of
                # this process: say so (``runner_state``), and try again when it changes.
                new.invalid = exc.message
                self._slots[bot_id] = new
                log.error("bots.invalid_configuration", bot_id=bot_id, strategy=cfg.strategy, error=exc.message)
                return
            key = (new.symbol, new.timeframe)
            if key not in self._builders:
                self._builders[key] = BarBuilder(*key)
            self._slots[bot_id] = new
            new.sup = self._last[bot_id] = spawn_thread(f"bot-runner-{bot_id}", self._run, new, previous)

    def _retire(self, slot: _Slot, reason: str) -> None:
        slot.stop.set()
        if self._slots.get(slot.bot_id) is slot:
            del self._slots[slot.bot_id]
        log.info("bots.runner_stopping", bot_id=slot.bot_id, reason=reason)

    # --- ticks and bars -------------------------------------------------------------------------

    def on_tick(self, symbol: str, price: Decimal, ts: datetime | None) -> None:
        """A price from the price book: close and hand out the bars it completes."""
        when = ts or self.system.clock.now()
        with self._lock:
            for (sym, _tf), builder in self._builders.items():
                if sym != symbol:
                    continue
                try:
                    bar = builder.on_tick(price, when)
                except ValueError as exc:
                    # A tick no bar can hold (a time out of range) must not fail the price path
                    # it rides on: the paper venue still acts on the price.
                    log.warning("bots.tick_ignored", symbol=symbol, ts=str(when), error=repr(exc))
                    continue
                if bar is not None:
                    self._dispatch(builder, bar)

    def close_due(self, now: datetime | None = None) -> int:
        """Close the bars whose bucket ended ``close_grace`` ago (the timer calls this)."""
        now = now or self.system.clock.now()
        grace = self.settings.close_grace or timedelta(0)
        n = 0
        with self._lock:
            for builder in self._builders.values():
                bar = builder.close_due(now, grace)
                if bar is not None:
                    self._dispatch(builder, bar)
                    n += 1
        return n

    def _dispatch(self, builder: BarBuilder, bar: Bar) -> None:
        for slot in self._slots.values():
            if slot.sup is not None and slot.symbol == builder.symbol and slot.timeframe == builder.timeframe:
                slot.bars.put(bar)
        log.debug("bots.bar_closed", symbol=builder.symbol, timeframe=builder.timeframe, time=bar.time.isoformat())

    # --- threads ---------------------------------------------------------------------------------

    def _run(self, slot: _Slot, previous: Supervised | None) -> None:
        """One runner's thread: wait for the bot's previous runner to end, then work."""
        if previous is not None:
            previous.finished.wait()  # never two runners of one bot at once
        if not slot.stop.is_set():
            self._work(slot)

    def _work(self, slot: _Slot) -> None:
        """Recover from the bot's stream, then work through closed bars until stopped."""
        bus = self.system.bus
        bus.repo.cache.evict(Bot.stream_id_for(slot.bot_id))  # its config as stored now
        runner = BotRunner(
            bus, self._venue, self.system.prices, slot.bot_id, settings=self.runner_settings, strategy=slot.strategy
        )
        runner.recover(())
        runner.resume(self.system.clock.now())
        slot.runner = runner
        log.info("bots.runner_started", bot_id=slot.bot_id, symbol=slot.symbol, timeframe=slot.timeframe,
                 last_bar=None if runner.last_bar is None else runner.last_bar.isoformat())
        step = runner.step
        while not slot.stop.is_set():
            try:
                bar = slot.bars.get(timeout=self.settings.poll_interval)
            except queue.Empty:
                continue
            if slot.stop.is_set():
                break
            if bus.repo.load(Bot, slot.bot_id).s.status is not BotStatus.RUNNING:
                break  # stopped meanwhile; the event that says so retires the slot
            if slot.started_at is not None and bar.time + step <= slot.started_at:
                runner.warm(bar)
            else:
                runner.on_bar(bar)
            if runner.stopped is not None:
                break
        log.info("bots.runner_ended", bot_id=slot.bot_id, reason=runner.stopped or "stopped", **runner.stats.__dict__)

    def _follow(self, head: int) -> None:
        for batch in self.system.store.subscribe(head, stop=self._stop):
            self.on_committed(batch)

    def _timer(self) -> None:
        while not self._stop.wait(self.settings.timer_interval):
            self.close_due()

    def _scan(self) -> tuple[int, list[str]]:
        """(last position, every bot id in the log): the bots to reconcile at start-up."""
        store = self.system.store
        head = store.last_position()
        pos, bots = 0, dict[str, None]()
        while pos < head:
            batch = store.read_all(pos, 5000)
            if not batch:
                break
            for rec in batch:
                if rec.stream_id.startswith(_BOT_PREFIX) and isinstance(rec.event, _BOT_EVENTS):
                    bots[rec.event.bot_id] = None
            pos = batch[-1].position
        return max(pos, head), list(bots)


__all__ = ["BotSupervisor", "LiveVenue", "SupervisorSettings", "strategy_for"]
