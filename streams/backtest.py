"""Backtests by replay: market history through the same runner, venue, aggregates and bus.

A backtest is not a second engine. It builds the embedded system on an in-memory event
store with a simulated clock (``ManualClock``), opens an account, creates and starts a
bot, and feeds bars to the same :class:`~streams.bot_runner.BotRunner` that trades live,
which sends the same commands through the same ``CommandBus`` to the same ``Account``
and ``Bot`` aggregates, filled by the same ``PaperExecution``. The event log it leaves
is what a paper session over those bars would have written.

What makes it fast: the strategy's signals are computed once, vectorised, for the whole
series; then only the bars where something can happen reach the runner: signal bars, the
bar after a signal (its order fills at that open), bars whose range reaches the open
position's stop-loss or take-profit, and the last bar. Every other bar would only move
the last price, which the next processed bar sets again before any command reads it, so
skipping it changes no event (the runner skips such prices inside a processed bar too).
Bars are built straight from the float columns, their validity checked once for the
whole series; the equity curve is the recorded account states repeated over their runs
of bars.

Fill conventions (``fill``):
- ``next_open`` (default): a signal at bar ``i``'s close is sized, priced and filled at
  bar ``i + 1``'s open (as backtesting.py does by default);
- ``close``: filled at bar ``i``'s close (backtesting.py's ``trade_on_close=True``).
Every fill pays ``fee_bps`` of its notional and moves ``slippage_bps`` against the order.

Metrics are computed from the equity curve marked at every bar's close (float64
analytics) and from the closed positions; the final equity is exact (Decimal).
"""

from __future__ import annotations

import base64
import gc
import io
import itertools
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from adapters.eventstore.memory import InMemoryEventStore
from adapters.market import PriceBook, StaticMarkets
from adapters.marketdata import Bar, bar_at, from_ns, ns, timeframe_delta, to_decimal
from adapters.paper import PaperExecution
from commands.bot_runner_handlers import RUNNER_HANDLERS
from commands.bus import CommandBus
from commands.handlers import HANDLERS
from commands.messages import CreateBot, Deposit, OpenAccount, SetRiskLimits, StartBot
from domain import account_events as ae
from domain.account import Account
from domain.clock import ManualClock
from domain.errors import ValidationFailed
from domain.strategies.base import Bars, SignalFrame, Strategy
from domain.strategies.registry import build
from domain.values import Symbol
from streams.bot_runner import BotRunner, FillConvention, RunnerSettings

ACCOUNT_ID = "backtest"
BOT_ID = "backtest-bot"
OWNER_ID = "backtest"
_ZERO = Decimal(0)


@dataclass(frozen=True, kw_only=True)
class BacktestSpec:
    """One backtest: strategy, market, money and execution settings."""

    strategy: str
    parameters: dict[str, Any] = field(default_factory=dict)
    symbol: str = "BTC/USDT"
    timeframe: str = "1h"
    cash: Decimal = Decimal(10000)
    fee_bps: Decimal = Decimal(10)
    slippage_bps: Decimal = Decimal(0)
    fill: FillConvention = FillConvention.NEXT_OPEN
    risk_per_trade_pct: Decimal = Decimal(100)
    stop_loss_pct: Decimal | None = None
    take_profit_pct: Decimal | None = None
    qty_step: Decimal = Decimal("0.00000001")
    min_confidence: float = 0.0
    cooldown_bars: int = 0
    max_signals: int | None = None
    signal_window_bars: int = 0
    trade_from: int = 0
    """Signals before this bar index are ignored (warm-up, walk-forward windows)."""

    def __post_init__(self) -> None:
        if self.cash <= 0:
            raise ValidationFailed("initial cash must be positive")
        timeframe_delta(self.timeframe)
        if not isinstance(self.fill, FillConvention):
            try:
                object.__setattr__(self, "fill", FillConvention(self.fill))
            except ValueError:
                raise ValidationFailed(f"fill must be next_open or close: {self.fill!r}") from None

    def runner_settings(self) -> RunnerSettings:
        return RunnerSettings(
            fill=self.fill,
            fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps,
            qty_step=self.qty_step,
            min_confidence=self.min_confidence,
            cooldown_bars=self.cooldown_bars,
            max_signals=self.max_signals,
            signal_window_bars=self.signal_window_bars,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = str(v) if isinstance(v, Decimal) else (v.value if isinstance(v, FillConvention) else v)
        return out


@dataclass
class BacktestResult:
    """Summary metrics, trade list and equity curve of one backtest (and its event log)."""

    spec: BacktestSpec
    summary: dict[str, Any]
    trades: list[dict[str, Any]]
    times: np.ndarray
    equity: np.ndarray
    final_equity: Decimal
    store: InMemoryEventStore | None = None
    id: str = field(default_factory=lambda: f"bt_{uuid.uuid4().hex[:16]}")
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def drawdown(self) -> np.ndarray:
        return drawdown(self.equity)

    def to_dict(self, *, curve_points: int = 500, trades: bool = True) -> dict[str, Any]:
        idx = _downsample(len(self.equity), curve_points)
        out: dict[str, Any] = {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "request": self.spec.to_dict(),
            "summary": self.summary,
            "equity_curve": [
                {
                    "time": from_ns(int(self.times[i])).isoformat(),
                    "equity": float(self.equity[i]),
                    "drawdown": float(self.drawdown[i]),
                }
                for i in idx
            ],
            **self.extras,
        }
        if trades:
            out["trades"] = self.trades
        return out


def _downsample(n: int, points: int) -> list[int]:
    if n <= points or points <= 0:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, points).round().astype(int).tolist()))


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Fraction below the running peak at every point (0 at a new high)."""
    if equity.size == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak > 0, 1.0 - equity / peak, 0.0)


def _bot_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Bot configs hold decimals as strings (no floats): convert, recursively inside lists."""

    def conv(v: Any) -> Any:
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in parameters.items()}


