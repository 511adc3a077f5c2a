"""CLI for market data and backtests: ``tradecore data import|list|download`` and ``tradecore backtest``.

``register(app)`` adds the commands to the main Typer app (called from ``api/cli.py``).
Market data and backtest results live in ``TRADECORE_MARKET_DATA_URL`` (default: the
read store's URL; tables ``ohlcv`` and ``backtest_results``).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import typer

data_app = typer.Typer(help="Market data: import CSV, download with ccxt, list stored series.", no_args_is_help=True)


def _data_url(url: str | None) -> str:
    if url:
        return url
    from adapters.settings import Settings

    return Settings().market_data_store_url


def parse_param(text: str) -> tuple[str, Any]:
    """``fast=10`` -> ("fast", 10); ints and booleans typed, JSON for lists/objects, else the string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise typer.BadParameter(f"expected NAME=VALUE, got {text!r}")
    raw = raw.strip()
    if raw[:1] in "[{":
        try:
            return key, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"{key}: invalid JSON: {exc}") from None
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    try:
        return key, int(raw)
    except ValueError:
        return key, raw  # decimals stay strings: no floats in bot configs; the strategy parses them


def parse_params(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_param(p) for p in items or [])


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``fast=5,10,20`` -> {"fast": [5, 10, 20]}."""
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, _, values = item.partition("=")
        if not values:
            raise typer.BadParameter(f"expected NAME=V1,V2,..., got {item!r}")
        grid[key.strip()] = [parse_param(f"{key}={v}")[1] for v in values.split(",") if v.strip()]
    return grid


def _dec(text: str, what: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{what} is not a number: {text!r}") from None


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    from adapters.marketdata import MarketDataError, parse_time

    try:
        return parse_time(text)
    except MarketDataError as exc:
        raise typer.BadParameter(str(exc)) from None


@data_app.command("import")
def data_import(
    file: str = typer.Argument(..., help="CSV with a header: time, open, high, low, close[, volume]"),
    symbol: str = typer.Option(..., "--symbol", help="pair, e.g. BTC/USDT"),
    timeframe: str = typer.Option("1h", "--timeframe", help="bar length: 1m, 15m, 1h, 1d"),
    url: str | None = typer.Option(
        None, "--url", help="storage URL (default TRADECORE_MARKET_DATA_URL or the read store)"
    ),
) -> None:
    """Import OHLCV bars from a CSV file into the market data store (with a progress bar)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adapters.marketdata import MarketDataError, count_rows, import_csv, open_ohlcv_store
    from domain.errors import ValidationFailed
    from domain.values import Symbol

    try:
        sym = str(Symbol(symbol))
    except ValidationFailed as exc:
        raise typer.BadParameter(exc.message) from None
    if not os.path.exists(file):
        raise typer.BadParameter(f"no such file: {file}")
    store = open_ohlcv_store(_data_url(url))
    total = count_rows(file)
    try:
        with Progress(
            TextColumn("[bold]importing[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task(f"{sym} {timeframe}", total=total)
            n = import_csv(store, file, sym, timeframe, progress=lambda k: progress.advance(task, k))
    except MarketDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"imported {n} bars of {sym} {timeframe}")


@data_app.command("list")
def data_list(url: str | None = typer.Option(None, "--url")) -> None:
    """List stored series: symbol, timeframe, bar count, first and last bar."""
    from adapters.marketdata import open_ohlcv_store

    store = open_ohlcv_store(_data_url(url))
    try:
        for s in store.series():
            typer.echo(f"{s['symbol']}\t{s['timeframe']}\t{s['bars']}\t{s['first']}\t{s['last']}")
    finally:
        store.close()


@data_app.command("download")
def data_download(
    symbol: str = typer.Option(..., "--symbol"),
    timeframe: str = typer.Option("1h", "--timeframe"),
    since: str = typer.Option(..., "--from", help="first bar time (ISO or epoch)"),
    until: str | None = typer.Option(None, "--to"),
    exchange: str = typer.Option("binance", "--exchange", help="ccxt exchange id"),
    url: str | None = typer.Option(None, "--url"),
) -> None:
    """Download bars with ccxt (needs ccxt and a network) and store them."""
    from adapters.marketdata import MarketDataError, download_ccxt, open_ohlcv_store

    start = _when(since)
    assert start is not None
    try:
        bars = download_ccxt(exchange, symbol, timeframe, start, _when(until))
    except MarketDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    store = open_ohlcv_store(_data_url(url))
    try:
        n = store.upsert(symbol, timeframe, bars)
    finally:
        store.close()
    typer.echo(f"stored {n} bars of {symbol} {timeframe} from {exchange}")


def _infer_timeframe(series: Any) -> str:
    import numpy as np

    if len(series) < 2:
        return "1h"
    step = int(np.median(np.diff(series.time))) // 1_000_000_000
    for unit, secs in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if step >= secs and step % secs == 0:
            return f"{step // secs}{unit}"
    return "1m"


def backtest(
    data: str | None = typer.Option(None, "--data", help="CSV file of OHLCV bars"),
    symbol: str = typer.Option("BTC/USDT", "--symbol", help="pair (with --data: sets the account currency)"),
    timeframe: str | None = typer.Option(None, "--timeframe", help="bar length (default: inferred, or 1h)"),
    strategy: str = typer.Option("sma_cross", "--strategy"),
    param: list[str] | None = typer.Option(  # noqa: B008 - typer's declaration style
        None, "--param", help="strategy parameter NAME=VALUE (repeatable)"
    ),
    start: str | None = typer.Option(None, "--from"),
    end: str | None = typer.Option(None, "--to"),
    cash: str = typer.Option("10000", "--cash"),
    fee_bps: str = typer.Option("10", "--fee-bps"),
    slippage_bps: str = typer.Option("0", "--slippage-bps"),
    fill: str = typer.Option("next_open", "--fill", help="next_open (default) or close"),
    risk_pct: str = typer.Option("100", "--risk-pct", help="risk per trade, % of equity"),
    stop_loss_pct: str | None = typer.Option(None, "--stop-loss-pct"),
    take_profit_pct: str | None = typer.Option(None, "--take-profit-pct"),
    qty_step: str = typer.Option("0.00000001", "--qty-step", help="order quantity increment (1 for whole units)"),
    min_confidence: float = typer.Option(0.0, "--min-confidence"),
    cooldown_bars: int = typer.Option(0, "--cooldown-bars"),
    max_signals: int | None = typer.Option(None, "--max-signals"),
    signal_window: int = typer.Option(0, "--signal-window", help="bars in the max-signals window"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    plot: str | None = typer.Option(None, "--plot", help="write equity and drawdown to this PNG"),
    plot_html: str | None = typer.Option(None, "--plot-html", help="write an HTML report with equity and drawdown"),
    monte_carlo: int = typer.Option(0, "--monte-carlo", help="N resamplings of the trade sequence"),
    walk_forward: str | None = typer.Option(None, "--walk-forward", help="TRAIN,TEST window sizes in bars"),
    grid: list[str] | None = typer.Option(  # noqa: B008 - typer's declaration style
        None, "--grid", help="walk-forward grid NAME=V1,V2 (repeatable)"
    ),
    metric: str = typer.Option("sharpe_ratio", "--metric", help="walk-forward objective"),
    save: bool = typer.Option(True, "--save/--no-save", help="store the result (listable)"),
    url: str | None = typer.Option(None, "--url", help="market data / results URL"),
) -> None:
    """Backtest a strategy by replaying bars through the bot runner, paper venue and aggregates."""
    from adapters.marketdata import MarketDataError, clip, load_csv_series, load_series, open_ohlcv_store
    from domain.errors import DomainError
    from streams.backtest import BacktestResults, BacktestSpec, plot_png, run_backtest
    from streams.backtest import monte_carlo as run_mc
    from streams.backtest import plot_html as write_html
    from streams.backtest import walk_forward as run_wf
    from streams.bot_runner import FillConvention

    t0, t1 = _when(start), _when(end)
    try:
        if data:
            series = clip(load_csv_series(data), t0, t1)
        else:
            store = open_ohlcv_store(_data_url(url))
            try:
                series = load_series(store, symbol, timeframe or "1h", t0, t1)
            finally:
                store.close()
    except (MarketDataError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        fill_conv = FillConvention(fill)
    except ValueError:
        raise typer.BadParameter("--fill must be next_open or close") from None
    try:
        spec = BacktestSpec(
            strategy=strategy,
            parameters=parse_params(param),
            symbol=symbol,
            timeframe=timeframe or _infer_timeframe(series),
            cash=_dec(cash, "--cash"),
            fee_bps=_dec(fee_bps, "--fee-bps"),
            slippage_bps=_dec(slippage_bps, "--slippage-bps"),
            fill=fill_conv,
            risk_per_trade_pct=_dec(risk_pct, "--risk-pct"),
            stop_loss_pct=_dec(stop_loss_pct, "--stop-loss-pct") if stop_loss_pct else None,
            take_profit_pct=_dec(take_profit_pct, "--take-profit-pct") if take_profit_pct else None,
            qty_step=_dec(qty_step, "--qty-step"),
            min_confidence=min_confidence,
            cooldown_bars=cooldown_bars,
            max_signals=max_signals,
            signal_window_bars=signal_window,
        )
        result = run_backtest(series, spec)
        if monte_carlo:
            result.extras["monte_carlo"] = run_mc(result, monte_carlo)
        if walk_forward:
            try:
                train, test = (int(x) for x in walk_forward.split(","))
            except ValueError:
                raise typer.BadParameter("--walk-forward takes TRAIN,TEST (bars)") from None
            result.extras["walk_forward"] = run_wf(
                series, spec, parse_grid(grid), train_bars=train, test_bars=test, metric=metric
            )
    except (DomainError, ValueError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(1) from None
    if plot:
        plot_png(result, plot)
    if plot_html:
        write_html(result, plot_html)
    if save:
        results = BacktestResults(_data_url(url))
        try:
            results.save(result, owner_id=os.environ.get("USER"))
        finally:
            results.close()
    summary = {"id": result.id, **result.summary, **result.extras}
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        return
    _print_summary(summary)


def backtests_list(
    limit: int = typer.Option(20, "--limit"),
    url: str | None = typer.Option(None, "--url"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List stored backtest results, newest first."""
    from streams.backtest import BacktestResults

    results = BacktestResults(_data_url(url))
    try:
        rows = results.list(limit=limit)
    finally:
        results.close()
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    for r in rows:
        s = r["summary"]
        typer.echo(
            f"{r['id']}\t{r['created_at']}\t{s['strategy']}\t{s['symbol']}\t{s['timeframe']}\t"
            f"return {s['total_return']:.2%}\tmaxDD {s['max_drawdown']:.2%}\ttrades {s['total_trades']}"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"backtest {summary.get('strategy')} {summary.get('symbol')} {summary.get('timeframe')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if k in ("monte_carlo", "walk_forward"):
            continue
        table.add_row(k, _fmt(v))
    console = Console()
    console.print(table)
    if "monte_carlo" in summary:
        console.print("monte carlo:", summary["monte_carlo"])
    if "walk_forward" in summary:
        wf = summary["walk_forward"]
        console.print(
            f"walk-forward: {len(wf['windows'])} windows, out-of-sample return {wf['total_return']:.2%}, "
            f"max DD {wf['max_drawdown']:.2%}, final equity {wf['final_equity']}"
        )


def register(app: typer.Typer) -> None:
    """Add ``data ...``, ``backtest`` and ``backtests`` to the ``tradecore`` CLI."""
    app.add_typer(data_app, name="data")
    app.command("backtest")(backtest)
    app.command("backtests")(backtests_list)
