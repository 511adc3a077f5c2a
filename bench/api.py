"""API benchmark: ``GET /api/portfolio/paper`` (authenticated) beside ``GET /api/health``.

Starts ``tradecore serve`` (SQLite event and read stores in a temporary directory, paper
venue and projection runner in process), registers a trader with a funded account and a
few open positions (prices fed through the admin simulation endpoint), then drives both
endpoints with wrk (Debian package ``wrk``) in the same run, alternating, and reports
requests/s and p99 latency. The portfolio is read through the whole stack: bearer-token
auth, the user's role from its stream, the rate limiter (a limit high enough not to
trip, O(1) sliding-window counter), and the portfolio read model (served from the cache
the projection runner invalidates).

Last line: one JSON object
``{"bench":"api","portfolio_rps":...,"health_rps":...,"ratio":...,"portfolio_p99_ms":...}``.
Targets: ratio >= 0.7, p99 <= 20 ms.

    python bench/api.py [--duration 10] [--connections 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN = ("bench-admin@example.com", "bench-admin-password")
USER = ("bench-user@example.com", "bench-user-password")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRADECORE_ENVIRONMENT": "test",  # the simulation price endpoint feeds the paper venue
        "TRADECORE_JWT_SECRET": secrets.token_urlsafe(48),
        "TRADECORE_EVENT_STORE_URL": f"sqlite:///{data}/events.db",
        "TRADECORE_READ_STORE_URL": f"sqlite:///{data}/read.db",
        "TRADECORE_FIRST_ADMIN_EMAIL": ADMIN[0],
        "TRADECORE_FIRST_ADMIN_PASSWORD": ADMIN[1],
        "TRADECORE_RATE_LIMIT_DEFAULT": "100000000/hour",
        "TRADECORE_RATE_LIMIT_STRATEGY": "sliding-window-counter",
        "TRADECORE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    log = open(data / "serve.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-c", "from api.cli import main; main()", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, proc: subprocess.Popen[bytes], data: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not start:\n" + (data / "serve.log").read_text(errors="replace"))


def prepare(base: str) -> str:
    """A trader with funds and three open positions; returns the trader's access token."""
    with httpx.Client(base_url=base, timeout=30) as c:
        admin = c.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}).json()["token"]
        ah = {"Authorization": f"Bearer {admin}"}
        c.post("/api/auth/register", json={"email": USER[0], "password": USER[1]}).raise_for_status()
        token = c.post("/api/auth/login", json={"email": USER[0], "password": USER[1]}).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        c.post("/api/funds/deposit", json={"amount": "100000"}, headers=h).raise_for_status()
        for symbol, price, qty in (("BTC/USDT", "60000", "0.1"), ("ETH/USDT", "3000", "2"), ("SOL/USDT", "150", "20")):
            c.post("/api/simulation/prices", json={"symbol": symbol, "price": price}, headers=ah).raise_for_status()
            c.post("/api/orders", json={"symbol": symbol, "side": "buy", "quantity": qty,
                                        "takeProfit": str(int(price) * 2)}, headers=h).raise_for_status()
        deadline = time.monotonic() + 30
        while len(c.get("/api/portfolio/paper", headers=h).json()["positions"]) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("positions did not show up in the portfolio")
            time.sleep(0.05)
        return token


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, duration: int, connections: int, headers: dict[str, str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="health/portfolio pairs; the median round counts")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    data = Path(tempfile.mkdtemp(prefix="tradecore-bench-api-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(data, port)
    try:
        wait_ready(base, proc, data)
        token = prepare(base)
        auth = {"Authorization": f"Bearer {token}"}
        wrk(f"{base}/api/health", 2, args.connections, {})  # warm-up
        wrk(f"{base}/api/portfolio/paper", 2, args.connections, auth)
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            health = wrk(f"{base}/api/health", args.duration, args.connections, {})
            portfolio = wrk(f"{base}/api/portfolio/paper", args.duration, args.connections, auth)
            rounds.append({"health": health, "portfolio": portfolio})
            print(f"health    {health['rps']:9.1f} req/s  p50 {health['p50_ms']:6.2f} ms  p99 "
                  f"{health['p99_ms']:6.2f} ms  non-2xx {health['errors']}")
            print(f"portfolio {portfolio['rps']:9.1f} req/s  p50 {portfolio['p50_ms']:6.2f} ms  p99 "
                  f"{portfolio['p99_ms']:6.2f} ms  non-2xx {portfolio['errors']}")
        # The median round by ratio: one noisy round (a shared 2-core machine) does not decide.
        best = sorted(rounds, key=lambda r: r["portfolio"]["rps"] / r["health"]["rps"])[len(rounds) // 2]
        if any(r["portfolio"]["errors"] or r["health"]["errors"] for r in rounds):
            sys.exit("non-2xx responses during the run")
        result = {
            "bench": "api",
            "portfolio_rps": round(best["portfolio"]["rps"], 1),
            "health_rps": round(best["health"]["rps"], 1),
            "ratio": round(best["portfolio"]["rps"] / best["health"]["rps"], 3),
            "portfolio_p99_ms": round(best["portfolio"]["p99_ms"], 2),
            "health_p99_ms": round(best["health"]["p99_ms"], 2),
            "connections": args.connections,
            "duration_s": args.duration,
        }
        print(json.dumps(result))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