class Simulation:
    """The embedded system on an in-memory store and a simulated clock, with one bot."""

    def __init__(self, spec: BacktestSpec, start: datetime, strategy: Strategy | None = None) -> None:
        self.spec = spec
        self.clock = ManualClock(start)
        self.store = InMemoryEventStore(self.clock)
        self.prices = PriceBook()
        self.markets = StaticMarkets([spec.symbol])
        self.bus = CommandBus(
            self.store,
            self.clock,
            self.prices,
            self.markets,
            handlers={**HANDLERS, **RUNNER_HANDLERS},
            snapshot_every=1 << 40,
            cache_capacity=64,
        )
        self.paper = PaperExecution(
            self.bus, self.store, self.prices, self.clock, fee_bps=spec.fee_bps, slippage_bps=spec.slippage_bps
        )
        bus = self.bus
        bus.handle(OpenAccount(account_id=ACCOUNT_ID, owner_id=OWNER_ID, currency=Symbol(spec.symbol).quote))
        bus.handle(Deposit(account_id=ACCOUNT_ID, amount=spec.cash))
        bus.handle(
            SetRiskLimits(
                account_id=ACCOUNT_ID,
                max_position_size_pct=Decimal(100),
                max_open_positions=1000,
                max_daily_loss_pct=Decimal(100),
                max_drawdown_pct=Decimal(100),
                max_leverage=Decimal(10),
            )
        )
        bus.handle(
            CreateBot(
                bot_id=BOT_ID,
                owner_id=OWNER_ID,
                account_id=ACCOUNT_ID,
                name=f"backtest {spec.strategy}",
                symbol=spec.symbol,
                strategy=spec.strategy,
                parameters=_bot_parameters(spec.parameters),
                timeframe=spec.timeframe,
                risk_per_trade_pct=spec.risk_per_trade_pct,
                stop_loss_pct=spec.stop_loss_pct,
                take_profit_pct=spec.take_profit_pct,
            )
        )
        bus.handle(StartBot(bot_id=BOT_ID))
        self.paper.catch_up()
        self.runner = BotRunner(
            self.bus,
            self.paper,
            self.prices,
            BOT_ID,
            settings=spec.runner_settings(),
            strategy=strategy,
            sim_clock=self.clock,
        )

    def account(self) -> Account:
        return self.bus.repo.load(Account, ACCOUNT_ID)


