"""Admin commands: ``tradecore projections list|status|rebuild`` and ``tradecore audit``.

Every command builds what it needs from ``Settings()`` when it runs (event store, read
store, the projection registry); nothing is opened at import.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from adapters.eventstore import open_event_store
from adapters.readstore import open_read_store
from adapters.settings import Settings
from adapters.time import SystemClock
from commands.ports import EventStore
from projections.base import Projection
from projections.store import CopyInfo, ReadStore

projections_app = typer.Typer(help="Read models: list them, show their lag, rebuild them.", no_args_is_help=True)

_out = Console()
_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``projections`` and ``audit`` to the ``tradecore`` command."""
    app.add_typer(projections_app, name="projections")
    app.command("audit")(audit)


def _settings() -> Settings:
    """Settings, with logs routed to stderr (stdout carries the command's output)."""
    from adapters.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


@contextlib.contextmanager
def _stores() -> Iterator[tuple[EventStore, ReadStore]]:
    settings = _settings()
    store = open_event_store(settings.event_store_url, SystemClock())
    try:
        read_store = open_read_store(settings.read_store_url)
        try:
            yield store, read_store
        finally:
            read_store.close()
    finally:
        store.close()


def _projections() -> list[type[Projection]]:
    from projections.registry import ALL_PROJECTIONS

    return list(ALL_PROJECTIONS)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(
        value, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    ).decode() + "\n")


def _parse_time(text: str) -> datetime:
    """ISO 8601 (``Z`` allowed); a time without a zone is UTC."""
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


# --- projections list ----------------------------------------------------------------


