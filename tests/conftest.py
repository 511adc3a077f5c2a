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