def run_backtest(
    series: Bars,
    spec: BacktestSpec,
    *,
    strategy: Strategy | None = None,
    frame: SignalFrame | None = None,
) -> BacktestResult:
    """Replay ``series`` through the runner (fast path: only bars where something can happen)."""
    n = len(series)
    if n < 2:
        raise ValidationFailed("a backtest needs at least two bars")
    started = time.perf_counter()
    strategy = strategy or build(spec.strategy, spec.parameters)
    if frame is None:
        frame = strategy.compute(series)
    step = timeframe_delta(spec.timeframe)
    sim = Simulation(spec, from_ns(int(series.time[0])) - step, strategy)
    runner = sim.runner
    symbol = spec.symbol
    low, high = series.low, series.high
    sig = frame.signal_indices()
    sig = sig[sig >= spec.trade_from].tolist()
    nsig = len(sig)
    last = n - 1
    ev_idx: list[int] = []
    ev_cash: list[float] = []
    ev_margin: list[float] = []
    ev_qty: list[float] = []
    ev_entry: list[float] = []
    k = 0
    i = -1
    acc = sim.account()
    pos = acc.s.positions.get(symbol)
    recorded_version = acc.version  # the state before the first bar: the deposit, no position
    open_, close, times = series.open, series.close, series.time
    # Bars whose range holds their open and close (the others go through ``bar_at``, which refuses them).
    valid = ((low > 0) & (low <= np.minimum(open_, close)) & (high >= np.maximum(open_, close))).tolist()
    new_bar, set_field = object.__new__, object.__setattr__

    def _bar(i: int) -> Bar:
        # ``bar_at`` for a bar known to be valid: exact prices (the decimal each float was read
        # from), no volume (the runner keeps no history when given the signal).
        bar = new_bar(Bar)
        set_field(bar, "time", from_ns(times.item(i)))
        set_field(bar, "open", Decimal(repr(open_.item(i))))
        set_field(bar, "high", Decimal(repr(high.item(i))))
        set_field(bar, "low", Decimal(repr(low.item(i))))
        set_field(bar, "close", Decimal(repr(close.item(i))))
        set_field(bar, "volume", _ZERO)
        return bar

    gc_was_enabled = gc.isenabled()
    gc.disable()  # the replay allocates millions of small objects and frees few: collections only cost
    try:
        while i < last:
            nxt = sig[k] if k < nsig else last
            if runner.pending is not None and i + 1 < nxt:
                nxt = i + 1
            if nxt > last:
                nxt = last
            if pos is not None and (pos.stop_loss is not None or pos.take_profit is not None) and nxt > i + 1:
                seg = slice(i + 1, nxt)
                hit = np.zeros(nxt - i - 1, dtype=bool)
                if pos.stop_loss is not None:
                    hit |= low[seg] <= float(pos.stop_loss) * (1 + 1e-12)
                if pos.take_profit is not None:
                    hit |= high[seg] >= float(pos.take_profit) * (1 - 1e-12)
                if hit.any():
                    nxt = i + 1 + int(np.argmax(hit))
            i = nxt
            is_signal = k < nsig and sig[k] == i
            # Given the signal, the runner reads no volume (it keeps no history of its own).
            bar = _bar(i) if valid[i] else bar_at(series, i, volume=False)
            runner.on_bar(bar, frame.at(i) if is_signal else None)
            if is_signal:
                k += 1
            acc = sim.account()
            pos = acc.s.positions.get(symbol)
            if acc.version != recorded_version:
                # The curve holds each state from the bar it appeared at: an unchanged account adds no point.
                recorded_version = acc.version
                ev_idx.append(i)
                ev_cash.append(float(acc.s.cash))
                if pos is None:
                    ev_margin.append(0.0)
                    ev_qty.append(0.0)
                    ev_entry.append(0.0)
                else:
                    ev_margin.append(float(pos.margin))
                    ev_qty.append(float(pos.quantity) * pos.direction)
                    ev_entry.append(float(pos.entry_price))
            if runner.stopped is not None:
                break
    finally:
        if gc_was_enabled:
            # The event log the replay built is alive and acyclic: scanning it finds nothing, and
            # the first collection after ``gc.enable()`` would walk every object it holds (about
            # a second per million bars). Hand it to the oldest generation unscanned instead
            # (freeze, then unfreeze: no collection runs in between).
            gc.freeze()
            gc.unfreeze()
            gc.enable()
    acc = sim.account()
    final_equity = acc.equity({symbol: to_decimal(series.close[last])})
    equity = _equity_curve(series, spec, ev_idx, ev_cash, ev_margin, ev_qty, ev_entry)
    trades, spans = _trades_and_spans(sim.store)
    summary = summarise(series, spec, equity, trades, final_equity, spans=spans)
    summary["elapsed_s"] = round(time.perf_counter() - started, 6)
    summary["events"] = sim.store.last_position()
    summary["bars_processed"] = runner.stats.bars
    summary["signals"] = runner.stats.signals
    summary["signals_filtered"] = dict(runner.stats.filtered)
    summary["orders"] = runner.stats.orders
    summary["orders_rejected"] = runner.stats.rejected
    return BacktestResult(
        spec=spec,
        summary=summary,
        trades=trades,
        times=series.time,
        equity=equity,
        final_equity=final_equity,
        store=sim.store,
    )


