"""Distributed mode: an API without a projection runner follows the workers' change notices.

``tradecore serve`` runs as a process with ``TRADECORE_RUN_PROJECTIONS=false`` (as in
docker-compose.yml) over this deployment's PostgreSQL stores and topics; what its
WebSocket clients receive and what its portfolio cache serves can only come from
``tradecore.projection-updates``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import websockets
from kafka_helpers import ROOT, Deployment, Proc, produce, split_url, wait_for

from adapters.eventstore.postgres import PostgresEventStore
from adapters.kafka.broker import free_port
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import MAX_KEYS_PER_TABLE, TopicNames, encode_update
from adapters.kafka.updates import UpdatesFollower, parse_notice
from adapters.readstore.postgres import PostgresReadStore
from adapters.time import SystemClock
from projections.portfolio import ACCOUNTS, ASSETS
from projections.positions import POSITIONS
from projections.registry import ALL_PROJECTIONS
from streams.runner import ProjectionRunner

pytestmark = pytest.mark.postgres

ADMIN = ("admin@example.com", "admin-password-123")
PASSWORD = "trader-pass-1"
BTC = "BTC/USDT"


# --- a distributed-mode API process ------------------------------------------------------------


@dataclass
class Server:
    proc: Proc
    base: str
    http: httpx.Client = field(init=False)
    admin: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base, timeout=10)
        token = self.http.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}).json()["token"]
        self.admin = {"Authorization": f"Bearer {token}"}

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")

    def trader(self, email: str) -> tuple[dict[str, str], str, str]:
        """(headers, token, paper account id) of a newly registered trader."""
        r = self.http.post("/api/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        return {"Authorization": f"Bearer {token}"}, token, r.json()["user"]["accounts"][0]["id"]

    def price(self, symbol: str, price: str) -> None:
        r = self.http.post("/api/simulation/prices", json={"symbol": symbol, "price": price}, headers=self.admin)
        assert r.status_code == 200, r.text

    def updates(self) -> dict[str, Any]:
        detailed = self.http.get("/api/health/detailed", headers=self.admin).json()
        return detailed["updates"]  # type: ignore[no-any-return]

    def wait_following(self) -> None:
        wait_for(lambda: self.updates()["connected"], 30, "the API to follow the change notices",
                 lambda: self.proc.tail())

    def wait_registered(self, d: Deployment) -> None:
        """Until the worker has created the read models (the API only reads them)."""

        def registered() -> bool:
            detailed = self.http.get("/api/health/detailed", headers=self.admin).json()
            return len(detailed["projections"]) == len(ALL_PROJECTIONS)

        wait_for(registered, 30, "the worker to register the projections", d.diagnostics)


def serve(d: Deployment, name: str = "api") -> Server:
    port = free_port()
    env = d.env(
        TRADECORE_ENVIRONMENT="test", TRADECORE_RUN_PROJECTIONS="false",
        TRADECORE_FIRST_ADMIN_EMAIL=ADMIN[0], TRADECORE_FIRST_ADMIN_PASSWORD=ADMIN[1],
        TRADECORE_ARGON2_TIME_COST="1", TRADECORE_ARGON2_MEMORY_COST="64", TRADECORE_ARGON2_PARALLELISM="1",
        TRADECORE_RATE_LIMIT_AUTH="1000/minute",
    )
    log = d.logs / f"{d.tag}-{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    proc = Proc(name, popen, log)
    d.procs.append(proc)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive(), proc.tail()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/api/health", timeout=1).status_code == 200
        return False

    wait_for(up, 30, "tradecore serve to answer", d.diagnostics)
    return Server(proc, base)


@pytest.fixture
def server(deployment: Deployment) -> Iterator[Server]:
    s = serve(deployment)
    yield s
    s.http.close()


async def receive(ws: Any, match: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
    """The first message ``match`` accepts (skipping others), within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching message within {timeout}s; got {seen}")
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            continue
        if match(msg):
            return msg  # type: ignore[no-any-return]
        seen.append(msg)


