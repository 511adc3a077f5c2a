"""Shared fixtures: a throwaway PostgreSQL database for the whole test session.

``DATABASE_URL`` names the server (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
a fresh, uniquely named database is created on it and dropped at the end. If the server
does not answer, the PostgreSQL tests FAIL, unless ``TRADECORE_SKIP_POSTGRES=1`` says to
skip them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _redact(url: str) -> str:
    """Hide a password in ``url`` for error messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        return "<unparseable DATABASE_URL>"
    params.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in params.items())


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """Yield the DSN of a fresh database, dropped when the session ends."""
    if os.environ.get("TRADECORE_SKIP_POSTGRES") == "1":
        pytest.skip("TRADECORE_SKIP_POSTGRES=1: PostgreSQL tests skipped on request")
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_POSTGRES_URL
    name = f"tradecore_test_{uuid.uuid4().hex[:12]}"
    problem = ""
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            try:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                problem = f"cannot create a test database on {_redact(admin_url)}: {exc}"
    except psycopg.Error as exc:
        problem = (
            f"PostgreSQL is unreachable ({_redact(admin_url)}): {exc}\n"
            "Start a server, point DATABASE_URL at one, or set TRADECORE_SKIP_POSTGRES=1 "
            "to skip the PostgreSQL tests."
        )
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


KURRENTDB_IMAGE = "kurrentplatform/kurrentdb:25.0"
NO_KURRENTDB = (
    "no KurrentDB server reachable: set KURRENTDB_URL (e.g. kurrentdb://127.0.0.1:2113?tls=false) "
    "or make a Docker engine available for testcontainers"
)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _wait_for_kurrentdb(url: str, timeout: float = 60.0) -> None:
    """Block until the server answers a read (a fresh container takes a few seconds)."""
    import time

    from kurrentdbclient import KurrentDBClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            client = KurrentDBClient(url)
            try:
                client.get_commit_position(timeout=5)
                return
            finally:
                client.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="session")
def kurrentdb_url() -> Iterator[str]:
    """Yield the URL of a KurrentDB server: ``KURRENTDB_URL`` (or ``EVENTSTOREDB_URL``),
    else a testcontainers KurrentDB when a Docker engine answers, else skip.

    Each test isolates itself with its own stream namespace, so one server serves all.
    """
    pytest.importorskip("kurrentdbclient", reason="the eventstoredb extra (kurrentdbclient) is not installed")
    url = os.environ.get("KURRENTDB_URL") or os.environ.get("EVENTSTOREDB_URL")
    if url:
        yield url
        return
    if not _docker_answers():
        pytest.skip(NO_KURRENTDB)
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(KURRENTDB_IMAGE)
        .with_env("KURRENTDB_INSECURE", "true")
        .with_env("KURRENTDB_MEM_DB", "true")
        .with_exposed_ports(2113)
    )
    container.start()
    try:
        host, port = container.get_container_host_ip(), container.get_exposed_port(2113)
        url = f"kurrentdb://{host}:{port}?tls=false"
        _wait_for_kurrentdb(url)
        yield url
    finally:
        container.stop()
