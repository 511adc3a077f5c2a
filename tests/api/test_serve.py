"""End to end against a running ``tradecore serve`` (a subprocess, SQLite stores, real HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin@example.com", "admin-password-123")
BTC = "BTC/USDT"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        **os.environ,
        "TRADECORE_ENVIRONMENT": "test",
        "TRADECORE_EVENT_STORE_URL": f"sqlite:///{data}/events.db",
        "TRADECORE_READ_STORE_URL": f"sqlite:///{data}/read.db",
        "TRADECORE_FIRST_ADMIN_EMAIL": ADMIN[0],
        "TRADECORE_FIRST_ADMIN_PASSWORD": ADMIN[1],
        "TRADECORE_ARGON2_TIME_COST": "1",
        "TRADECORE_ARGON2_MEMORY_COST": "64",
        "TRADECORE_ARGON2_PARALLELISM": "1",
        "TRADECORE_RATE_LIMIT_AUTH": "1000/minute",
        "PYTHONPATH": str(ROOT),
    }
    log = open(data / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "from api.cli import main; main()", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tradecore serve did not start:\n" + (data / "serve.log").read_text())
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def poll(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_full_journey_against_tradecore_serve(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as c:
        admin = c.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})
        assert admin.status_code == 200 and admin.json()["user"]["role"] == "admin"
        ah = {"Authorization": f"Bearer {admin.json()['token']}"}
        reg = c.post("/api/auth/register", json={"email": "serve-trader@example.com", "password": "trader-pass-1"})
        assert reg.status_code == 201, reg.text
        login = c.post("/api/auth/login", json={"email": "serve-trader@example.com", "password": "trader-pass-1"})
        h = {"Authorization": f"Bearer {login.json()['token']}"}
        assert c.post("/api/funds/deposit", json={"amount": "10000"}, headers=h).status_code == 200
        bot = c.post("/api/bots/", json={"name": "s", "tradingPair": BTC, "strategy": "momentum"}, headers=h).json()
        assert c.post(f"/api/bots/{bot['id']}/start", headers=h).json()["success"] is True
        # a market-data tick (simulation endpoint, admin, test environment)
        assert c.post("/api/simulation/prices", json={"symbol": BTC, "price": "50000"}, headers=ah).status_code == 200
        r = c.post("/api/orders", json={"symbol": BTC, "side": "buy", "quantity": "0.1", "stopLoss": "40000",
                                        "botId": bot["id"]}, headers={**h, "Idempotency-Key": "serve-1"})
        assert r.status_code == 201, r.text
        pos = poll(lambda: c.get("/api/positions", params={"status": "open"}, headers=h).json())[0]
        assert pos["slPrice"] == "40000" and pos["entryPrice"] == "50000"
        c.post("/api/simulation/prices", json={"symbol": BTC, "price": "51000"}, headers=ah)
        closes = [c.post(f"/api/positions/{pos['id']}/close", headers=h) for _ in range(2)]
        assert [x.status_code for x in closes] == [200, 200]
        poll(lambda: c.get(f"/api/positions/{pos['id']}", headers=h).json()["status"] == "CLOSED")
        assert c.post(f"/api/positions/{pos['id']}/close", headers=h).json()["status"] == "closed"
        pf = poll(lambda: (p := c.get("/api/portfolio/paper", headers=h).json())["realisedPnl"] == "100.0" and p)
        assert Decimal(pf["totalValue"]) == Decimal(10000) + 100 - Decimal("5.0") - Decimal("5.1")
        perf = c.get("/api/analytics/performance", params={"period": "1d"}, headers=h).json()
        assert perf["totalTrades"] == 1 and perf["winRate"] == 1.0
        stop = c.post("/api/trading/emergency-stop", json={"reason": "serve test"}, headers=h).json()
        assert stop["halted"] is True and stop["stoppedBots"] == [bot["id"]]
        r = c.post("/api/orders", json={"symbol": BTC, "side": "buy", "quantity": "0.01"}, headers=h)
        assert r.status_code == 409 and r.json()["error"]["code"] == "TRADING_HALTED"
        assert r.headers["x-request-id"] == r.json()["request_id"]
        assert "tradecore_http_requests_total" in c.get("/metrics").text
        detailed = c.get("/api/health/detailed", headers=ah).json()
        assert all(p["state"] == "ok" for p in detailed["projections"])


def test_websocket_over_a_real_socket(server: str) -> None:
    ws_base = server.replace("http://", "ws://")
    with httpx.Client(base_url=server, timeout=10) as c:
        c.post("/api/auth/register", json={"email": "serve-ws@example.com", "password": "trader-pass-1"})
        token = c.post("/api/auth/login", json={"email": "serve-ws@example.com",
                                                "password": "trader-pass-1"}).json()["token"]

    async def run() -> tuple[dict[str, Any], int | None]:
        async with websockets.connect(f"{ws_base}/ws/portfolio?token={token}") as ws:
            snap = json.loads(await asyncio.wait_for(ws.recv(), 10))
        async with websockets.connect(f"{ws_base}/ws/positions?token=bad") as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as exc:
                return snap, exc.rcvd.code if exc.rcvd else None
        return snap, None

    snap, code = asyncio.run(run())
    assert snap["type"] == "snapshot" and snap["data"]["mode"] == "paper"
    assert code == 1008
