"""Market data: CSV import with exact prices, storage backends, replay order, ccxt download."""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from adapters.marketdata import (
    Bar,
    MarketDataError,
    MarketDataUnavailable,
    MemoryOhlcvStore,
    PostgresOhlcvStore,
    SqliteOhlcvStore,
    download_ccxt,
    import_csv,
    load_csv_series,
    load_series,
    read_csv,
    replay,
    timeframe_delta,
)

CSV = """timestamp,open,high,low,close,volume
2024-01-01T02:00:00Z,42010.55,42100.00,41990.10,42050.25,12.5
2024-01-01T00:00:00Z,42000.10,42080.00,41950.00,42010.55,10.0
2024-01-01T01:00:00Z,42010.55,42020.00,41900.00,42010.55,7.25
"""


@pytest.fixture
def csv_file(tmp_path):
    p = tmp_path / "btc.csv"
    p.write_text(CSV)
    return p


def test_csv_rows_read_as_exact_decimals(csv_file):
    bars = list(read_csv(csv_file))
    assert bars[0].open == Decimal("42010.55") and bars[0].time == datetime(2024, 1, 1, 2, tzinfo=UTC)
    assert bars[2].volume == Decimal("7.25")


def test_csv_without_required_columns_is_refused(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("time,price\n2024-01-01,1\n")
    with pytest.raises(MarketDataError):
        list(read_csv(p))


def test_backtesting_py_style_csv_with_unnamed_date_column(tmp_path):
    p = tmp_path / "goog.csv"
    p.write_text(",Open,High,Low,Close,Volume\n2004-08-19,100,104.06,95.96,100.34,22351900\n")
    (bar,) = read_csv(p)
    assert bar.time == datetime(2004, 8, 19, tzinfo=UTC) and bar.close == Decimal("100.34")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_import_stores_exact_prices_and_replays_in_time_order(kind, csv_file, tmp_path):
    store = MemoryOhlcvStore() if kind == "memory" else SqliteOhlcvStore(str(tmp_path / "md.db"))
    seen = []
    n = import_csv(store, csv_file, "btc/usdt", "1h", batch=2, progress=seen.append)
    assert n == 3 and sum(seen) == 3
    bars = store.load("BTC/USDT", "1h")
    assert [b.time.hour for b in bars] == [0, 1, 2]
    assert bars[2].close == Decimal("42050.25") and isinstance(bars[2].close, Decimal)
    assert store.series()[0]["bars"] == 3
    # idempotent re-import
    import_csv(store, csv_file, "BTC/USDT", "1h")
    assert len(store.load("BTC/USDT", "1h")) == 3
    window = store.load("BTC/USDT", "1h", datetime(2024, 1, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 2, tzinfo=UTC))
    assert [b.time.hour for b in window] == [1]
    series = load_series(store, "BTC/USDT", "1h")
    assert [b.close for b in replay(series)] == [b.close for b in bars]
    store.close()


@pytest.mark.postgres
def test_postgres_store_round_trips_exact_prices(postgres_dsn, csv_file):
    store = PostgresOhlcvStore(postgres_dsn)
    import_csv(store, csv_file, "BTC/USDT", "1h")
    bars = store.load("BTC/USDT", "1h")
    assert [str(b.open) for b in bars] == ["42000.10", "42010.55", "42010.55"]
    store.close()


def test_csv_series_is_sorted_and_clipped(csv_file):
    s = load_csv_series(csv_file, start=datetime(2024, 1, 1, 1, tzinfo=UTC))
    assert len(s) == 2 and np.all(np.diff(s.time) > 0)


def test_timeframes():
    assert timeframe_delta("15m") == timedelta(minutes=15) and timeframe_delta("1d") == timedelta(days=1)
    with pytest.raises(MarketDataError):
        timeframe_delta("1 hour")


PAYLOADS = Path(__file__).parent / "payloads"


class BinanceStub(ThreadingHTTPServer):
    """A local server answering like Binance's spot REST API, from recorded payloads.

    Serves ``/api/v3/exchangeInfo`` (ccxt's load_markets) and ``/api/v3/klines`` (fetch_ohlcv)
    honouring ``startTime`` and ``limit`` as Binance does; records every request path.
    """

    def __init__(self) -> None:
        self.exchange_info = (PAYLOADS / "binance_exchange_info.json").read_bytes()
        self.klines = json.loads((PAYLOADS / "binance_klines_btcusdt_1h.json").read_text())
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _BinanceHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _BinanceHandler(BaseHTTPRequestHandler):
    server: BinanceStub

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append(url.path)
        if url.path == "/api/v3/exchangeInfo":
            body = self.server.exchange_info
        elif url.path == "/api/v3/klines" and query.get("symbol") == "BTCUSDT" and query.get("interval") == "1h":
            start = int(query.get("startTime", 0))
            limit = int(query.get("limit", 500))
            body = json.dumps([k for k in self.server.klines if k[0] >= start][:limit]).encode()
        else:
            body = b'{"code":-1121,"msg":"Invalid symbol."}'
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _binance_at(base: str):
    """ccxt's own Binance client with every API root pointed at ``base`` (spot markets only)."""
    ccxt = pytest.importorskip("ccxt")
    ex = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}, "timeout": 5000})
    roots = {"public": "/api/v3", "private": "/api/v3", "v1": "/api/v1"}
    ex.urls["api"] = {key: base + roots.get(key, "/unused/" + key) for key in ex.urls["api"]}
    return ex


