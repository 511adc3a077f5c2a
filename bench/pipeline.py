"""Pipeline benchmark: commands -> relay -> Kafka -> faust worker -> PostgreSQL read model.

Run ``python bench/pipeline.py`` (about a minute; ``--seconds 5`` for a quick look).

1. A fresh broker (``kafka_bootstrap()``: an address in the environment, else
   testcontainers, else a new noida-db process), a fresh PostgreSQL database (on
   ``DATABASE_URL`` or 127.0.0.1:5432) holding the event store and the read store.
2. Accounts are opened and funded (untimed); ``tradecore relay`` and ``tradecore worker``
   run as processes, as deployed, and catch up.
3. ``--rate`` PlaceOrder commands per second for ``--seconds`` seconds through the real
   ``CommandBus`` (open loop: a scheduler issues each command at its time slot into a pool
   of writer threads; each command appends one ``OrderAccepted``). Latency per command:
   from the moment its append returned (the event is durable) to the moment the portfolio
   projection's checkpoint in PostgreSQL reaches the event's position (rows and checkpoint
   are committed in one transaction, so the effect is visible then), noted by a watcher
   process (its own GIL: the load generator's threads do not delay its clock readings)
   woken by a NOTIFY that a trigger on the checkpoint row sends at commit
   (``--watch poll``: reading the checkpoint every 0.5 ms instead, as before).
4. The relay's maximum rate: a second relay, with its own checkpoint and topic, publishes
   the whole log from position 0; events / seconds until its last ack.

The last line of output is one JSON object:
``{"bench":"pipeline","rate_cmd_s":500,"p50_ms":...,"p99_ms":...,"relay_max_ev_s":...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from adapters.eventstore.postgres import PostgresEventStore  # noqa: E402
from adapters.kafka.broker import kafka_bootstrap  # noqa: E402
from adapters.kafka.relay import Relay, open_relay_checkpoints  # noqa: E402
from adapters.kafka.settings import KafkaSettings  # noqa: E402
from adapters.kafka.topics import ensure_topics  # noqa: E402
from adapters.logging import configure_logging  # noqa: E402
from adapters.market import PriceBook, StaticMarkets  # noqa: E402
from adapters.time import SystemClock  # noqa: E402
from commands.bus import CommandBus  # noqa: E402
from commands.messages import Deposit, OpenAccount, PlaceOrder, SetRiskLimits  # noqa: E402
from domain.values import OrderType, Side  # noqa: E402

ADMIN_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
SYMBOL = "BTC/USDT"
PRICE = Decimal(60000)


def say(*parts: object) -> None:
    print(*parts, flush=True)


class TimedStore:
    """The event store, noting when each append returned (by the last position it wrote)."""

    def __init__(self, inner: PostgresEventStore) -> None:
        self._inner = inner
        self.appended: list[tuple[int, float]] = []
        self._lock = threading.Lock()
        self.recording = False

    def append(self, *args: Any, **kwargs: Any) -> Any:
        recs = self._inner.append(*args, **kwargs)
        if recs and self.recording:
            now = time.monotonic()  # the watcher process reads the same clock
            with self._lock:
                self.appended.append((recs[-1].position, now))
        return recs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_WATCH_CHANNEL = "bench_portfolio_checkpoint"


def checkpoint_sql(schema: str) -> str:
    return (
        f'SELECT c.position FROM "{schema}".projection_checkpoints c JOIN "{schema}".projection_active a'
        " ON a.name = c.name AND a.copy = c.copy WHERE c.name = %s"
    )


def current_checkpoint(conn: psycopg.Connection[Any], schema: str, projection: str = "portfolio") -> int:
    try:
        row = conn.execute(checkpoint_sql(schema), (projection,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0  # the worker has not created the read store yet
    return int(row[0]) if row else 0


def install_notify_trigger(dsn: str, schema: str, projection: str = "portfolio") -> None:
    """NOTIFY with the new position whenever the projection's checkpoint row moves.

    NOTIFY is delivered after the worker's transaction committed (rows and checkpoint
    visible), so the watcher never sees a position before its effect is visible; it costs
    the worker's commit a few microseconds, where polling every 0.5 ms costs PostgreSQL and
    the watcher a share of the 2 cores the pipeline runs on.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'CREATE OR REPLACE FUNCTION "{schema}".bench_notify_checkpoint() RETURNS trigger'
            f" LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('{_WATCH_CHANNEL}', NEW.position::text);"
            " RETURN NULL; END $$"
        )
        conn.execute(f'DROP TRIGGER IF EXISTS bench_notify_checkpoint ON "{schema}".projection_checkpoints')
        conn.execute(
            f'CREATE TRIGGER bench_notify_checkpoint AFTER UPDATE ON "{schema}".projection_checkpoints'
            f" FOR EACH ROW WHEN (NEW.name = '{projection}' AND NEW.position IS DISTINCT FROM OLD.position)"
            f' EXECUTE FUNCTION "{schema}".bench_notify_checkpoint()'
        )


