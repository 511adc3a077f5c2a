"""Strategies: validated parameters, registry, and no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest
from bot_factories import random_walk

from domain.errors import NotFound, ValidationFailed
from domain.strategies import REGISTRY, Action, build, categories, templates
from domain.strategies import indicators as ind

SERIES = random_walk(1200, seed=3, vol=0.01)

CASES = {
    "sma_cross": {"fast": 5, "slow": 20},
    "ema_cross": {"fast": 8, "slow": 21},
    "macd": {},
    "rsi": {"period": 10},
    "bollinger": {"period": 15, "std_dev": "1.5"},
    "momentum": {"period": 12, "threshold": "0.005"},
    "ensemble": {
        "members": [
            {"strategy": "sma_cross", "parameters": {"fast": 5, "slow": 20}, "weight": 2},
            {"strategy": "rsi", "weight": "1"},
            {"strategy": "momentum"},
        ],
        "threshold": "0.3",
    },
}


def test_every_registered_strategy_has_a_case():
    assert set(CASES) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(CASES))
def test_changing_the_future_leaves_past_signals_identical(name):
    strat = build(name, CASES[name])
    full = strat.compute(SERIES)
    cut = 700
    rng = np.random.default_rng(99)
    shocked = SERIES.__class__(
        time=SERIES.time,
        open=np.concatenate((SERIES.open[:cut], SERIES.open[cut:] * rng.uniform(0.5, 1.5, SERIES.open.size - cut))),
        high=np.concatenate((SERIES.high[:cut], SERIES.high[cut:] * 2.0)),
        low=np.concatenate((SERIES.low[:cut], SERIES.low[cut:] * 0.4)),
        close=np.concatenate((SERIES.close[:cut], SERIES.close[cut:] * rng.uniform(0.5, 1.5, SERIES.close.size - cut))),
        volume=SERIES.volume,
    )
    changed = strat.compute(shocked)
    assert np.array_equal(full.action[:cut], changed.action[:cut])
    assert np.array_equal(full.confidence[:cut], changed.confidence[:cut])
    for key, values in full.indicators.items():
        assert np.array_equal(values[:cut], changed.indicators[key][:cut], equal_nan=True), key
    assert not np.array_equal(full.action, changed.action) or name == "ensemble"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_prefix_gives_the_same_signals_as_the_whole_series(name):
    strat = build(name, CASES[name])
    full = strat.compute(SERIES)
    for n in (50, 333, 900):
        head = strat.compute(SERIES.head(n))
        assert np.array_equal(full.action[:n], head.action)
        assert head.at(n - 1) == full.at(n - 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_strategies_signal_and_explain_themselves(name):
    frame = build(name, CASES[name]).compute(SERIES)
    idx = frame.signal_indices()
    assert idx.size > 0
    sig = frame.at(int(idx[0]))
    assert sig is not None and sig.action in (Action.BUY, Action.SELL)
    assert 0.0 <= sig.confidence <= 1.0
    assert "close" in sig.indicators and all(isinstance(v, str) for v in sig.indicators.values())


def test_sma_cross_buys_on_the_bar_the_fast_average_crosses_above():
    close = np.array([10, 10, 10, 10, 9, 8, 9, 11, 13, 12, 10, 8], dtype=float)
    bars = SERIES.head(close.size).__class__.from_arrays(np.arange(close.size), close, close, close, close)
    frame = build("sma_cross", {"fast": 2, "slow": 3}).compute(bars)
    fast, slow = ind.sma(close, 2), ind.sma(close, 3)
    buys = [i for i in range(1, close.size) if fast[i - 1] < slow[i - 1] and fast[i] > slow[i]]
    sells = [i for i in range(1, close.size) if fast[i - 1] > slow[i - 1] and fast[i] < slow[i]]
    assert list(np.flatnonzero(frame.action == 1)) == buys == [7]
    assert list(np.flatnonzero(frame.action == -1)) == sells == [10]


def test_exact_ties_between_averages_are_not_crossings():
    # SMA2 < SMA4 at bar 3, exactly equal at bar 4 (10.5), above at bar 5: a touch is not a cross,
    # and the tie is exact (decimal prices are averaged exactly), not decided by rounding noise.
    close = np.array([10.9, 10.4, 10.6, 10.2, 10.8, 11.5], dtype=float)
    fast, slow = ind.sma(close, 2), ind.sma(close, 4)
    assert fast[4] == slow[4] == 10.5
    assert fast[3] < slow[3] and fast[5] > slow[5]
    assert not ind.crossed_above(fast, slow).any() and not ind.crossed_below(fast, slow).any()


@pytest.mark.parametrize(
    "name, params",
    [
        ("sma_cross", {"fast": 30, "slow": 10}),
        ("sma_cross", {"fast": 0}),
        ("sma_cross", {"speed": 3}),
        ("rsi", {"oversold": 80, "overbought": 70}),
        ("bollinger", {"std_dev": "-1"}),
        ("ensemble", {"members": [{"strategy": "sma_cross"}]}),
        ("ensemble", {"members": [{"strategy": "nope"}, {"strategy": "rsi"}]}),
    ],
)
def test_invalid_parameters_are_refused_with_a_validation_error(name, params):
    with pytest.raises(ValidationFailed):
        build(name, params)


def test_unknown_strategy_is_not_found():
    with pytest.raises(NotFound):
        build("astrology", {})


def test_seed_style_parameter_names_are_accepted():
    s = build("macd", {"fast_period": 12, "slow_period": 26, "signal_period": 9})
    assert s.parameters == {"fast": 12, "slow": 26, "signal": 9}


def test_templates_and_categories_are_listable_and_filterable():
    all_t = templates()
    assert {t["id"] for t in all_t} == set(REGISTRY)
    for t in all_t:
        assert t["category"] and t["risk_level"] in ("low", "medium", "high") and "parameter_schema" in t
    trend = templates(category="trend_following")
    assert {t["id"] for t in trend} == {"sma_cross", "ema_cross", "macd"}
    assert {t["id"] for t in templates(risk_level="low")} == {"bollinger"}
    cats = {c["id"]: c for c in categories({"sma_cross": 2, "rsi": 1})}
    assert cats["trend_following"]["usage_count"] == 2 and cats["mean_reversion"]["usage_count"] == 1


def test_ensemble_votes_with_weights():
    a = {"strategy": "sma_cross", "parameters": {"fast": 5, "slow": 20}, "weight": 3}
    b = {"strategy": "momentum", "parameters": {"period": 12}, "weight": 1}
    heavy = build("ensemble", {"members": [a, b], "threshold": "0.7"}).compute(SERIES)
    sma = build("sma_cross", {"fast": 5, "slow": 20}).compute(SERIES)
    # With 3/4 of the weight, every ensemble buy happens while the SMA member's stance is long.
    stance = 0
    stances = []
    for act in sma.action:
        stance = act if act != 0 else stance
        stances.append(stance)
    for i in np.flatnonzero(heavy.action == 1):
        assert stances[i] == 1
    assert heavy.signal_indices().size > 0


def test_decimal_places_of_a_long_series_is_decided_on_the_whole_series():
    prices = np.round(np.linspace(100.0, 200.0, 10_000), 2)
    assert ind.decimal_places(prices) == 2
    prices[9_000] = 123.4567  # beyond the prefix the shortcut looks at first
    assert ind.decimal_places(prices) == 4
    prices[9_000] = 1.0 / 3.0
    assert ind.decimal_places(prices) is None
    full = np.random.default_rng(1).normal(100.0, 1.0, 10_000)  # full float precision: no exact scale
    assert ind.decimal_places(full) is None
