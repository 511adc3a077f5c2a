"""Backtest benchmark: SMA 10/30 over one-minute bars, tradecore beside backtesting.py (and vectorbt).

Run ``python bench/backtest.py`` (1,000,000 bars, 3 runs each) or ``--quick`` (100,000
bars). The bars are a seeded random walk (full float precision, so no two averages tie);
the strategy is long-only, all-in (whole units), zero fees, market orders filled at the
next bar's open, in all three engines.

- tradecore: ``streams.backtest.run_backtest`` (indicators vectorised once, then the bot
  runner, paper venue, command bus and Account aggregate on an in-memory event store, for
  the bars where something happens), timed from bars to summary;
- backtesting.py: ``Backtest(df, SmaCross, cash=10_000, commission=0).run()`` (its
  progress bar disabled);
- vectorbt (if installed): ``Portfolio.from_signals`` with the same crossings, filled at
  the next open in whole units; its first call (numba compilation) is not timed.

Each engine runs ``--repeat`` times, interleaved; the median is reported. The last line of
output is one JSON object; ``ratio`` is backtesting.py's time over ours (wall clock), ``cpu_ratio``
the same with process CPU time (steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from domain.strategies import Bars  # noqa: E402
from streams.backtest import BacktestSpec, run_backtest  # noqa: E402

CASH = 10_000


def make_series(n: int, seed: int = 42) -> Bars:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(rng.normal(0.0, 0.0002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.0003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.0003, n)))
    t = (np.datetime64("2020-01-01T00:00", "ns") + np.arange(n) * np.timedelta64(60, "s")).astype(np.int64)
    return Bars.from_arrays(t, open_, high, low, close, np.ones(n))


def ours(series: Bars) -> tuple[float, float, int, float]:
    spec = BacktestSpec(
        strategy="sma_cross",
        parameters={"fast": 10, "slow": 30},
        symbol="BTC/USDT",
        timeframe="1m",
        cash=Decimal(CASH),
        fee_bps=Decimal(0),
        slippage_bps=Decimal(0),
        qty_step=Decimal(1),
    )
    c0, t0 = time.process_time(), time.perf_counter()
    res = run_backtest(series, spec)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, float(res.final_equity), int(res.summary["total_trades"]), cpu


def frame(series: Bars) -> Any:
    import pandas as pd

    idx = pd.to_datetime(series.time, utc=True).tz_localize(None)
    return pd.DataFrame(
        {"Open": series.open, "High": series.high, "Low": series.low, "Close": series.close, "Volume": series.volume},
        index=idx,
    )


def backtesting_py(df: Any) -> tuple[float, float, int, float]:
    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def sma(a: Any, n: int) -> Any:
        return pd.Series(a).rolling(n).mean()

    class SmaCross(Strategy):
        def init(self) -> None:
            self.f = self.I(sma, self.data.Close, 10)
            self.s = self.I(sma, self.data.Close, 30)

        def next(self) -> None:
            if crossover(self.f, self.s):
                if not self.position:
                    self.buy()
            elif crossover(self.s, self.f):
                self.position.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c0, t0 = time.process_time(), time.perf_counter()
        r = Backtest(df, SmaCross, cash=CASH, commission=0).run()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, float(r["Equity Final [$]"]), int(r["# Trades"]), cpu


def vectorbt_run(df: Any) -> tuple[float, float, int] | None:
    try:
        import vectorbt as vbt
    except Exception:
        return None
    close, open_ = df["Close"], df["Open"]
    t0 = time.perf_counter()
    fast, slow = close.rolling(10).mean(), close.rolling(30).mean()
    above = fast > slow
    below = fast < slow
    entries = (above & below.shift(1, fill_value=False)).shift(1, fill_value=False)
    exits = (below & above.shift(1, fill_value=False)).shift(1, fill_value=False)
    pf = vbt.Portfolio.from_signals(
        close, entries, exits, price=open_, size=np.inf, size_granularity=1, init_cash=CASH, fees=0.0, freq="1min"
    )
    value = float(pf.final_value())
    trades = int(pf.trades.closed.count())
    return time.perf_counter() - t0, value, trades


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100,000 bars, 2 runs")
    ap.add_argument("--no-vectorbt", action="store_true")
    args = ap.parse_args()
    n, repeat = (100_000, 2) if args.quick else (args.bars, args.repeat)
    series = make_series(n)
    df = frame(series)
    print(f"SMA 10/30 long-only all-in, zero fees, next-open fills, {n:,} one-minute bars, {repeat} runs each")
    vbt_ok = not args.no_vectorbt and vectorbt_run(df.iloc[:2000]) is not None  # numba compiles here
    times: dict[str, list[float]] = {"ours": [], "backtesting.py": [], "vectorbt": []}
    cpu: dict[str, list[float]] = {"ours": [], "backtesting.py": []}
    results: dict[str, tuple[float, int]] = {}
    for k in range(repeat):
        dt, eq, tr, c = ours(series)
        times["ours"].append(dt)
        cpu["ours"].append(c)
        results["ours"] = (eq, tr)
        dt, eq, tr, c = backtesting_py(df)
        times["backtesting.py"].append(dt)
        cpu["backtesting.py"].append(c)
        results["backtesting.py"] = (eq, tr)
        if vbt_ok:
            v = vectorbt_run(df)
            assert v is not None
            times["vectorbt"].append(v[0])
            results["vectorbt"] = (v[1], v[2])
        print(f"  run {k + 1}: " + "  ".join(f"{name} {ts[-1]:.3f} s" for name, ts in times.items() if ts))
    med = {name: statistics.median(ts) for name, ts in times.items() if ts}
    for name, (eq, tr) in results.items():
        print(f"  {name:15s} median {med[name]:7.3f} s   final equity {eq:,.2f}   trades {tr}")
    eq_ours = results["ours"][0]
    equal = abs(eq_ours - results["backtesting.py"][0]) < 0.005 and results["ours"][1] == results["backtesting.py"][1]
    out: dict[str, Any] = {
        "bench": "backtest",
        "bars": n,
        "ours_s": round(med["ours"], 3),
        "backtesting_py_s": round(med["backtesting.py"], 3),
        "ratio": round(med["backtesting.py"] / med["ours"], 2),
        "ours_cpu_s": round(statistics.median(cpu["ours"]), 3),
        "backtesting_py_cpu_s": round(statistics.median(cpu["backtesting.py"]), 3),
        "cpu_ratio": round(statistics.median(cpu["backtesting.py"]) / statistics.median(cpu["ours"]), 2),
        "equity_equal": bool(equal),
    }
    if "vectorbt" in med:
        out["vectorbt_s"] = round(med["vectorbt"], 3)
        out["vectorbt_equity_equal"] = bool(abs(eq_ours - results["vectorbt"][0]) < 0.005)
    out["trades"] = results["ours"][1]
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