def watch_main(dsn: str, schema: str, mode: str, out_path: str) -> None:
    """The watcher process: note (position, time.monotonic()) each time the checkpoint moves.

    A process of its own, so that the load generator's threads never delay its clock
    readings (they share one GIL in the bench process). Stops on SIGTERM.
    """
    import signal

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    seen: list[tuple[int, float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mode == "notify":
            conn.execute(f"LISTEN {_WATCH_CHANNEL}")
        last = current_checkpoint(conn, schema)  # after LISTEN: no later move is missed
        seen.append((last, time.monotonic()))
        print("ready", flush=True)
        while not stopping.is_set():
            if mode == "notify":
                for note in conn.notifies(timeout=0.2):
                    now = time.monotonic()
                    pos = int(note.payload)
                    if pos > last:
                        seen.append((pos, now))
                        last = pos
            else:
                pos = current_checkpoint(conn, schema)
                if pos != last:
                    seen.append((pos, time.monotonic()))
                    last = pos
                time.sleep(0.0005)
    Path(out_path).write_text("".join(f"{p} {t!r}\n" for p, t in seen))


class CheckpointWatch:
    """Runs ``watch_main`` in a process of its own; ``seen`` holds its notes once stopped."""

    def __init__(self, dsn: str, schema: str, mode: str, logs: Path) -> None:
        self._args = [sys.executable, str(Path(__file__).resolve()), "--watch-child", dsn, schema, mode,
                      str(logs / "watch.txt")]
        self._out = logs / "watch.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self.seen: list[tuple[int, float]] = []

    def start(self) -> None:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the checkpoint watcher did not start")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait(10)
        self._proc = None
        if self._out.exists():
            lines = self._out.read_text().splitlines()
            self.seen = [(int(p), float(t)) for p, t in (line.split() for line in lines)]


def latencies(appended: list[tuple[int, float]], seen: list[tuple[int, float]]) -> list[float]:
    """Milliseconds from each append to the first checkpoint at or past its position."""
    out = []
    seen = sorted(seen, key=lambda s: s[1])
    j = 0
    for position, t in sorted(appended):
        while j < len(seen) and seen[j][0] < position:
            j += 1
        if j == len(seen):
            break
        out.append(max(seen[j][1] - t, 0.0) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    call = "relay()" if command == "relay" else "worker('bench-w1')"
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from api.cli_kafka import relay, worker; {call}"
    out = open(log, "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(ROOT), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(args: argparse.Namespace) -> dict[str, Any]:
    db = f"tradecore_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = make_conninfo(ADMIN_URL, dbname=db)
    d = conninfo_to_dict(dsn)
    url = f"postgresql://{d.get('user', 'postgres')}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}/{db}"
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"{db}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    watch: CheckpointWatch | None = None
    store = None
    try:
        with kafka_bootstrap() as (bootstrap, broker):
            say(f"broker {bootstrap} ({'noida-db, fresh' if broker else 'from the environment/testcontainers'}),"
                f" database {db}, logs in {logs}")
            prefix = f"b{uuid.uuid4().hex[:6]}."
            kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
            asyncio.run(ensure_topics(kafka))
            # TRADECORE_KAFKA_* tuning in the environment reaches the relay and the worker.
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("TRADECORE_") or k.startswith("TRADECORE_KAFKA_")}
            env.update({
                "PYTHONPATH": str(ROOT),
                "TRADECORE_EVENT_STORE_URL": f"{url}?schema=events",
                "TRADECORE_READ_STORE_URL": f"{url}?schema=read",
                "TRADECORE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TRADECORE_KAFKA_TOPIC_PREFIX": prefix,
                "TRADECORE_LOG_LEVEL": "WARNING",
            })

            inner = PostgresEventStore(dsn, SystemClock(), schema="events")
            store = TimedStore(inner)
            prices = PriceBook()
            prices.update(SYMBOL, PRICE)
            bus = CommandBus(store, SystemClock(), prices, StaticMarkets([SYMBOL]))  # type: ignore[arg-type]
            accounts = [f"acc-{i}" for i in range(args.accounts)]

            def prepare(a: str) -> None:
                bus.handle(OpenAccount(account_id=a, owner_id="bench"))
                bus.handle(Deposit(account_id=a, amount=Decimal(10_000_000_000)))
                bus.handle(SetRiskLimits(account_id=a, max_position_size_pct=Decimal(100), max_open_positions=1000,
                                         max_daily_loss_pct=Decimal(100), max_drawdown_pct=Decimal(100),
                                         max_leverage=Decimal(10)))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(prepare, accounts))
            setup_head = inner.last_position()

            procs.append(spawn("relay", env, logs / "relay.log"))
            procs.append(spawn("worker", env, logs / "worker.log"))
            with psycopg.connect(dsn, autocommit=True) as probe:
                deadline = time.monotonic() + 120
                while current_checkpoint(probe, "read") < setup_head:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        raise RuntimeError(f"the pipeline did not start; see {logs}")
                    time.sleep(0.1)
            say(f"setup: {len(accounts)} accounts, {setup_head} events, worker caught up")
            if args.watch == "notify":
                install_notify_trigger(dsn, "read")
            watch = CheckpointWatch(dsn, "read", args.watch, logs)

            # Open loop: command i is due at start + i / rate, whatever happened before it.
            total = int(args.rate * args.seconds)
            accepted = [0]
            lock = threading.Lock()
            late = [0.0]

            def place(i: int, due: float) -> None:
                lag = time.perf_counter() - due
                res = bus.handle(PlaceOrder(
                    account_id=accounts[i % len(accounts)], symbol=SYMBOL, side=Side.BUY,
                    order_type=OrderType.LIMIT, limit_price=Decimal(1000), quantity=Decimal("0.001"),
                    order_id=f"o-{i}",
                ))
                with lock:
                    accepted[0] += res.get("status") == "accepted"
                    late[0] = max(late[0], lag)

            watch.start()
            store.recording = True
            started = time.perf_counter()
            with ThreadPoolExecutor(args.writers) as pool:
                for i in range(total):
                    due = started + i / args.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(place, i, due)
            load_seconds = time.perf_counter() - started
            store.recording = False
            head = inner.last_position()
            with psycopg.connect(dsn, autocommit=True) as probe:
                deadline = time.monotonic() + 60
                while current_checkpoint(probe, "read") < head and time.monotonic() < deadline:
                    time.sleep(0.01)
            drained = time.perf_counter() - started - load_seconds
            watch.stop()
            lat = latencies(store.appended, watch.seen)
            say(f"load: {total} commands in {load_seconds:.1f}s ({total / load_seconds:.0f}/s),"
                f" {accepted[0]} accepted, scheduler lag max {late[0] * 1000:.1f} ms,"
                f" read model caught up {drained * 1000:.0f} ms after the last command")
            say(f"append -> visible in portfolio: p50 {pct(lat, 50):.1f} ms, p90 {pct(lat, 90):.1f} ms,"
                f" p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms over {len(lat)} commands")
            for p in procs:
                stop(p)
            procs.clear()

            relay_rate = asyncio.run(relay_max_rate(inner, kafka, f"{url}?schema=events", head))
            say(f"relay: {head} events published from position 0 at {relay_rate:.0f} events/s")
            return {
                "bench": "pipeline", "rate_cmd_s": args.rate, "p50_ms": round(pct(lat, 50), 2),
                "p99_ms": round(pct(lat, 99), 2), "relay_max_ev_s": round(relay_rate), "watch": args.watch,
            }
    finally:
        for p in procs:
            stop(p)
        if watch is not None:
            watch.stop()
        if store is not None:
            store.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


async def relay_max_rate(store: PostgresEventStore, kafka: KafkaSettings, url: str, head: int) -> float:
    """Events/s of a relay publishing the whole log into a topic of its own."""
    settings = kafka.model_copy(update={"topic_prefix": kafka.topic_prefix + "max.", "relay_name": "bench-max",
                                        "relay_batch": 5000})
    await ensure_topics(settings)
    checkpoints = open_relay_checkpoints(url)
    relay = Relay(store, checkpoints, settings)
    stop_event = asyncio.Event()
    task = asyncio.create_task(relay.run(stop_event))
    started = time.perf_counter()
    try:
        while relay.stats.position < head:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        return head / (time.perf_counter() - started)
    finally:
        stop_event.set()
        await task
        checkpoints.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="commands per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--writers", type=int, default=8, help="writer threads")
    parser.add_argument("--watch", choices=["notify", "poll"], default="notify",
                        help="how the watcher process learns of new checkpoints: NOTIFY from a trigger on the"
                        " checkpoint row, or a query every 0.5 ms")
    if sys.argv[1:2] == ["--watch-child"]:
        watch_main(*sys.argv[2:6])
        return
    args = parser.parse_args()
    configure_logging("WARNING")
    result = run(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
