"""Fixtures of the Kafka tests: one broker per session, one deployment slice per test.

The broker comes from ``kafka_bootstrap()``: a bootstrap address in the environment
(``TRADECORE_KAFKA_BOOTSTRAP`` / ``KAFKA_BOOTSTRAP_SERVERS``) wins, else testcontainers
when a Docker engine answers, else the noida-db binary on a free port with a fresh data
dir (stopped at the end). PostgreSQL comes from ``postgres_dsn`` (tests/conftest.py);
each test gets its own event-store and read-store schemas and its own topic prefix, and
every relay/worker process it starts is stopped when it ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from kafka_helpers import Deployment, Trading, split_url  # noqa: E402

if os.environ.get("TRADECORE_CI_WITHOUT_KAFKA") == "1":
    collect_ignore_glob = ["test_*.py"]  # .ci/run could not install aiokafka/faust here


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[tuple[str, object]]:
    """(bootstrap address, the embedded broker or None) for the whole session."""
    from adapters.kafka.broker import kafka_bootstrap

    with kafka_bootstrap() as (bootstrap, broker):
        yield bootstrap, broker


@pytest.fixture
def deployment(kafka_broker: tuple[str, object], postgres_dsn: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """This test's topics and schemas; its processes are stopped (logs shown on failure)."""
    import asyncio

    from adapters.kafka.topics import ensure_topics

    d = Deployment(bootstrap=kafka_broker[0], dsn=postgres_dsn, logs=tmp_path)
    asyncio.run(ensure_topics(d.settings()))
    try:
        yield d
    finally:
        d.stop_all()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(d.diagnostics())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def trading(deployment: Deployment) -> Iterator[Trading]:
    """The random trading session, appending to this deployment's event store."""
    t = Trading(deployment)
    yield t
    t.close()


@pytest.fixture
def read_store(deployment: Deployment) -> Iterator[object]:
    """This deployment's PostgreSQL read store (what the workers write)."""
    from adapters.readstore.postgres import PostgresReadStore

    dsn, schema = split_url(deployment.read_store_url)
    rs = PostgresReadStore(dsn, schema=schema)
    yield rs
    rs.close()
