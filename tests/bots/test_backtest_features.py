"""Backtest outputs: metrics, Monte Carlo, walk-forward, comparison, plots, stored results, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import numpy as np
import pytest
from bot_factories import random_walk

from domain.errors import ValidationFailed
from streams.backtest import (
    BacktestResults,
    BacktestSpec,
    compare,
    monte_carlo,
    plot_html,
    plot_png,
    run_backtest,
    walk_forward,
)

SERIES = random_walk(4000, seed=21, vol=0.004, decimals=2, step_ns=3600 * 10**9)
SPEC = BacktestSpec(strategy="sma_cross", parameters={"fast": 10, "slow": 30}, timeframe="1h", fee_bps=Decimal(10))


@pytest.fixture(scope="module")
def result():
    return run_backtest(SERIES, SPEC)


def test_summary_has_the_metrics(result):
    s = result.summary
    for key in (
        "total_return",
        "sharpe_ratio",
        "sortino_ratio",
        "calmar_ratio",
        "max_drawdown",
        "win_rate",
        "profit_factor",
        "total_trades",
        "final_equity",
    ):
        assert key in s
    assert s["total_trades"] == sum(1 for t in result.trades if t["status"] == "closed") > 10
    assert Decimal(s["final_equity"]) == result.final_equity.quantize(Decimal("1e-8"))
    assert result.equity.size == len(SERIES)
    assert result.equity[-1] == pytest.approx(float(result.final_equity), rel=1e-12)
    assert 0 <= s["max_drawdown"] < 1 and 0 <= s["win_rate"] <= 1
    closed = [t for t in result.trades if t["status"] == "closed"]
    net = sum(Decimal(t["pnl"]) for t in closed)
    open_pnl = result.final_equity - SPEC.cash - net
    assert (open_pnl == 0) == (s["open_trades"] == 0)


def test_fees_and_slippage_apply_to_every_fill():
    res = run_backtest(SERIES, replace(SPEC, slippage_bps=Decimal(20)))
    fills = [r.event for r in res.store.read_all(0, 10**9) if r.type == "OrderFilled"]
    assert fills
    for f in fills:
        assert f.fee == f.quantity * f.price * Decimal("0.001")
    costly = res.final_equity
    cheap = run_backtest(SERIES, replace(SPEC, fee_bps=Decimal(0))).final_equity
    assert costly < cheap


def test_close_fill_convention_fills_at_the_signal_bar_close():
    res = run_backtest(SERIES, replace(SPEC, fill="close"))  # type: ignore[arg-type]
    first = [r.event for r in res.store.read_all(0, 10**9) if r.type == "OrderFilled"][0]
    sig = [r.event for r in res.store.read_all(0, 10**9) if r.type == "SignalGenerated"]
    buy = next(s for s in sig if s.action == "buy")
    assert first.price == buy.price


def test_monte_carlo_bands_are_ordered(result):
    mc = monte_carlo(result, 300, seed=1)
    fe, dd = mc["final_equity"], mc["max_drawdown"]
    assert fe["p5"] <= fe["p25"] <= fe["p50"] <= fe["p75"] <= fe["p95"]
    assert dd["p5"] <= dd["p50"] <= dd["p95"]
    shuffled = monte_carlo(result, 50, method="shuffle")
    assert shuffled["final_equity"]["p5"] == pytest.approx(shuffled["final_equity"]["p95"])
    with pytest.raises(ValidationFailed):
        monte_carlo(result, 0)


def test_walk_forward_stitches_out_of_sample_windows():
    wf = walk_forward(SERIES, SPEC, {"fast": [5, 10], "slow": [20, 40]}, train_bars=1000, test_bars=500)
    assert len(wf["windows"]) == 6
    for w in wf["windows"]:
        assert w["best_parameters"]["fast"] in (5, 10) and w["best_parameters"]["slow"] in (20, 40)
        assert w["in_sample"][1] < w["out_of_sample"][0]
    assert Decimal(wf["final_equity"]) > 0
    assert wf["equity_curve"][0]["equity"] == pytest.approx(float(SPEC.cash), rel=0.05)


def test_compare_ranks_two_to_ten_strategies():
    specs = [SPEC, replace(SPEC, strategy="rsi", parameters={}), replace(SPEC, strategy="macd", parameters={})]
    rows = compare(SERIES, specs, metric="total_return")
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["total_return"] >= rows[1]["total_return"] >= rows[2]["total_return"]
    with pytest.raises(ValidationFailed):
        compare(SERIES, [SPEC])


def test_plots_draw_equity_and_drawdown(result, tmp_path):
    png, html = tmp_path / "bt.png", tmp_path / "bt.html"
    plot_png(result, str(png))
    plot_html(result, str(html))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = html.read_text()
    assert 'id="equity"' in text and 'id="drawdown"' in text and "sma_cross" in text


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_results_are_stored_and_listable(result, kind, tmp_path):
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/r.db"
    store = BacktestResults(url)
    other = run_backtest(SERIES.slice(0, 1500), SPEC)
    store.save(result, owner_id="alice")
    store.save(other, owner_id="bob")
    assert {r["id"] for r in store.list()} == {result.id, other.id}
    assert [r["id"] for r in store.list(owner_id="alice")] == [result.id]
    doc = store.get(result.id)
    assert doc["summary"]["final_equity"] == result.summary["final_equity"] and doc["trades"]
    assert store.get("nope") is None
    store.close()


def test_cli_backtest_prints_one_json_object(tmp_path, capsys):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from api.cli_bots import register

    csv = tmp_path / "bars.csv"
    lines = ["time,open,high,low,close,volume"]
    for i in range(len(SERIES)):
        t = np.datetime64(int(SERIES.time[i]), "ns").astype("datetime64[s]")
        o, h, lo, c = (float(x[i]) for x in (SERIES.open, SERIES.high, SERIES.low, SERIES.close))
        lines.append(f"{t}Z,{o!r},{h!r},{lo!r},{c!r},1")
    csv.write_text("\n".join(lines))
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    db = f"sqlite:///{tmp_path}/md.db"
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "backtest",
            "--data",
            str(csv),
            "--param",
            "fast=10",
            "--param",
            "slow=30",
            "--json",
            "--url",
            db,
            "--plot",
            str(tmp_path / "p.png"),
            "--monte-carlo",
            "100",
        ],
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["final_equity"] == run_backtest(SERIES, SPEC).summary["final_equity"]
    assert summary["timeframe"] == "1h" and "monte_carlo" in summary
    imp = runner.invoke(app, ["data", "import", str(csv), "--symbol", "BTC/USDT", "--timeframe", "1h", "--url", db])
    assert imp.exit_code == 0 and "imported 4000 bars" in imp.output
    again = runner.invoke(
        app,
        [
            "backtest",
            "--symbol",
            "BTC/USDT",
            "--timeframe",
            "1h",
            "--json",
            "--url",
            db,
            "--param",
            "fast=10",
            "--param",
            "slow=30",
        ],
    )
    assert json.loads(again.stdout.strip().splitlines()[-1])["final_equity"] == summary["final_equity"]
    listed = runner.invoke(app, ["backtests", "--url", db, "--json"])
    assert len(json.loads(listed.stdout)) == 2


def test_exposure_from_the_position_spans_equals_exposure_from_the_trade_times(result):
    from streams.backtest import summarise

    from_times = summarise(SERIES, SPEC, result.equity, result.trades, result.final_equity)

    assert result.summary["exposure"] == from_times["exposure"]
    assert 0 < result.summary["exposure"] < 1


def test_bars_held_cover_each_trade_from_its_entry_bar_through_its_exit_bar():
    from streams.backtest import _in_position

    t = SERIES.time
    spans = [(int(t[5]), int(t[9]) + 1), (int(t[7]) + 10, int(t[12])), (int(t[40]), int(t[40])), (int(t[3990]), None)]
    held = _in_position(SERIES, spans)

    expected = np.zeros(len(SERIES), dtype=bool)
    expected[5:10] = expected[7:13] = expected[40:41] = expected[3990:] = True
    assert (held == expected).all()
