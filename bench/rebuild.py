"""Rebuild every projection from N events (default 1,000,000) on each backend; events/s.

    python bench/rebuild.py [--events N] [--backends memory,sqlite,postgres] [--pg-url URL]
                            [--regenerate] [--per-projection]

The events come from real commands: a random trading session (many accounts and bots,
market and limit orders, fills, closes, cancels, rejections, deposits, halts) driven
through the ``CommandBus`` into an in-memory event store, then copied once into a cache:
``bench/.data/events-N.db`` (a SQLite event store) and the schema ``events_N`` of the
PostgreSQL database ``tradecore_bench``. Later runs reuse the cache (``--regenerate``
makes a new one).

Each backend is measured in its own process (a fresh heap): in-memory event store ->
in-memory read store, SQLite -> SQLite (``bench/.data/read-N.db``), PostgreSQL ->
PostgreSQL (schema ``read_N``). The time is one ``streams.rebuild.rebuild`` of all
projections in one pass: reading and decoding the log, applying every projection,
flushing, swapping (``cpu_seconds``: this process's CPU time over the same span, the
steadier figure on a busy machine). The last line printed is one JSON object:
``{"bench":"rebuild","events":N,"memory_ev_s":...,"sqlite_ev_s":...,"postgres_ev_s":...}``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / ".data"
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "readside")]

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

console = Console(stderr=True)
BENCH_DB = "tradecore_bench"


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)


# --- the event cache --------------------------------------------------------------------


def sqlite_cache(n: int) -> Path:
    return DATA / f"events-{n}.db"


def cached_count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


def generate(n: int) -> Any:
    """Drive commands through the bus into an in-memory store until it holds >= n events."""
    from workload import Session, make_bus

    from adapters.eventstore.memory import InMemoryEventStore
    from domain.clock import ManualClock

    clock = ManualClock()
    store = InMemoryEventStore(clock)
    bus, prices = make_bus(store, clock, cache=50_000)
    accounts = max(20, n // 500)
    session = Session(bus, prices, clock, seed=2026, max_accounts=accounts, max_bots=max(5, accounts // 10))
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("commands -> events", total=n, rate="")

        def tick(position: int) -> None:
            elapsed = time.perf_counter() - started
            bar.update(task, completed=min(position, n), rate=f"{position / elapsed:,.0f} ev/s" if elapsed else "")

        session.run(events=n, progress=tick)
    elapsed = time.perf_counter() - started
    console.print(f"generated {store.last_position():,} events from {session.commands:,} commands "
                  f"({session.refused} refused) over {accounts} accounts in {elapsed:.1f}s")
    return store


def event_rows(store: Any, n: int) -> Any:
    """The first n events as rows in ``EVENT_COLUMNS`` order (ts as a datetime)."""
    from adapters.eventstore.codec import dumps

    pos = 0
    while pos < n:
        batch = store.read_all(pos, min(20_000, n - pos))
        if not batch:
            return
        for r in batch:
            yield (r.position, r.event_id, r.stream_id, r.version, r.type, r.schema_version,
                   dumps(r.data), dumps(r.metadata), r.ts_recorded)
        pos = batch[-1].position


def write_sqlite_cache(store: Any, n: int) -> None:
    from adapters.eventstore.codec import EVENT_COLUMNS
    from adapters.eventstore.sqlite import SqliteEventStore
    from adapters.time import SystemClock

    DATA.mkdir(parents=True, exist_ok=True)
    path = sqlite_cache(n)
    tmp = path.with_suffix(".tmp")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    SqliteEventStore(tmp, SystemClock()).close()  # the adapter creates its own schema
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        with conn:
            conn.executemany(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((*r[:8], r[8].isoformat()) for r in event_rows(store, n)),
            )
    finally:
        conn.close()
    tmp.replace(path)
    console.print(f"cached {cached_count(path):,} events in {path}")


def pg_admin_url(args: argparse.Namespace) -> str:
    return str(args.pg_url or os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_bench_dsn(args: argparse.Namespace) -> str:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    admin = pg_admin_url(args)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return make_conninfo(admin, dbname=BENCH_DB)


def ensure_pg_cache(args: argparse.Namespace, n: int) -> str:
    """Copy the SQLite cache into schema events_n of tradecore_bench (once); returns the DSN."""
    import psycopg

    from adapters.eventstore.codec import EVENT_COLUMNS
    from adapters.eventstore.postgres import PostgresEventStore
    from adapters.eventstore.sqlite import SqliteEventStore
    from adapters.time import SystemClock

    dsn = pg_bench_dsn(args)
    schema = f"events_{n}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.events",)).fetchone()[0]
        count = conn.execute(f"SELECT count(*) FROM {schema}.events").fetchone()[0] if exists else 0
        if count == n and not args.regenerate:
            return dsn
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    PostgresEventStore(dsn, SystemClock(), schema=schema).close()  # the adapter creates its schema
    source = SqliteEventStore(sqlite_cache(n), SystemClock())
    started = time.perf_counter()
    with progress_bar() as bar, psycopg.connect(dsn) as conn:
        task = bar.add_task("copy events to PostgreSQL", total=n, rate="")
        with conn.cursor() as cur, cur.copy(f"COPY {schema}.events ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for i, row in enumerate(event_rows(source, n), start=1):
                copy.write_row(row)
                if i % 20_000 == 0:
                    bar.update(task, completed=i, rate=f"{i / (time.perf_counter() - started):,.0f} rows/s")
        conn.commit()
        conn.execute(f"ANALYZE {schema}.events")
        conn.commit()
    source.close()
    console.print(f"copied {n:,} events to {BENCH_DB}.{schema} in {time.perf_counter() - started:.1f}s")
    return dsn


def ensure_cache(args: argparse.Namespace, n: int) -> None:
    if cached_count(sqlite_cache(n)) != n or args.regenerate:
        write_sqlite_cache(generate(n), n)
        gc.collect()


def memory_store_from_cache(n: int) -> Any:
    """An in-memory event store holding the cached events (decoded, as the memory store keeps them)."""
    from adapters.eventstore.memory import InMemoryEventStore
    from adapters.eventstore.sqlite import SqliteEventStore
    from adapters.time import SystemClock
    from domain.clock import ManualClock
    from domain.envelope import Metadata, NewEvent

    source = SqliteEventStore(sqlite_cache(n), SystemClock())
    clock = ManualClock()
    store = InMemoryEventStore(clock)
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("load events into memory", total=n, rate="")
        pos = 0
        while True:
            batch = source.read_all(pos, 20_000)
            if not batch:
                break
            for r in batch:
                md = r.metadata
                ts_event = md.get("ts_event")
                meta = Metadata(correlation_id=md.get("correlation_id"), causation_id=md.get("causation_id"),
                                user_id=md.get("user_id"), idempotency_key=md.get("idempotency_key"),
                                ts_event=datetime.fromisoformat(ts_event) if ts_event else None)
                clock.set(r.ts_recorded)
                store.append(r.stream_id, [NewEvent(event=r.event, metadata=meta, event_id=r.event_id)], None)
            pos = batch[-1].position
            bar.update(task, completed=pos, rate=f"{pos / (time.perf_counter() - started):,.0f} ev/s")
    source.close()
    assert store.last_position() == n
    return store


# --- one measurement (child process) ------------------------------------------------------


def measure(backend: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from adapters.logging import configure_logging
    from projections.registry import ALL_PROJECTIONS
    from streams.rebuild import RebuildProgress, rebuild

    configure_logging("WARNING")
    if backend == "memory":
        from adapters.readstore.memory import MemoryReadStore

        store: Any = memory_store_from_cache(n)
        read_store: Any = MemoryReadStore()
    elif backend == "sqlite":
        from adapters.eventstore.sqlite import SqliteEventStore
        from adapters.readstore.sqlite import SqliteReadStore
        from adapters.time import SystemClock

        store = SqliteEventStore(sqlite_cache(n), SystemClock())
        read_store = SqliteReadStore(DATA / f"read-{n}.db")
    else:
        from adapters.eventstore.postgres import PostgresEventStore
        from adapters.readstore.postgres import PostgresReadStore
        from adapters.time import SystemClock

        dsn = pg_bench_dsn(args)
        store = PostgresEventStore(dsn, SystemClock(), schema=f"events_{n}")
        read_store = PostgresReadStore(dsn, schema=f"read_{n}")
    assert store.last_position() == n, (backend, store.last_position())
    read_store.register(ALL_PROJECTIONS)
    gc.collect()
    with progress_bar() as bar:
        task = bar.add_task(f"rebuild {backend}", total=n, rate="")
        started = time.perf_counter()
        cpu_started = time.process_time()

        def on_progress(p: RebuildProgress) -> None:
            elapsed = time.perf_counter() - started
            bar.update(task, completed=p.position, rate=f"{p.phase} {p.position / elapsed:,.0f} ev/s")

        results = rebuild(store, read_store, ALL_PROJECTIONS, progress=on_progress)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{backend}: projections failed: {failed}: {[r.error for r in results if not r.ok]}")
    out: dict[str, Any] = {
        "backend": backend, "events": n, "seconds": round(seconds, 3), "ev_s": round(n / seconds),
        # This process's CPU (every thread; not the database server's): steadier than the
        # wall clock on a busy machine.
        "cpu_seconds": round(cpu_seconds, 3), "cpu_us_per_event": round(cpu_seconds / n * 1e6, 2),
        "rows": {r.name: r.rows for r in results},
    }
    if args.per_projection and backend == "memory":
        from adapters.readstore.memory import MemoryReadStore

        alone = {}
        for p in ALL_PROJECTIONS:
            t = time.perf_counter()
            rebuild(store, MemoryReadStore(), [p])
            alone[p.name] = round(n / (time.perf_counter() - t))
        out["alone_ev_s"] = alone
    read_store.close()
    store.close()
    return out


# --- driver ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--backends", default="memory,sqlite,postgres")
    parser.add_argument("--pg-url", default=None, help="admin URL of the server (default DATABASE_URL or local)")
    parser.add_argument("--regenerate", action="store_true", help="generate the events again")
    parser.add_argument("--per-projection", action="store_true", help="also rebuild each projection alone (memory)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.events
    if args.child:
        import orjson

        print(orjson.dumps(measure(args.child, n, args)).decode(), flush=True)
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    ensure_cache(args, n)
    if "postgres" in backends:
        ensure_pg_cache(args, n)
    summary: dict[str, Any] = {"bench": "rebuild", "events": n}
    for backend in backends:
        cmd = [sys.executable, __file__, "--child", backend, "--events", str(n)]
        if args.pg_url:
            cmd += ["--pg-url", args.pg_url]
        if args.per_projection:
            cmd.append("--per-projection")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{backend} run failed with exit code {proc.returncode}")
        import orjson

        result = orjson.loads(proc.stdout.strip().splitlines()[-1])
        console.print(f"{backend:9s} {result['events']:,} events in {result['seconds']:.2f}s = "
                      f"[bold]{result['ev_s']:,} ev/s[/] (rows {sum(result['rows'].values()):,}; "
                      f"{result['cpu_us_per_event']} us CPU per event in this process)")
        if "alone_ev_s" in result:
            console.print("  each projection rebuilt alone (ev/s): "
                          + ", ".join(f"{k} {v:,}" for k, v in result["alone_ev_s"].items()))
        print(orjson.dumps(result).decode(), flush=True)
        summary[f"{backend}_ev_s"] = result["ev_s"]
    import orjson

    print(orjson.dumps(summary).decode(), flush=True)


if __name__ == "__main__":
    main()
