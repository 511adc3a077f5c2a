"""``tradecore projections ...`` and ``tradecore audit ...`` against SQLite files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer
from conftest import T0
from typer.testing import CliRunner
from workload import Session, make_bus

from adapters.eventstore.sqlite import SqliteEventStore
from adapters.readstore.sqlite import SqliteReadStore
from api.cli_admin import register
from domain.clock import ManualClock


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[typer.Typer, Path]:
    events, read = tmp_path / "events.db", tmp_path / "read.db"
    monkeypatch.setenv("TRADECORE_EVENT_STORE_URL", f"sqlite:///{events}")
    monkeypatch.setenv("TRADECORE_READ_STORE_URL", f"sqlite:///{read}")
    clock = ManualClock(T0)
    store = SqliteEventStore(events, clock)
    bus, prices = make_bus(store, clock)
    Session(bus, prices, clock, seed=4, max_accounts=4, max_bots=2).run(commands=300)
    store.close()
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """tradecore"""

    register(app)
    return app, tmp_path


def invoke(app: typer.Typer, *args: str) -> object:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def run_json(app: typer.Typer, *args: str) -> object:
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def test_status_shows_new_projections_then_their_lag_after_a_partial_rebuild(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    before = run_json(app, "projections", "status")
    assert isinstance(before, list) and {p["state"] for p in before} == {"new"}
    head = before[0]["head"]
    assert head > 300 and before[0]["lag_events"] == head
    run_json(app, "projections", "rebuild", "portfolio", "--to-position", "100")
    after = {p["name"]: p for p in run_json(app, "projections", "status")}  # type: ignore[union-attr]
    assert after["portfolio"]["state"] == "ok" and after["portfolio"]["position"] == 100
    assert after["portfolio"]["lag_events"] == head - 100 and after["portfolio"]["lag_seconds"] > 0
    assert after["portfolio"]["rebuilt_at"] is not None
    assert after["orders"]["state"] == "new"


def test_rebuild_all_makes_every_projection_current(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    results = run_json(app, "projections", "rebuild", "--all")
    assert isinstance(results, list) and all(r["error"] is None for r in results)
    status = run_json(app, "projections", "status")
    assert all(p["state"] == "ok" and p["lag_events"] == 0 and p["lag_seconds"] == 0 for p in status)  # type: ignore[union-attr]
    table = invoke(app, "projections", "status")
    assert "portfolio" in table.output and "ok" in table.output  # type: ignore[attr-defined]


def test_status_shows_a_failed_projection_with_its_error(cli: tuple[typer.Typer, Path]) -> None:
    app, tmp = cli
    run_json(app, "projections", "rebuild", "risk")
    store = SqliteReadStore(tmp / "read.db")
    store.set_error("risk", "KeyError: 'x' (event 7 OrderFilled of account-acc-1)")
    store.close()
    risk = next(p for p in run_json(app, "projections", "status") if p["name"] == "risk")  # type: ignore[union-attr]
    assert risk["state"] == "failed" and risk["error"].startswith("KeyError")


def test_rebuild_needs_a_name_or_all(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    assert CliRunner().invoke(app, ["projections", "rebuild"]).exit_code == 2
    assert CliRunner().invoke(app, ["projections", "rebuild", "orders", "--all"]).exit_code == 2
    assert CliRunner().invoke(app, ["projections", "rebuild", "nope"]).exit_code == 2


def test_list_names_every_projection(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    names = {p["name"] for p in run_json(app, "projections", "list")}  # type: ignore[union-attr]
    assert {"portfolio", "orders", "positions", "risk"} <= names


def test_audit_a_stream_at_a_time(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    full = run_json(app, "audit", "account-acc-1")
    assert isinstance(full, dict) and full["version"] > 3
    third = full["events"][2]["metadata"]["ts_recorded"]
    early = run_json(app, "audit", "account-acc-1", "--at", third)
    assert isinstance(early, dict) and 3 <= early["version"] < full["version"]
    assert all(e["metadata"]["ts_recorded"] <= third for e in early["events"])
    text = invoke(app, "audit", "account-acc-1", "--at", third)
    assert "FundsDeposited" in text.output  # type: ignore[attr-defined]


def test_audit_an_account_portfolio_at_a_time(cli: tuple[typer.Typer, Path]) -> None:
    app, _ = cli
    doc = run_json(app, "audit", "account", "acc-1", "--at", "2026-01-01T01:00:00Z")
    assert isinstance(doc, dict) and doc["account_id"] == "acc-1"
    assert doc["tables"]["portfolio_accounts"]["acc-1"]["account_id"] == "acc-1"
    assert CliRunner().invoke(app, ["audit", "account"]).exit_code == 2
    assert CliRunner().invoke(app, ["audit", "user-1"]).exit_code == 2