def portfolio(s: Server, headers: dict[str, str]) -> dict[str, Any]:
    r = s.http.get("/api/portfolio/paper", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- the tests ------------------------------------------------------------------------------------


def test_positions_socket_receives_the_position_of_an_http_order_through_the_kafka_notice(
    deployment: Deployment, server: Server
) -> None:
    deployment.relay()
    deployment.worker("w1")
    server.wait_following()
    server.wait_registered(deployment)
    headers, token, account = server.trader("follow@example.com")
    assert server.http.post("/api/funds/deposit", json={"amount": "10000"}, headers=headers).status_code == 200
    server.price(BTC, "50000")
    # The cache is on in distributed mode; the worker's portfolio notice must invalidate it.
    wait_for(lambda: Decimal(portfolio(server, headers)["cashBalance"]) == 10000, 30, "the deposit on the read side",
             deployment.diagnostics)

    async def run() -> dict[str, Any]:
        async with websockets.connect(f"{server.ws}/ws/positions?token={token}") as ws, httpx.AsyncClient(
            base_url=server.base, timeout=10
        ) as http:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (first["type"], first["channel"], first["data"]) == ("snapshot", "positions", [])
            r = await http.post("/api/orders", json={"symbol": BTC, "side": "buy", "quantity": "0.01",
                                                     "takeProfit": "60000"}, headers=headers)
            assert r.status_code == 201, r.text
            return await receive(ws, lambda m: m["type"] == "update" and m["channel"] == "positions")

    msg = asyncio.run(run())
    data = msg["data"]
    assert msg["kind"] == "position"
    assert (data["accountId"], data["symbol"], data["quantity"], data["tpPrice"], data["status"]) == (
        account, BTC, "0.01", "60000", "OPEN")
    wait_for(lambda: len(portfolio(server, headers)["positions"]) == 1, 20, "the cached portfolio to be dropped")
    updates = server.updates()
    assert updates["connected"] and updates["notices"] > 0 and updates["positions"]["positions"] > 0
    detailed = server.http.get("/api/health/detailed", headers=server.admin).json()
    assert {"service": "broker", "status": "healthy"}.items() <= next(
        s for s in detailed["services"] if s["service"] == "broker").items()
    assert any(t["name"] == "updates-follower" and t["running"] for t in detailed["tasks"])
    assert "projection-runner" not in {t["name"] for t in detailed["tasks"]}


def test_a_truncated_notice_resends_snapshots_and_clears_the_portfolio_cache(
    deployment: Deployment, server: Server, read_store: PostgresReadStore
) -> None:
    # No worker here: the test applies the projections itself (publishing nothing), so the
    # API learns of the change only from the truncated notices it sends afterwards.
    dsn, schema = split_url(deployment.event_store_url)
    store = PostgresEventStore(dsn, SystemClock(), schema=schema)
    runner = ProjectionRunner(store, read_store, ALL_PROJECTIONS)
    try:
        server.wait_following()
        headers, token, account = server.trader("truncated@example.com")
        server.http.post("/api/funds/deposit", json={"amount": "10000"}, headers=headers)
        server.price(BTC, "50000")
        runner.catch_up()
        before = portfolio(server, headers)  # cached from here on
        assert before["positions"] == []

        async def run() -> dict[str, Any]:
            async with websockets.connect(f"{server.ws}/ws/positions?token={token}") as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["data"] == []
                r = server.http.post("/api/orders", json={"symbol": BTC, "side": "buy", "quantity": "0.01"},
                                     headers=headers)
                assert r.status_code == 201, r.text
                wait_for(lambda: any(e.type == "PositionOpened" for e in store.read_all(0, 10_000)), 10,
                         "the fill in the event store")
                runner.catch_up()
                assert portfolio(server, headers) == before  # no notice yet: the cache still serves
                many = {f"x{i}" for i in range(MAX_KEYS_PER_TABLE)}
                head = store.last_position()
                await asyncio.to_thread(produce, deployment.bootstrap, deployment.topics.updates, [
                    (*encode_update("positions", 1, head, {POSITIONS: many | {"p"}}, datetime.now(UTC)), []),
                    (*encode_update("portfolio", 1, head, {ACCOUNTS: {account}, ASSETS: many | {"a"}},
                                    datetime.now(UTC)), []),
                ])
                return await receive(ws, lambda m: m["type"] == "snapshot")

        snap = asyncio.run(run())
        assert snap["channel"] == "positions"
        assert [(p["accountId"], p["symbol"], p["status"]) for p in snap["data"]] == [(account, BTC, "OPEN")]
        assert len(portfolio(server, headers)["positions"]) == 1  # the truncated notice cleared the cache
        updates = server.updates()
        assert updates["truncated"] == 2 and updates["notices"] == 2
    finally:
        store.close()


# --- the follower on its own ----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_change(self, projection: str, changed: dict[str, set[str]]) -> None:
        self.calls.append(("change", (projection, changed)))

    def on_truncated(self, projection: str, tables: frozenset[str]) -> None:
        self.calls.append(("truncated", (projection, tables)))

    def on_resync(self) -> None:
        self.calls.append(("resync", None))

    def on_lost(self) -> None:
        self.calls.append(("lost", None))


async def _forward(target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    up_r, up_w = await asyncio.open_connection(*target)

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


def test_the_follower_retries_with_backoff_until_the_broker_answers_then_resyncs(deployment: Deployment) -> None:
    port = free_port()
    host, real_port = deployment.bootstrap.rsplit(":", 1)
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}",
                             topic_prefix=deployment.settings().topic_prefix)
    listener = Recorder()
    follower = UpdatesFollower(settings, listener, backoff_initial=0.1, backoff_max=0.4)

    async def run() -> None:
        task = asyncio.create_task(follower.run())
        try:
            while follower.counts["failures"] < 3:  # nothing listens on the bootstrap port yet
                await asyncio.sleep(0.05)
            assert not follower.connected and follower.state == "reconnecting" and follower.last_error
            assert listener.calls == []
            # The broker "comes up": a forwarder on the bootstrap port (metadata then points at the real one).
            proxy = await asyncio.start_server(lambda r, w: _forward((host, int(real_port)), r, w), "127.0.0.1", port)
            async with proxy:
                deadline = time.monotonic() + 20
                while not follower.connected:
                    assert time.monotonic() < deadline, follower.status()
                    await asyncio.sleep(0.05)
                assert listener.calls == [("resync", None)]
                await asyncio.to_thread(produce, deployment.bootstrap, deployment.topics.updates, [
                    (*encode_update("positions", 1, 7, {POSITIONS: {"p1"}}, datetime.now(UTC)), []),
                    (b"positions", b"not json", []),
                ])
                while len(listener.calls) < 3:
                    assert time.monotonic() < deadline, follower.status()
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert listener.calls == [("resync", None), ("change", ("positions", {POSITIONS: {"p1"}})),
                                  ("resync", None), ("lost", None)]
        assert follower.state == "stopped" and follower.counts["malformed"] == 1
        assert follower.positions == {"positions": 7}

    asyncio.run(run())