def _equity_curve(
    series: Bars,
    spec: BacktestSpec,
    idx: list[int],
    cash: list[float],
    margin: list[float],
    qty: list[float],
    entry: list[float],
) -> np.ndarray:
    """Equity at every bar's close: the state after the last processed bar, marked at the close."""
    n = len(series)
    if not idx:
        return np.full(n, float(spec.cash))
    # State k (k = 0: the initial one) holds from its bar up to the next state's bar:
    # each state's values repeated over its run of bars (``idx`` is strictly increasing).
    runs = np.diff(np.asarray([0, *idx, n], dtype=np.int64))

    def spread(first: float, values: list[float]) -> np.ndarray:
        return np.repeat(np.asarray([first, *values], dtype=np.float64), runs)

    cash_a = spread(float(spec.cash), cash)
    margin_a = spread(0.0, margin)
    qty_a = spread(0.0, qty)
    entry_a = spread(0.0, entry)
    result: np.ndarray = cash_a + margin_a + qty_a * (series.close - entry_a)
    return result


def _trades(store: InMemoryEventStore, series: Bars) -> list[dict[str, Any]]:
    """Closed and open positions of the backtest, from the account's events."""
    return _trades_and_spans(store)[0]


def _trades_and_spans(store: InMemoryEventStore) -> tuple[list[dict[str, Any]], list[tuple[int, int | None]]]:
    """The trades (as ``_trades``) and, for each, its entry and exit time in ns (None: still open)."""
    opened: dict[str, tuple[dict[str, Any], int]] = {}
    out: list[dict[str, Any]] = []
    spans: list[tuple[int, int | None]] = []
    position_opened, position_closed = ae.PositionOpened, ae.PositionClosed
    for rec in store.read_stream(Account.stream_id_for(ACCOUNT_ID)):
        e = rec.event
        cls = type(e)
        if cls is position_opened:
            assert isinstance(e, ae.PositionOpened)
            opened[e.position_id] = (
                {
                    "position_id": e.position_id,
                    "side": e.side._value_,
                    "entry_time": e.at.isoformat(),
                    "entry_price": str(e.entry_price),
                    "quantity": str(e.quantity),
                    "notional": e.quantity * e.entry_price,
                    "stop_loss": None if e.stop_loss is None else str(e.stop_loss),
                    "take_profit": None if e.take_profit is None else str(e.take_profit),
                },
                ns(e.at),
            )
        elif cls is position_closed:
            assert isinstance(e, ae.PositionClosed)
            entry = opened.pop(e.position_id, None)
            if entry is None:
                continue
            t, entry_ns = entry
            net = e.total_realised_pnl - e.fees
            notional = t.pop("notional")
            t.update(
                exit_time=e.at.isoformat(),
                exit_price=str(e.exit_price),
                gross_pnl=str(e.total_realised_pnl),
                fees=str(e.fees),
                pnl=str(net),
                return_pct=float(net / notional * 100) if notional else 0.0,
                reason=e.reason,
                status="closed",
            )
            out.append(t)
            spans.append((entry_ns, ns(e.at)))
    for t, entry_ns in opened.values():
        t.pop("notional", None)
        t.update(status="open")
        out.append(t)
        spans.append((entry_ns, None))
    return out, spans


def _periods_per_year(spec: BacktestSpec) -> float:
    return 365.25 * 86400 / timeframe_delta(spec.timeframe).total_seconds()