@projections_app.command("list")
def list_projections(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the projections, their version, tables and the events they handle."""
    items: list[dict[str, Any]] = [
        {
            "name": p.name,
            "version": p.version,
            "tables": [t.name for t in p.tables],
            "handles": sorted(p.handles),
        }
        for p in _projections()
    ]
    if json_out:
        _print_json(items)
        return
    table = Table(title="projections")
    for col in ("name", "version", "tables", "handles"):
        table.add_column(col)
    for i in items:
        table.add_row(i["name"], str(i["version"]), ", ".join(i["tables"]), str(len(i["handles"])))
    _out.print(table)


# --- projections status ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectionLag:
    name: str
    state: str
    """ok | failed | stale (built by another version: rebuild) | new (never run) | rebuilding."""
    copy: int | None
    version: int | None
    code_version: int
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    last_event_ts: datetime | None
    updated_at: datetime | None
    rebuilt_at: datetime | None
    error: str | None
    other_copies: list[int]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        for k in ("last_event_ts", "updated_at", "rebuilt_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out


def projection_lags(store: EventStore, read_store: ReadStore, projections: list[type[Projection]],
                    now: datetime | None = None) -> list[ProjectionLag]:
    """Where each projection stands against the head of the log."""
    now = now or SystemClock().now()
    head = store.last_position()
    by_name: dict[str, list[CopyInfo]] = {}
    for info in read_store.copies():
        by_name.setdefault(info.name, []).append(info)
    oldest_unapplied: dict[int, datetime] = {}
    out = []
    for p in projections:
        copies = by_name.get(p.name, [])
        active = next((c for c in copies if c.active), None)
        others = [c.copy for c in copies if not c.active]
        position = active.position if active else 0
        lag = max(head - position, 0)
        lag_s = 0.0
        if lag:
            ts = oldest_unapplied.get(position)
            if ts is None:
                nxt = store.read_all(position, 1)
                ts = oldest_unapplied[position] = nxt[0].ts_recorded if nxt else now
            lag_s = max((now - ts).total_seconds(), 0.0)
        if active is None:
            state = "new"
        elif active.error:
            state = "failed"
        elif active.is_stale(p):
            state = "stale"
        elif others:
            state = "rebuilding"
        else:
            state = "ok"
        out.append(ProjectionLag(
            name=p.name, state=state, copy=active.copy if active else None,
            version=active.version if active else None, code_version=p.version, position=position,
            head=head, lag_events=lag, lag_seconds=round(lag_s, 3),
            last_event_ts=active.last_event_ts if active else None,
            updated_at=active.updated_at if active else None,
            rebuilt_at=active.rebuilt_at if active else None,
            error=active.error if active else None, other_copies=others,
        ))
    return out


_STATE_STYLE = {"ok": "green", "failed": "bold red", "stale": "yellow", "new": "dim", "rebuilding": "cyan"}


@projections_app.command("status")
def status(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show each projection's checkpoint, lag (events and seconds), version and state."""
    with _stores() as (store, read_store):
        lags = projection_lags(store, read_store, _projections())
    if json_out:
        _print_json([lag.to_dict() for lag in lags])
        return
    table = Table(title=f"projections (log head {lags[0].head if lags else 0})")
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for col in ("position", "lag", "lag s", "version", "copy"):
        table.add_column(col, justify="right")
    table.add_column("rebuilt")
    table.add_column("error", overflow="fold")
    for lag in lags:
        version = str(lag.version) if lag.version is not None else "-"
        if lag.version is not None and lag.version != lag.code_version:
            version += f" (code {lag.code_version})"
        table.add_row(
            lag.name, f"[{_STATE_STYLE.get(lag.state, '')}]{lag.state}[/]", str(lag.position),
            str(lag.lag_events), f"{lag.lag_seconds:.1f}", version, str(lag.copy or "-"),
            lag.rebuilt_at.strftime("%Y-%m-%d %H:%M:%S") if lag.rebuilt_at else "-",
            (lag.error or "")[:80],
        )
    _out.print(table)


# --- projections rebuild ----------------------------------------------------------------


@projections_app.command("rebuild")
def rebuild_command(
    name: str | None = typer.Argument(None, help="projection to rebuild"),
    all_: bool = typer.Option(False, "--all", help="rebuild every projection (one pass over the log)"),
    to_position: int | None = typer.Option(None, "--to-position", min=0, help="stop the replay at this position"),
    max_rows: int | None = typer.Option(
        None, "--max-rows", min=1000,
        help="rows kept in memory per projection (default all: fastest); others are flushed and re-read",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Replay the log into fresh copies and swap them in (live copies untouched until the swap)."""
    from streams.rebuild import RebuildProgress, rebuild

    known = _projections()
    if all_ == (name is not None):
        raise typer.BadParameter("give a projection NAME or --all (not both)")
    if name is not None:
        chosen = [p for p in known if p.name == name]
        if not chosen:
            raise typer.BadParameter(f"no projection {name!r}; known: {', '.join(p.name for p in known)}")
    else:
        chosen = known
    with _stores() as (store, read_store):
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[phase]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        with Progress(*columns, console=_err, transient=json_out) as bar:
            tasks = {p.name: bar.add_task(p.name, total=None, phase="start") for p in chosen}

            def on_progress(pr: RebuildProgress) -> None:
                for task in tasks.values():
                    bar.update(task, completed=pr.position, total=max(pr.head, pr.position), phase=pr.phase)

            try:
                results = rebuild(store, read_store, chosen, to_position=to_position, max_rows=max_rows,
                                  progress=on_progress)
            except KeyboardInterrupt:
                _err.print("[yellow]interrupted: the live copies are untouched; the partial copies are dropped"
                           " (or by the next rebuild)[/]")
                raise typer.Exit(130) from None
    if json_out:
        _print_json([
            {"name": r.name, "copy": r.copy, "position": r.position, "events": r.events, "applied": r.applied,
             "rows": r.rows, "seconds": round(r.seconds, 3), "error": r.error}
            for r in results
        ])
    else:
        table = Table(title="rebuild")
        for col in ("name", "copy", "position", "events", "rows", "seconds", "ev/s", "result"):
            table.add_column(col)
        for r in results:
            rate = f"{r.events / r.seconds:,.0f}" if r.seconds else "-"
            table.add_row(r.name, str(r.copy), str(r.position), str(r.events), str(r.rows), f"{r.seconds:.2f}",
                          rate, "[green]swapped[/]" if r.ok else f"[red]{r.error}[/]")
        _out.print(table)
    if any(not r.ok for r in results):
        raise typer.Exit(1)


# --- audit ----------------------------------------------------------------------------


def audit(
    target: str = typer.Argument(..., help="a stream id (account-<id>, bot-<id>), or 'account' followed by an id"),
    account_id: str | None = typer.Argument(None, help="with 'account': the account whose portfolio to show"),
    at: str | None = typer.Option(None, "--at", help="ISO 8601 time (UTC if no zone); default: now"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """What the system knew at a time: a stream's events and state, or an account's portfolio."""
    from streams.audit import audit_stream, portfolio_at

    when = _parse_time(at) if at else None
    settings = _settings()
    store = open_event_store(settings.event_store_url, SystemClock())
    try:
        if target == "account":
            if not account_id:
                raise typer.BadParameter("usage: tradecore audit account ID --at TIME")
            result = portfolio_at(store, account_id, when or SystemClock().now())
            _show_portfolio(result, json_out)
            return
        if account_id is not None:
            raise typer.BadParameter("give one stream id, or 'account ID'")
        try:
            audited = audit_stream(store, target, when)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if not audited.events and json_out is False:
            _err.print(f"[yellow]{target}: no events recorded{' by ' + when.isoformat() if when else ''}[/]")
        if json_out:
            _print_json(audited.to_dict())
            return
        table = Table(title=f"{target} as known at {when.isoformat() if when else 'now'}")
        for col, width in (("version", 7), ("position", 8), ("type", 20), ("recorded (UTC)", 26), ("by", 6)):
            table.add_column(col, no_wrap=True, min_width=width)
        table.add_column("data", overflow="ellipsis", no_wrap=True, max_width=60)
        for e in audited.events:
            recorded = e.ts_recorded.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            table.add_row(str(e.version), str(e.position), e.type, recorded,
                          str(e.metadata.get("user_id") or ""), orjson.dumps(e.data).decode()[:120])
        _out.print(table)
        _out.print_json(
            orjson.dumps(audited.state, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
        )
    finally:
        store.close()


def _show_portfolio(result: Any, json_out: bool) -> None:
    def plain(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            k: {f: (v.isoformat() if isinstance(v, datetime) else v) for f, v in r.items()}
            for k, r in rows.items()
        }

    doc = {
        "account_id": result.account_id, "at": result.at.isoformat(), "version": result.version,
        "position": result.position, "tables": {t: plain(rows) for t, rows in result.tables.items()},
    }
    if json_out:
        _print_json(doc)
        return
    _out.print(f"[bold]portfolio of {result.account_id} at {result.at.isoformat()}[/] "
               f"(stream version {result.version}, log position {result.position})")
    for table_name, rows in doc["tables"].items():
        if not rows:
            continue
        fields = list(next(iter(rows.values())))
        table = Table(title=table_name)
        for f in fields:
            table.add_column(f)
        for row in rows.values():
            table.add_row(*(str(row.get(f, "")) for f in fields))
        _out.print(table)