def test_a_notice_round_trips_and_a_truncated_table_has_no_keys() -> None:
    keys = {f"k{i}" for i in range(MAX_KEYS_PER_TABLE + 1)}
    changed = {ACCOUNTS: {"acc1"}, ASSETS: keys, "empty": set()}
    _, value = encode_update("portfolio", 2, 42, changed, datetime.now(UTC))
    notice = parse_notice(value)
    assert (notice.projection, notice.copy, notice.position) == ("portfolio", 2, 42)
    assert notice.changed == {ACCOUNTS: {"acc1"}} and notice.truncated == frozenset({ASSETS})
    for bad in (None, b"[]", b"{}", b'{"projection": "p", "tables": []}', b"\xff"):
        with pytest.raises(ValueError):
            parse_notice(bad)


def test_the_follower_stalls_when_the_broker_stops_and_resyncs_when_it_is_back() -> None:
    from adapters.kafka.broker import NoidaBroker
    from adapters.kafka.topics import ensure_topics

    broker = NoidaBroker()  # its own: stopping the session's broker would break the other tests
    broker.start()
    try:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        asyncio.run(ensure_topics(settings))
        listener = Recorder()
        follower = UpdatesFollower(settings, listener, backoff_initial=0.1, backoff_max=0.5, stall_after=0.5,
                                   stale_after=2.0)

        async def until(what: Callable[[], bool], timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while not what():
                assert time.monotonic() < deadline, follower.status()
                await asyncio.sleep(0.05)

        async def run() -> None:
            task = asyncio.create_task(follower.run())
            try:
                await until(lambda: follower.connected)
                await asyncio.to_thread(broker.stop)
                await until(lambda: follower.state == "stalled")
                assert [c for c, _ in listener.calls] == ["resync", "lost"]  # the cache stops serving now
                await until(lambda: follower.counts["failures"] >= 2)  # torn down, retrying with backoff
                await asyncio.to_thread(broker.start)
                await until(lambda: follower.connected)
                await asyncio.to_thread(produce, broker.bootstrap, TopicNames.of(settings).updates,
                                        [(*encode_update("orders", 1, 3, {"orders": {"o1"}}, datetime.now(UTC)), [])])
                await until(lambda: len(listener.calls) == 4)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert listener.calls == [("resync", None), ("lost", None), ("resync", None),
                                      ("change", ("orders", {"orders": {"o1"}})), ("lost", None)]
            assert follower.counts["resyncs"] == 2

        asyncio.run(run())
    finally:
        broker.close()