def summarise(
    series: Bars,
    spec: BacktestSpec,
    equity: np.ndarray,
    trades: list[dict[str, Any]],
    final: Decimal,
    *,
    spans: list[tuple[int, int | None]] | None = None,
) -> dict[str, Any]:
    """Return, Sharpe, Sortino, Calmar, max drawdown, win rate, profit factor, trades, final equity."""
    cash = float(spec.cash)
    closed = [t for t in trades if t["status"] == "closed"]
    pnl = np.array([float(t["pnl"]) for t in closed]) if closed else np.zeros(0)
    wins = pnl[pnl > 0]
    losses = pnl[pnl < 0]
    dd = drawdown(equity)
    max_dd = float(dd.max()) if dd.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rets = np.diff(equity) / equity[:-1] if equity.size > 1 else np.zeros(0)
    rets = rets[np.isfinite(rets)]
    ppy = _periods_per_year(spec)
    years = max((int(series.time[-1]) - int(series.time[0])) / 1e9 / (365.25 * 86400), 1e-12)
    total_return = float(final) / cash - 1.0
    ratio = float(final) / cash
    ann = ratio ** (1.0 / years) - 1.0 if ratio > 0 else -1.0
    std = float(rets.std(ddof=1)) if rets.size > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2))) if rets.size else 0.0
    mean = float(rets.mean()) if rets.size else 0.0
    if spans is None:
        spans = [(_ns_iso(t["entry_time"]), None if t["status"] == "open" else _ns_iso(t["exit_time"])) for t in trades]
    exposure = float(np.mean(_in_position(series, spans))) if len(series) else 0.0
    gross_win = float(wins.sum())
    gross_loss = float(-losses.sum())
    return {
        "strategy": spec.strategy,
        "parameters": spec.parameters,
        "symbol": spec.symbol,
        "timeframe": spec.timeframe,
        "start": from_ns(int(series.time[0])).isoformat(),
        "end": from_ns(int(series.time[-1])).isoformat(),
        "bars": len(series),
        "initial_cash": str(spec.cash),
        "final_equity": str(final.quantize(Decimal("0.00000001"))),
        "total_return": total_return,
        "annualized_return": ann,
        "sharpe_ratio": mean / std * math.sqrt(ppy) if std > 0 else None,
        "sortino_ratio": mean / downside * math.sqrt(ppy) if downside > 0 else None,
        "calmar_ratio": ann / max_dd if max_dd > 0 else None,
        "max_drawdown": max_dd,
        "win_rate": float(wins.size / pnl.size) if pnl.size else None,
        "profit_factor": gross_win / gross_loss if gross_loss > 0 else None,
        "total_trades": int(pnl.size),
        "winning_trades": int(wins.size),
        "losing_trades": int(losses.size),
        "open_trades": len(trades) - len(closed),
        "average_trade_pnl": float(pnl.mean()) if pnl.size else None,
        "fees": str(sum((Decimal(t.get("fees", "0")) for t in closed), Decimal(0))),
        "exposure": exposure,
        "buy_and_hold_return": float(series.close[-1] / series.open[0] - 1.0),
        "fill": spec.fill.value,
        "fee_bps": str(spec.fee_bps),
        "slippage_bps": str(spec.slippage_bps),
    }


def _in_position(series: Bars, spans: list[tuple[int, int | None]]) -> np.ndarray:
    """Bars held: from the bar a trade opened in through the bar it closed in (the last bar if open)."""
    n = len(series)
    if not spans:
        return np.zeros(n, dtype=bool)
    entry = np.fromiter((a for a, _ in spans), dtype=np.int64, count=len(spans))
    is_open = np.fromiter((b is None for _, b in spans), dtype=bool, count=len(spans))
    exit_ = np.fromiter((0 if b is None else b for _, b in spans), dtype=np.int64, count=len(spans))
    start = np.maximum(np.searchsorted(series.time, entry, side="right") - 1, 0)
    stop = np.where(is_open, n, np.searchsorted(series.time, exit_, side="right"))
    keep = stop > start
    depth = np.zeros(n + 1, dtype=np.int64)
    np.add.at(depth, start[keep], 1)
    np.add.at(depth, stop[keep], -1)
    held: np.ndarray = np.cumsum(depth[:n]) > 0
    return held


def _ns_iso(text: str) -> int:
    t = datetime.fromisoformat(text)
    return (int(t.timestamp()) * 1_000_000 + t.microsecond) * 1000


# --- Monte Carlo, walk-forward, comparison ---------------------------------------------------


def trade_returns(result: BacktestResult) -> np.ndarray:
    """Each closed trade's net P&L as a fraction of the equity the account had when it opened."""
    out = []
    times = result.times
    for t in result.trades:
        if t["status"] != "closed":
            continue
        j = int(np.searchsorted(times, _ns_iso(t["entry_time"]), side="right")) - 2
        base = float(result.equity[j]) if j >= 0 else float(result.spec.cash)
        out.append(float(t["pnl"]) / base if base > 0 else 0.0)
    return np.asarray(out, dtype=np.float64)


