"""Append benchmark: durable place-order commands per second, tradecore vs ``eventsourcing``.

Run ``python bench/append.py`` (about 4 minutes) or ``python bench/append.py --quick``
(about 40 seconds). In one run it measures:

1. tradecore on PostgreSQL (``synchronous_commit`` on, checked and printed): PlaceOrder
   commands through the real ``CommandBus`` with 1 and with 16 writer threads, each
   writer on its own accounts (opened, funded and given wide risk limits before the
   timed section, so orders are accepted: accepted/rejected counts are printed);
2. tradecore on a SQLite file (WAL, ``synchronous=FULL`` as the store sets it), likewise;
3. the peer, the ``eventsourcing`` library, on the same PostgreSQL server (own schema)
   and on a SQLite file: an ``Application`` with an ``Aggregate`` whose ``place_order``
   triggers one event, ``app.save(aggregate)`` per command, 1 and 16 threads, each thread
   on its own aggregates (held in memory: the peer never reloads, so it does strictly
   less work per command than tradecore, which also checks idempotency and risk);
4. for reference, tradecore with the in-memory store and 16 writers: the ceiling that the
   bus and the domain alone allow on this machine, with no storage cost at all;
5. latency of tradecore on PostgreSQL under an open-loop load of 1,000 commands/s: a
   scheduler issues a command every millisecond into a pool of worker threads; latency
   runs from the scheduled send time to the command's completion.

Every configuration is run ``--repeat`` times, interleaved, and reported as best and
median (the machine is shared and small; noise only ever lowers throughput, so the JSON
line uses the best). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from adapters.eventstore import open_event_store  # noqa: E402
from adapters.logging import configure_logging  # noqa: E402
from adapters.market import PriceBook, StaticMarkets  # noqa: E402
from adapters.time import SystemClock  # noqa: E402
from commands.bus import CommandBus  # noqa: E402
from commands.messages import Deposit, OpenAccount, PlaceOrder, SetRiskLimits  # noqa: E402

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SYMBOL = "BTC/USDT"
PRICE = Decimal("50000")
QUANTITY = Decimal("0.001")  # 50 USDT of margin per order
DEPOSIT = Decimal("1000000000")  # enough for millions of such orders per account
WRITER_COUNTS = (1, 16)


# --- measuring ------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    commands: int
    accepted: int
    rejected: int
    errors: int
    cpu_us: float
    """CPU time of this process (all threads, user + system) per timed command, in us."""
    load: float
    """1-minute load average at the end of the run (the machine is shared)."""
    gc_ms: float = 0.0
    """Wall time spent in cyclic garbage collections during the timed window (all threads stop)."""


@dataclass
class Series:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(r.rate for r in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.rate for r in self.runs)


class GcTimer:
    """Adds up the wall time of the cyclic collector's runs (``gc.callbacks``): measurement only."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start


GC = GcTimer()


Op = Callable[[], bool]
"""One command; returns whether it was accepted."""


def closed_loop(writers: int, make_op: Callable[[int], Op], warmup: float, duration: float) -> Run:
    """``writers`` threads run their op back to back; count completions in a timed window."""
    counts = [0] * writers
    accepted = [0] * writers
    rejected = [0] * writers
    errors: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Barrier(writers + 1)

    def work(w: int) -> None:
        op = make_op(w)
        ready.wait()
        n = a = r = 0
        try:
            while not stop.is_set():
                if op():
                    a += 1
                else:
                    r += 1
                n += 1
                counts[w] = n
        except BaseException as exc:  # report, and let the other writers finish the window
            errors.append(exc)
        finally:
            accepted[w], rejected[w] = a, r

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(warmup)
    c0, t0, p0, g0 = sum(counts), time.perf_counter(), time.process_time(), GC.total
    time.sleep(duration)
    c1, t1, p1, g1 = sum(counts), time.perf_counter(), time.process_time(), GC.total
    stop.set()
    for t in threads:
        t.join()
    if errors:
        print(f"    !! {len(errors)} writer(s) failed: {errors[0]!r}", file=sys.stderr)
    n = c1 - c0
    cpu_us = (p1 - p0) / n * 1e6 if n else float("nan")
    return Run(n / (t1 - t0), n, sum(accepted), sum(rejected), len(errors), cpu_us, os.getloadavg()[0], (g1 - g0) * 1e3)