@pytest.fixture
def binance_stub():
    server = BinanceStub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_ccxt_download_pages_through_candles(binance_stub):
    ex = _binance_at(binance_stub.url)

    bars = download_ccxt("binance", "BTC/USDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), limit=2, exchange=ex)

    assert [b.close for b in bars] == [Decimal(k[4]) for k in binance_stub.klines]
    assert bars[0].time == datetime(2024, 1, 1, tzinfo=UTC) and bars[0].open == Decimal("42283.58")
    assert bars[-1].volume == Decimal("715.65177")
    # 5 candles with limit 2: pages of 2, 2 and 1 (a short page ends the download)
    assert binance_stub.requests.count("/api/v3/klines") == 3


def test_ccxt_download_stops_at_until(binance_stub):
    ex = _binance_at(binance_stub.url)

    bars = download_ccxt(
        "binance", "BTC/USDT", "1h", datetime(2024, 1, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 3, tzinfo=UTC),
        exchange=ex,
    )

    assert [b.time.hour for b in bars] == [1, 2]


def test_ccxt_download_without_network_is_reported_cleanly():
    with socket.socket() as s:  # a port nothing listens on: ccxt's NetworkError, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = _binance_at(f"http://127.0.0.1:{port}")

    with pytest.raises(MarketDataUnavailable, match="binance"):
        download_ccxt("binance", "BTC/USDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), exchange=ex)


@pytest.mark.skipif(os.environ.get("TRADECORE_NETWORK") != "1", reason="no network here")
def test_ccxt_real_download():  # pragma: no cover - needs a network
    pytest.importorskip("ccxt")
    bars = download_ccxt(
        "binance", "BTC/USDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    assert len(bars) == 24


def test_bars_reject_inconsistent_prices():
    with pytest.raises(MarketDataError):
        Bar(datetime(2024, 1, 1, tzinfo=UTC), Decimal(10), Decimal(9), Decimal(8), Decimal(10))


def test_bar_at_builds_the_bar_the_checked_constructor_builds():
    from adapters.marketdata import bar_at, from_ns, to_decimal
    from domain.strategies import Bars

    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    series = Bars.from_arrays(np.arange(200, dtype=np.int64) * 60 * 10**9, close * 1.001, close * 1.01,
                              close * 0.99, close, np.full(200, 3.5))
    for i in range(200):
        checked = Bar(from_ns(int(series.time[i])), *(to_decimal(c[i]) for c in
                      (series.open, series.high, series.low, series.close, series.volume)))
        assert bar_at(series, i) == checked
        assert bar_at(series, i, volume=False) == Bar(checked.time, checked.open, checked.high, checked.low,
                                                      checked.close)
    bad = Bars.from_arrays(series.time[:2], [10.0, 10.0], [9.0, 11.0], [8.0, 9.0], [10.0, 10.0])
    with pytest.raises(MarketDataError):
        bar_at(bad, 0)