def monte_carlo(
    result: BacktestResult,
    runs: int = 1000,
    *,
    seed: int = 0,
    method: str = "bootstrap",
    percentiles: Sequence[float] = (5, 25, 50, 75, 95),
) -> dict[str, Any]:
    """Resample the trade sequence ``runs`` times; percentile bands of final equity and max drawdown.

    ``bootstrap`` draws trades with replacement; ``shuffle`` permutes them (same final
    equity, different paths and drawdowns).
    """
    if runs < 1 or runs > 100_000:
        raise ValidationFailed("monte carlo runs must be between 1 and 100000")
    r = trade_returns(result)
    cash = float(result.spec.cash)
    if r.size == 0:
        return {"runs": runs, "method": method, "trades": 0, "final_equity": {}, "max_drawdown": {}}
    rng = np.random.default_rng(seed)
    if method == "bootstrap":
        sample = r[rng.integers(0, r.size, size=(runs, r.size))]
    elif method == "shuffle":
        sample = np.stack([rng.permutation(r) for _ in range(runs)])
    else:
        raise ValidationFailed(f"unknown monte carlo method {method!r}")
    paths = cash * np.cumprod(1.0 + sample, axis=1)
    paths = np.concatenate([np.full((runs, 1), cash), paths], axis=1)
    peaks = np.maximum.accumulate(paths, axis=1)
    mdd = (1.0 - paths / peaks).max(axis=1)
    final = paths[:, -1]

    def bands(x: np.ndarray) -> dict[str, float]:
        return {f"p{int(p) if float(p).is_integer() else p}": float(np.percentile(x, p)) for p in percentiles}

    return {
        "runs": runs,
        "method": method,
        "seed": seed,
        "trades": int(r.size),
        "final_equity": bands(final),
        "max_drawdown": bands(mdd),
        "probability_of_loss": float(np.mean(final < cash)),
        "mean_final_equity": float(final.mean()),
    }


def parameter_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _score(summary: dict[str, Any], metric: str) -> float:
    v = summary.get(metric)
    if v is None:
        return -math.inf
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -f if metric == "max_drawdown" else f


def walk_forward(
    series: Bars,
    spec: BacktestSpec,
    grid: dict[str, Sequence[Any]],
    *,
    train_bars: int,
    test_bars: int,
    metric: str = "sharpe_ratio",
) -> dict[str, Any]:
    """Rolling in-sample grid optimisation, out-of-sample evaluation, stitched out-of-sample equity.

    Windows roll by ``test_bars``. In each, every parameter combination is backtested on
    the ``train_bars`` in-sample bars; the best by ``metric`` then trades the next
    ``test_bars`` bars (the in-sample bars serve as its indicator warm-up, no trades), starting
    flat with the previous window's final equity, so the out-of-sample curves join up.
    """
    combos = parameter_grid(grid)
    if not combos:
        raise ValidationFailed("walk-forward needs a parameter grid")
    if train_bars < 2 or test_bars < 1 or train_bars + test_bars > len(series):
        raise ValidationFailed("walk-forward windows do not fit the data")
    windows = []
    cash = spec.cash
    oos_t: list[np.ndarray] = []
    oos_eq: list[np.ndarray] = []
    start = 0
    while start + train_bars + test_bars <= len(series):
        train = series.slice(start, start + train_bars)
        scored = []
        for params in combos:
            merged = {**spec.parameters, **params}
            try:
                res = run_backtest(train, replace(spec, parameters=merged, cash=cash, trade_from=0))
            except ValidationFailed:
                continue
            scored.append((_score(res.summary, metric), params, res.summary))
        if not scored:
            raise ValidationFailed("no parameter combination is valid for this strategy")
        best_score, best, best_summary = max(scored, key=lambda s: s[0])
        window = series.slice(start, start + train_bars + test_bars)
        oos = run_backtest(
            window, replace(spec, parameters={**spec.parameters, **best}, cash=cash, trade_from=train_bars)
        )
        oos_t.append(oos.times[train_bars:])
        oos_eq.append(oos.equity[train_bars:])
        windows.append(
            {
                "in_sample": [from_ns(int(train.time[0])).isoformat(), from_ns(int(train.time[-1])).isoformat()],
                "out_of_sample": [
                    from_ns(int(window.time[train_bars])).isoformat(),
                    from_ns(int(window.time[-1])).isoformat(),
                ],
                "best_parameters": best,
                "in_sample_score": None if math.isinf(best_score) else best_score,
                "in_sample_result": {k: best_summary.get(k) for k in ("total_return", "sharpe_ratio", "max_drawdown")},
                "out_of_sample_result": {
                    k: oos.summary.get(k)
                    for k in ("total_return", "sharpe_ratio", "max_drawdown", "total_trades", "final_equity")
                },
            }
        )
        cash = oos.final_equity if oos.final_equity > 0 else Decimal("0.01")
        start += test_bars
    eq = np.concatenate(oos_eq)
    t = np.concatenate(oos_t)
    dd = drawdown(eq)
    idx = _downsample(eq.size, 500)
    return {
        "metric": metric,
        "train_bars": train_bars,
        "test_bars": test_bars,
        "windows": windows,
        "final_equity": str(cash),
        "total_return": float(eq[-1] / float(spec.cash) - 1.0),
        "max_drawdown": float(dd.max()) if dd.size else 0.0,
        "equity_curve": [{"time": from_ns(int(t[i])).isoformat(), "equity": float(eq[i])} for i in idx],
    }