def open_loop(op: Callable[[int], bool], rate: float, warmup: float, duration: float, workers: int) -> dict[str, Any]:
    """Issue ``op(i)`` at fixed intervals into a thread pool; latency from the scheduled time."""
    interval = 1.0 / rate
    total = int((warmup + duration) * rate)
    first_measured = int(warmup * rate)
    latency = [0.0] * total
    send_lag = [0.0] * total
    failed = [0]
    done = threading.Semaphore(0)

    def task(i: int, scheduled: float) -> None:
        try:
            op(i)
        except Exception:
            failed[0] += 1
        latency[i] = time.perf_counter() - scheduled
        done.release()

    with ThreadPoolExecutor(workers, thread_name_prefix="bench-openloop") as pool:
        start = time.perf_counter() + 0.05
        for i in range(total):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            send_lag[i] = time.perf_counter() - scheduled
            pool.submit(task, i, scheduled)
        end_sched = time.perf_counter()
        for _ in range(total):
            done.acquire()
        end = time.perf_counter()
    lat = sorted(latency[first_measured:])
    lag = sorted(send_lag[first_measured:])
    return {
        "offered_rate": rate,
        "achieved_rate": total / (end - start),
        "scheduler_rate": total / (end_sched - start),
        "commands": len(lat),
        "failed": failed[0],
        "p50_ms": _pct(lat, 50) * 1e3,
        "p90_ms": _pct(lat, 90) * 1e3,
        "p99_ms": _pct(lat, 99) * 1e3,
        "p999_ms": _pct(lat, 99.9) * 1e3,
        "max_ms": lat[-1] * 1e3,
        "send_lag_p99_ms": _pct(lag, 99) * 1e3,
        "send_lag_max_ms": lag[-1] * 1e3,
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# --- tradecore ------------------------------------------------------------------------


class Tradecore:
    """The real command side: ``open_event_store`` + ``CommandBus``."""

    def __init__(self, url: str, *, idempotency: bool = True) -> None:
        self.clock = SystemClock()
        self.store = open_event_store(url, self.clock)
        self.prices = PriceBook()
        self.prices.update(SYMBOL, PRICE)
        self.markets = StaticMarkets([SYMBOL, "ETH/USDT"])
        self.bus = CommandBus(self.store, self.clock, self.prices, self.markets)
        self.idempotency = idempotency

    def create_accounts(self, ids: list[str]) -> None:
        """Open, fund and widen the risk limits of ``ids`` (untimed), 16 at a time."""

        def prepare(account_id: str) -> None:
            self.bus.handle(OpenAccount(account_id=account_id, owner_id="bench"))
            self.bus.handle(Deposit(account_id=account_id, amount=DEPOSIT))
            self.bus.handle(
                SetRiskLimits(
                    account_id=account_id,
                    max_position_size_pct=Decimal(100),
                    max_open_positions=1000,
                    max_daily_loss_pct=Decimal(100),
                    max_drawdown_pct=Decimal(100),
                    max_leverage=Decimal(10),
                )
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(prepare, ids))

    def place(self, account_id: str, key: str) -> bool:
        cmd = PlaceOrder(
            account_id=account_id,
            symbol=SYMBOL,
            side="buy",
            quantity=QUANTITY,
            idempotency_key=key if self.idempotency else None,
        )
        return self.bus.handle(cmd)["status"] == "accepted"

    def prepare(self, tag: str, writers: int, per_writer: int) -> Callable[[int], Op]:
        """Create each writer's accounts (untimed); return the per-writer op factory."""
        accounts = [[f"{tag}-w{w}-a{i}" for i in range(per_writer)] for w in range(writers)]
        self.create_accounts([a for mine in accounts for a in mine])

        def make(w: int) -> Op:
            mine = accounts[w]
            seq = iter(range(1 << 62))

            def op() -> bool:
                i = next(seq)
                return self.place(mine[i % per_writer], f"{tag}-w{w}-{i}")

            return op

        return make

    def close(self) -> None:
        self.store.close()


# --- the peer: eventsourcing ----------------------------------------------------------


@functools.cache
def _peer_classes() -> tuple[type, type]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class PeerAccount(Aggregate):  # type: ignore[misc]
        @event("Opened")
        def __init__(self, owner_id: str, cash: Decimal) -> None:
            self.owner_id = owner_id
            self.cash = cash
            self.reserved = Decimal(0)
            self.orders = 0

        @event("OrderPlaced")
        def place_order(self, order_id: str, symbol: str, side: str, quantity: Decimal, price: Decimal) -> None:
            self.reserved += quantity * price
            self.orders += 1

    class PeerBench(Application):  # type: ignore[misc]
        name = "PeerBench"

    return PeerAccount, PeerBench


class Peer:
    """``eventsourcing`` Application: one aggregate method call and one ``save`` per command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.Account, app_cls = _peer_classes()
        self.app = app_cls(env=env)

    def prepare(self, tag: str, writers: int, per_writer: int) -> Callable[[int], Op]:
        aggs = {w: [self.Account("bench", DEPOSIT) for _ in range(per_writer)] for w in range(writers)}
        for w in range(writers):
            self.app.save(*aggs[w])

        def make(w: int) -> Op:
            mine = aggs[w]
            seq = iter(range(1 << 62))
            app = self.app

            def op() -> bool:
                i = next(seq)
                agg = mine[i % per_writer]
                agg.place_order(order_id=f"{tag}-w{w}-{i}", symbol=SYMBOL, side="buy", quantity=QUANTITY, price=PRICE)
                app.save(agg)
                return True

            return op

        return make

    def close(self) -> None:
        self.app.close()


# --- PostgreSQL helpers -----------------------------------------------------------------


def pg_show(setting: str) -> str:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    return str(row[0]) if row else "?"


def pg_drop_schema(name: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def pg_create_schema(name: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{name}"')


def peer_pg_env(schema: str) -> dict[str, str]:
    from urllib.parse import urlsplit

    u = urlsplit(PG_DSN)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (u.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or "postgres",
        "POSTGRES_PASSWORD": u.password or "",
        "POSTGRES_SCHEMA": schema,
        # A connection per writer thread: the peer never waits for the pool.
        "POSTGRES_POOL_SIZE": "16",
        "POSTGRES_MAX_OVERFLOW": "4",
    }


def _generator_cost_us(n: int = 5000) -> float:
    """CPU per command the load generator itself spends building the command."""
    t0 = time.process_time()
    for i in range(n):
        PlaceOrder(account_id="gen-a0", symbol=SYMBOL, side="buy", quantity=QUANTITY, idempotency_key=f"gen-{i}")
    return (time.process_time() - t0) / n * 1e6


# --- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (one repeat, short windows)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 3, quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="timed seconds per run (default 6, quick 2)")
    parser.add_argument("--warmup", type=float, default=None, help="untimed seconds before each run")
    parser.add_argument(
        "--accounts",
        type=int,
        default=128,
        help="accounts (aggregates) per writer; every accepted order stays open, and the risk"
        " check walks the open orders, so fewer accounts means slower decisions",
    )
    parser.add_argument("--latency-seconds", type=float, default=None, help="open-loop window (default 10)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop commands per second")
    parser.add_argument("--no-idempotency", action="store_true", help="tradecore commands without idempotency keys")
    parser.add_argument(
        "--only",
        choices=("ours", "peer", "all", "latency"),
        default="all",
        help="run only tradecore, only the peer, or only the open-loop latency test",
    )
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    duration = args.duration or (2.0 if args.quick else 6.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    lat_seconds = args.latency_seconds or (3.0 if args.quick else 10.0)
    per_writer = args.accounts
    idem = not args.no_idempotency

    configure_logging("WARNING")
    pid = os.getpid()
    ours_schema = f"bench_append_{pid}"
    peer_schema = f"bench_append_peer_{pid}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-append-"))

    sync_commit = pg_show("synchronous_commit")
    fsync = pg_show("fsync")
    print(f"PostgreSQL {pg_show('server_version')}: synchronous_commit={sync_commit} fsync={fsync}")
    if sync_commit != "on" or fsync != "on":
        print("  !! PostgreSQL commits are not durable: the numbers below are not comparable")
    print(
        f"runs: {repeat} x ({warmup:g} s warm-up + {duration:g} s timed) per configuration, "
        f"{per_writer} accounts per writer, idempotency keys {'on' if idem else 'off'}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    print(
        f"load generator: {_generator_cost_us():.1f} us CPU to build one PlaceOrder (pydantic validation, as an API"
        " caller pays it; included in tradecore's figures, not in the peer's)"
    )

    systems: dict[str, Any] = {}
    series: dict[str, Series] = {}
    latency: dict[str, Any] | None = None
    try:
        pg_create_schema(peer_schema)
        if args.only in ("ours", "all", "latency"):
            systems["tradecore/postgres"] = Tradecore(f"{PG_DSN}?schema={ours_schema}", idempotency=idem)
            sqlite_path = tmp / "tradecore.db"
            systems["tradecore/sqlite"] = Tradecore(f"sqlite:///{sqlite_path}", idempotency=idem)
            with systems["tradecore/postgres"].store._pool.connection() as conn:  # what the store's sessions see
                store_sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
            sq = systems["tradecore/sqlite"].store._writer
            print(
                f"tradecore sessions: PostgreSQL synchronous_commit={store_sync}; SQLite journal_mode="
                f"{sq.execute('PRAGMA journal_mode').fetchone()[0]} synchronous="
                f"{sq.execute('PRAGMA synchronous').fetchone()[0]} (2 = FULL)"
            )
        if args.only in ("peer", "all"):
            systems["eventsourcing/postgres"] = Peer(peer_pg_env(peer_schema))
            systems["eventsourcing/sqlite"] = Peer(
                {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp / "peer.db")}
            )
            with systems["eventsourcing/sqlite"].app.factory.datastore.transaction(commit=False) as cur:
                cur.execute("PRAGMA synchronous")
                peer_sync = cur.fetchone()[0]
                cur.execute("PRAGMA journal_mode")
                peer_journal = cur.fetchone()[0]
            print(f"eventsourcing sessions: SQLite journal_mode={peer_journal} synchronous={peer_sync} (2 = FULL)")

        order = [
            (name, writers)
            for backend in ("postgres", "sqlite")
            for name in (f"tradecore/{backend}", f"eventsourcing/{backend}")
            for writers in WRITER_COUNTS
            if name in systems
        ]
        if args.only in ("ours", "all"):
            # No storage at all: the ceiling that the bus and the domain alone allow here.
            systems["tradecore/memory"] = Tradecore("memory://", idempotency=idem)
            order.append(("tradecore/memory", max(WRITER_COUNTS)))
        for r in range(repeat if args.only != "latency" else 0):
            for name, writers in order:
                label = f"{name} {writers}w"
                tag = f"r{r}-{writers}w"
                make = systems[name].prepare(tag, writers, per_writer)
                run = closed_loop(writers, make, warmup, duration)
                series.setdefault(label, Series(label)).runs.append(run)
                print(
                    f"  [{r + 1}/{repeat}] {label:<28} {run.rate:>9,.0f} cmd/s"
                    f"  ({run.commands:,} timed; accepted {run.accepted:,}, rejected {run.rejected:,};"
                    f" ~{(run.accepted + run.rejected) / (writers * per_writer):.0f} orders/account;"
                    f" {run.cpu_us:,.0f} us CPU/cmd in this process; gc {run.gc_ms:,.0f} ms; load {run.load:.1f}"
                    f"{f', writer errors {run.errors}' if run.errors else ''})",
                    flush=True,
                )

        if "tradecore/postgres" in systems:
            ours = systems["tradecore/postgres"]
            accounts = [f"lat-a{i}" for i in range(64)]
            ours.create_accounts(accounts)

            def one(i: int) -> bool:
                return ours.place(accounts[i % len(accounts)], f"lat-{i}")

            print(f"  open loop: {args.rate:,.0f} cmd/s into tradecore/postgres for {lat_seconds:g} s ...", flush=True)
            latency = open_loop(one, args.rate, warmup=1.0, duration=lat_seconds, workers=32)
    finally:
        for system in systems.values():
            try:
                system.close()
            except Exception as exc:  # keep cleaning up
                print(f"  !! close failed: {exc!r}", file=sys.stderr)
        pg_drop_schema(ours_schema)
        pg_drop_schema(peer_schema)
        shutil.rmtree(tmp, ignore_errors=True)

    # --- report ---
    print()
    print(
        f"{'configuration':<28} {'best cmd/s':>10} {'median':>8}  {'runs (cmd/s)':<24}"
        f" {'CPU us/cmd':>10} {'gc ms/s':>8}  accepted / rejected"
    )
    print("-" * 110)
    for label, s in series.items():
        runs = ", ".join(f"{r.rate:,.0f}" for r in s.runs)
        acc = sum(r.accepted for r in s.runs)
        rej = sum(r.rejected for r in s.runs)
        cpu = min(r.cpu_us for r in s.runs)
        gc_share = sum(r.gc_ms for r in s.runs) / (len(s.runs) * duration)
        print(
            f"{label:<28} {s.best:>10,.0f} {s.median:>8,.0f}  {runs:<24} {cpu:>10,.0f} {gc_share:>8,.0f}"
            f"  {acc:,} / {rej:,}"
        )
    print("  (CPU us/cmd: the lowest of the runs, this process only; the database server's CPU is not included;")
    print("   gc ms/s: milliseconds per timed second spent in cyclic garbage collections, all threads stopped;")
    print("   tradecore/memory = in-memory event store: what the bus + domain allow with no storage cost;")
    print("   it keeps every event as objects, so its full collections grow with the log)")

    def best(label: str) -> float | None:
        s = series.get(label)
        return round(s.best, 1) if s else None

    def peer_best(backend: str) -> tuple[float | None, str]:
        cands = [(series[lb].best, lb) for lb in series if lb.startswith(f"eventsourcing/{backend} ")]
        if not cands:
            return None, "-"
        rate, lb = max(cands)
        return round(rate, 1), lb

    ours_pg, ours_pg1, ours_sq = (
        best("tradecore/postgres 16w"),
        best("tradecore/postgres 1w"),
        best("tradecore/sqlite 16w"),
    )
    peer_pg, peer_pg_label = peer_best("postgres")
    peer_sq, peer_sq_label = peer_best("sqlite")
    ratio_pg = round(ours_pg / peer_pg, 2) if ours_pg and peer_pg else None
    ratio_sq = round(ours_sq / peer_sq, 2) if ours_sq and peer_sq else None
    print()
    print(f"ratio_postgres = tradecore/postgres 16w / best peer ({peer_pg_label}) = {ratio_pg}   (target >= 10)")
    print(f"ratio_sqlite   = tradecore/sqlite 16w / best peer ({peer_sq_label}) = {ratio_sq}   (target >= 5)")
    print("  (both sides durable: PostgreSQL synchronous_commit=on; SQLite WAL + synchronous=FULL;")
    print("   tradecore does idempotency + risk checks per command, the peer only records one event)")
    if latency:
        print()
        print(
            f"open loop {latency['offered_rate']:,.0f} cmd/s into tradecore/postgres (32 workers, "
            f"{latency['commands']:,} commands, achieved {latency['achieved_rate']:,.0f}/s, "
            f"failed {latency['failed']}, load {os.getloadavg()[0]:.1f}):"
        )
        if latency["achieved_rate"] < 0.95 * latency["offered_rate"]:
            print("  !! the store did not keep up with the offered rate: latencies below are queueing delay")
        print(
            f"  latency from scheduled send: p50 {latency['p50_ms']:.2f} ms  p90 {latency['p90_ms']:.2f} ms  "
            f"p99 {latency['p99_ms']:.2f} ms  p99.9 {latency['p999_ms']:.2f} ms  max {latency['max_ms']:.2f} ms"
            "   (target p99 <= 10 ms)"
        )
        print(f"  scheduler send lag: p99 {latency['send_lag_p99_ms']:.2f} ms  max {latency['send_lag_max_ms']:.2f} ms")
    result = {
        "bench": "append",
        "postgres_cmd_s": ours_pg,
        "postgres_1w_cmd_s": ours_pg1,
        "peer_postgres_cmd_s": peer_pg,
        "ratio_postgres": ratio_pg,
        "sqlite_cmd_s": ours_sq,
        "peer_sqlite_cmd_s": peer_sq,
        "ratio_sqlite": ratio_sq,
        "p99_ms_at_1k": round(latency["p99_ms"], 2) if latency else None,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
