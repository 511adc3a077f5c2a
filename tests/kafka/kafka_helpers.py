"""Processes, stores and comparisons for the Kafka tests (imported by ``conftest.py``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
READSIDE = ROOT / "tests" / "readside"
for p in (str(ROOT), str(READSIDE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from workload import Session, make_bus  # noqa: E402

from adapters.eventstore.postgres import PostgresEventStore  # noqa: E402
from adapters.kafka.settings import KafkaSettings  # noqa: E402
from adapters.kafka.topics import TopicNames  # noqa: E402
from adapters.readstore.memory import MemoryReadStore  # noqa: E402
from commands.ports import EventStore  # noqa: E402
from domain.clock import ManualClock  # noqa: E402
from projections.registry import ALL_PROJECTIONS  # noqa: E402
from projections.store import ReadStore  # noqa: E402
from streams.runner import ProjectionRunner  # noqa: E402

NAMES = [p.name for p in ALL_PROJECTIONS]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLI = Path(__file__).resolve().parent / "kafka_cli.py"


def pg_url(dsn: str, schema: str) -> str:
    """A ``postgresql://`` URL with ``?schema=`` for a key=value libpq DSN."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    user = d.get("user", "postgres")
    auth = user if not d.get("password") else f"{user}:{d['password']}"
    host = d.get("host", "127.0.0.1")
    port = d.get("port", "5432")
    return f"postgresql://{auth}@{host}:{port}/{d['dbname']}?schema={schema}"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return int(self.popen.returncode)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@dataclass
class Deployment:
    """One test's slice of the shared broker and database: its own topics and schemas."""

    bootstrap: str
    dsn: str
    logs: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: list[Proc] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def event_store_url(self) -> str:
        return pg_url(self.dsn, f"es_{self.tag}")

    @property
    def read_store_url(self) -> str:
        return pg_url(self.dsn, f"rs_{self.tag}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADECORE_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "TRADECORE_EVENT_STORE_URL": self.event_store_url,
            "TRADECORE_READ_STORE_URL": self.read_store_url,
            "TRADECORE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "TRADECORE_KAFKA_TOPIC_PREFIX": f"t{self.tag}.",
            "TRADECORE_KAFKA_EVENTS_PARTITIONS": "4",
            "TRADECORE_KAFKA_WORKER_COMMIT_IDLE": "0.2",
            "TRADECORE_KAFKA_WORKER_LEASE_INTERVAL": "0.5",
            "TRADECORE_KAFKA_RELAY_BACKOFF_MAX": "1.0",
            "TRADECORE_KAFKA_RELAY_SEND_TIMEOUT": "5",
            "TRADECORE_LOG_LEVEL": "INFO",
        })
        env.update(self.overrides)
        env.update(extra)
        return env

    def settings(self, **kw: Any) -> KafkaSettings:
        e = self.env()
        return KafkaSettings(
            bootstrap_servers=self.bootstrap, topic_prefix=e["TRADECORE_KAFKA_TOPIC_PREFIX"],
            events_partitions=int(e["TRADECORE_KAFKA_EVENTS_PARTITIONS"]), **kw,
        )

    @property
    def topics(self) -> TopicNames:
        return TopicNames.of(self.settings())

    def start(self, command: str, name: str, *args: str, **env: str) -> Proc:
        log = self.logs / f"{self.tag}-{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen(
            [sys.executable, str(CLI), command, *args], env=self.env(**env), cwd=str(ROOT),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def relay(self, name: str = "relay", **env: str) -> Proc:
        return self.start("relay", name, **env)

    def worker(self, worker_id: str = "w1", **env: str) -> Proc:
        return self.start("worker", worker_id, "--id", worker_id, **env)

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop(timeout=10)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} (rc={p.popen.poll()}) ---\n{p.tail()}" for p in self.procs)


def split_url(url: str) -> tuple[str, str]:
    dsn, schema = url.split("?schema=")
    return dsn, schema


class Trading:
    """The workload session appending to the deployment's event store, here or in a thread."""

    def __init__(self, d: Deployment, seed: int = 7) -> None:
        self.clock = ManualClock(T0)
        dsn, schema = split_url(d.event_store_url)
        self.store = PostgresEventStore(dsn, self.clock, schema=schema)
        bus, prices = make_bus(self.store, self.clock)
        self.session = Session(bus, prices, self.clock, seed=seed, max_accounts=12, max_bots=6)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.done = 0

    def run(self, commands: int) -> int:
        self.session.run(commands=commands)
        return self.store.last_position()

    def run_in_background(self, commands: int, pause: float = 0.002) -> None:
        def body() -> None:
            try:
                for _ in range(commands):
                    if self._stop.is_set():
                        return
                    self.session.run(commands=1)
                    self.done += 1
                    self._stop.wait(pause)
            except BaseException as exc:
                self.error = exc

        self.done = 0
        self._thread = threading.Thread(target=body, name="trading", daemon=True)
        self._thread.start()

    def join(self) -> int:
        if self._thread is not None:
            self._thread.join(120)
            assert not self._thread.is_alive(), "the trading session did not finish"
        if self.error is not None:
            raise self.error
        return self.store.last_position()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.store.close()


def in_process(store: EventStore) -> dict[str, Any]:
    """The in-process runner's read models for the same log (in memory)."""
    from helpers import dump

    memory = MemoryReadStore()
    ProjectionRunner(store, memory, ALL_PROJECTIONS).catch_up()
    return dump(memory, ALL_PROJECTIONS)


def read_dump(read_store: ReadStore) -> dict[str, Any]:
    from helpers import dump

    return dump(read_store, ALL_PROJECTIONS)


def assert_equal_to_in_process(read_store: ReadStore, store: EventStore) -> None:
    from helpers import assert_same

    assert_same(read_dump(read_store), in_process(store))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, diagnostics: Callable[[], str] | None = None,
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    extra = f"\n{diagnostics()}" if diagnostics is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")


def caught_up(read_store: ReadStore, position: int, names: Iterable[str] = NAMES) -> bool:
    copies = {c.name: c for c in read_store.copies() if c.active}
    return all(n in copies and copies[n].position >= position for n in names)


def wait_caught_up(d: Deployment, read_store: ReadStore, head: int, timeout: float = 60.0) -> None:
    wait_for(lambda: caught_up(read_store, head), timeout, f"every projection at position {head}", d.diagnostics)


def consume_all(bootstrap: str, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every message of ``topic`` (from the beginning up to the end offsets now)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list[Any]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        try:
            parts = c.partitions_for_topic(topic)
            for _ in range(50):
                if parts:
                    break
                await c.topics()
                parts = c.partitions_for_topic(topic) or set()
                await asyncio.sleep(0.1)
            tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            out: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                behind = [tp for tp in tps if await c.position(tp) < ends[tp]]
                if not behind:
                    break
                got = await c.getmany(*behind, timeout_ms=200)
                for msgs in got.values():
                    out.extend(msgs)
            return out
        finally:
            await c.stop()

    return asyncio.run(run())


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
            partition: Callable[[bytes | None], int] | None = None) -> None:
    """Send ``(key, value, headers)`` messages in order (to ``partition(key)`` if given)."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await p.start()
        try:
            futures = []
            for key, value, headers in messages:
                futures.append(await p.send(topic, value, key=key, headers=headers,
                                            partition=None if partition is None else partition(key)))
            await asyncio.gather(*futures)
        finally:
            await p.stop()

    asyncio.run(run())