def compare(
    series: Bars,
    specs: Sequence[BacktestSpec],
    *,
    metric: str = "sharpe_ratio",
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Backtest 2-10 strategies on the same bars; summaries ranked by ``metric`` (best first)."""
    if not 2 <= len(specs) <= 10:
        raise ValidationFailed("compare takes 2 to 10 strategies")
    rows = []
    for n, spec in enumerate(specs):
        res = run_backtest(series, spec)
        label = labels[n] if labels is not None else spec.strategy
        rows.append({"label": label, "name": spec.strategy, **res.summary})
    rows.sort(key=lambda r: _score(r, metric), reverse=True)
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    return rows


# --- plots ------------------------------------------------------------------------------------


def plot_png(result: BacktestResult, path: str) -> None:
    """Draw equity and drawdown to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = result.times.astype("datetime64[ns]")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    s = result.summary
    ax1.plot(times, result.equity, lw=1.0, color="#1f77b4")
    ax1.set_ylabel("equity")
    ax1.set_title(
        f"{s['strategy']} {s['symbol']} {s['timeframe']}  return {s['total_return']:.2%}  "
        f"max DD {s['max_drawdown']:.2%}  trades {s['total_trades']}"
    )
    ax1.grid(alpha=0.3)
    ax2.fill_between(times, -result.drawdown * 100, 0, color="#d62728", alpha=0.5, lw=0)
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _svg_path(x: np.ndarray, y: np.ndarray, w: float, h: float, y_min: float, y_max: float) -> str:
    if x.size == 0:
        return ""
    span = y_max - y_min or 1.0
    xs = (x - x[0]) / max(float(x[-1] - x[0]), 1.0) * w
    ys = h - (y - y_min) / span * h
    return " ".join(f"{'M' if i == 0 else 'L'}{a:.1f},{b:.1f}" for i, (a, b) in enumerate(zip(xs, ys, strict=True)))


def render_html(result: BacktestResult) -> str:
    """A self-contained HTML page: summary table, equity and drawdown (inline SVG, no scripts)."""
    idx = np.asarray(_downsample(len(result.equity), 1500))
    x = result.times[idx].astype(np.float64)
    eq = result.equity[idx]
    dd = -result.drawdown[idx] * 100
    w, h1, h2 = 1000.0, 320.0, 120.0
    eq_path = _svg_path(x, eq, w, h1, float(eq.min()), float(eq.max()))
    dd_path = _svg_path(x, dd, w, h2, float(min(dd.min(), -1e-9)), 0.0)
    rows = "".join(
        f"<tr><th>{k}</th><td>{_html(v)}</td></tr>" for k, v in result.summary.items() if not isinstance(v, dict)
    )
    s = result.summary
    title = f"Backtest {s['strategy']} {s['symbol']} {s['timeframe']}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{_html(title)}</title>
<style>body{{font-family:sans-serif;margin:20px}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}}
svg{{background:#fafafa;border:1px solid #ddd;display:block;margin:8px 0}}</style></head>
<body><h2>{_html(title)}</h2>
<p>{_html(s["start"])} to {_html(s["end"])}, {s["bars"]} bars</p>
<h3>Equity</h3>
<svg id="equity" width="{w:.0f}" height="{h1:.0f}" viewBox="0 0 {w:.0f} {h1:.0f}">
<path d="{eq_path}" fill="none" stroke="#1f77b4" stroke-width="1.2"/></svg>
<p>min {eq.min():.2f} / max {eq.max():.2f}</p>
<h3>Drawdown (%)</h3>
<svg id="drawdown" width="{w:.0f}" height="{h2:.0f}" viewBox="0 0 {w:.0f} {h2:.0f}">
<path d="{dd_path} L{w:.1f},0 L0,0 Z" fill="#d62728" fill-opacity="0.5" stroke="none"/></svg>
<p>max drawdown {s["max_drawdown"]:.2%}</p>
<h3>Summary</h3><table>{rows}</table>
</body></html>
"""


def _html(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def plot_html(result: BacktestResult, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(result))


def png_base64(result: BacktestResult) -> str:
    buf = io.BytesIO()
    path = buf
    plot_png(result, path)  # type: ignore[arg-type]
    return base64.b64encode(buf.getvalue()).decode()


# --- stored results -----------------------------------------------------------------------------


class BacktestResults:
    """Stored backtest results (``backtest_results`` table): SQLite, PostgreSQL or memory."""

    def __init__(self, url: str = "memory://") -> None:
        scheme, _, rest = url.partition("://")
        self._lock = threading.Lock()
        self._kind = scheme.lower()
        self._mem: dict[str, dict[str, Any]] = {}
        if self._kind == "sqlite":
            self._conn: Any = sqlite3.connect(rest[1:], check_same_thread=False, timeout=30)
            with self._conn:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS backtest_results (id TEXT PRIMARY KEY, owner_id TEXT,"
                    " created_at TEXT NOT NULL, strategy TEXT NOT NULL, symbol TEXT NOT NULL, doc TEXT NOT NULL)"
                )
                self._conn.execute(
                    "CREATE INDEX IF NOT EXISTS backtest_results_owner ON backtest_results (owner_id, created_at)"
                )
        elif self._kind in ("postgresql", "postgres", "postgresql+psycopg"):
            import psycopg

            self._conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS backtest_results (id TEXT PRIMARY KEY, owner_id TEXT,"
                " created_at TIMESTAMPTZ NOT NULL, strategy TEXT NOT NULL, symbol TEXT NOT NULL, doc JSONB NOT NULL)"
            )
        elif self._kind != "memory":
            raise ValueError(f"unsupported results URL {url!r}")

    def save(self, result: BacktestResult, owner_id: str | None = None, *, doc: dict[str, Any] | None = None) -> str:
        body = doc or result.to_dict()
        body["owner_id"] = owner_id
        text = json.dumps(body, default=str)
        s = result.summary
        with self._lock:
            if self._kind == "memory":
                self._mem[result.id] = json.loads(text)
            elif self._kind == "sqlite":
                with self._conn:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO backtest_results VALUES (?, ?, ?, ?, ?, ?)",
                        (result.id, owner_id, result.created_at.isoformat(), s["strategy"], s["symbol"], text),
                    )
            else:
                self._conn.execute(
                    "INSERT INTO backtest_results VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                    " SET doc = EXCLUDED.doc",
                    (result.id, owner_id, result.created_at, s["strategy"], s["symbol"], text),
                )
        return result.id

    def get(self, result_id: str) -> dict[str, Any] | None:
        with self._lock:
            if self._kind == "memory":
                return self._mem.get(result_id)
            if self._kind == "sqlite":
                row = self._conn.execute("SELECT doc FROM backtest_results WHERE id = ?", (result_id,)).fetchone()
            else:
                row = self._conn.execute(
                    "SELECT doc::text FROM backtest_results WHERE id = %s", (result_id,)
                ).fetchone()
        return None if row is None else json.loads(row[0])

    def list(self, owner_id: str | None = None, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first; each item: id, created_at, owner_id, request and summary (no curve or trades)."""
        with self._lock:
            if self._kind == "memory":
                docs = [d for d in self._mem.values() if owner_id is None or d.get("owner_id") == owner_id]
                docs.sort(key=lambda d: d["created_at"], reverse=True)
                docs = docs[offset : offset + limit]
            else:
                ph = "?" if self._kind == "sqlite" else "%s"
                col = "doc" if self._kind == "sqlite" else "doc::text"
                sql = f"SELECT {col} FROM backtest_results"
                args: list[Any] = []
                if owner_id is not None:
                    sql += f" WHERE owner_id = {ph}"
                    args.append(owner_id)
                sql += f" ORDER BY created_at DESC LIMIT {ph} OFFSET {ph}"
                args += [limit, offset]
                docs = [json.loads(r[0]) for r in self._conn.execute(sql, args).fetchall()]
        keep = ("id", "created_at", "owner_id", "request", "summary")
        return [{k: d.get(k) for k in keep} for d in docs]

    def close(self) -> None:
        if self._kind != "memory":
            self._conn.close()


def bars_of(series: Bars) -> Iterable[Bar]:
    """Every bar of ``series`` with exact prices (for feeding a live runner)."""
    for i in range(len(series)):
        yield bar_at(series, i)
