"""WebSocket fan-out of read-model changes: a snapshot on connect, then the caller's updates.

Channels: ``/ws/portfolio``, ``/ws/positions``, ``/ws/trades``, ``/ws/bot-status``,
``/ws/notifications``, ``/ws/performance-metrics`` and ``/ws/market-data``. The access
token goes in the query string (``?token=...``); a missing or invalid one closes the
socket with 1008 (policy violation).

The projection runner calls ``Hub.on_change`` (in its own thread) after every commit with
the changed keys per table; in distributed mode the updates follower (``api.updates``)
calls it for every change notice the workers publish on Kafka. The hub hands the change
to its dispatcher task on the event loop, which reads the changed rows once, keeps those
of each connection's own accounts and queues them on that connection. Each connection
writes from its own bounded queue, so a slow client never holds up the others (its oldest
messages are dropped).

When the changed keys are not known (a notice whose table changed too many rows to list
them, or the follower (re)connecting after notices may have been missed), ``Hub.refresh``
sends the affected connections a fresh ``snapshot``: a snapshot can come again at any
time and replaces everything the client holds for that channel.

Messages: ``{"type": "snapshot" | "update", "channel", "data", "timestamp"}``; market data
follows seed 004: subscribe with ``{"type": "subscribe", "symbols": [...]}``, receive
``{"type": "price_update", "symbol", "price", "timestamp"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio.to_thread
import orjson
import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from api.auth import Permission
from api.context import ApiContext, Caller
from api.errors import ApiError
from api.routers.bots import bot_from_row
from api.routers.notifications import notification_from_row
from api.routers.orders import order_from_row
from api.routers.portfolio import portfolio_out
from api.routers.positions import position_from_row
from api.routers.trades import trade_from_row
from domain.errors import ValidationFailed
from domain.values import Symbol
from projections import bots as _bots
from projections import notifications as _ntf
from projections import orders as _orders
from projections import performance as _perf
from projections import portfolio as _pf
from projections import positions as _pos
from projections import queries
from projections import risk as _risk

log = structlog.get_logger(__name__)

router = APIRouter(tags=["websockets"])

POLICY_VIOLATION = 1008
QUEUE_SIZE = 256
PRICE_POLL_SECONDS = 0.25
PERIODS = ("1d", "7d", "30d", "90d", "1y", "all")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


@dataclass(eq=False)
class Connection:
    socket: WebSocket
    caller: Caller
    channel: str
    params: dict[str, str]
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    symbols: set[str] = field(default_factory=set)

    def push(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message, default=_default)
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # drop the oldest: the newest state matters most
        self.queue.put_nowait(data)

    def owns(self, row: dict[str, Any]) -> bool:
        acc = row.get("account_id")
        if acc is not None:
            return self.caller.owns_account(acc)
        return row.get("owner_id") == self.caller.user_id

    @property
    def mode(self) -> str:
        return self.params.get("mode", "paper")

    @property
    def period(self) -> str:
        p = self.params.get("period", "30d")
        return p if p in PERIODS else "30d"


# --- what each channel shows ------------------------------------------------------------


def _alert_as_notification(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"], "category": "alert", "type": r["type"], "severity": r["severity"],
        "title": f"Risk alert: {r['type']}", "message": r["message"], "ts": r["ts"], "read": r["read"],
        "read_at": r["read_at"], "account_id": r["account_id"],
    }


ROW_TABLES: dict[str, dict[str, Callable[[dict[str, Any]], BaseModel]]] = {
    "positions": {_pos.POSITIONS: position_from_row},
    "trades": {_orders.TRADES: trade_from_row, _orders.ORDERS: order_from_row},
    "bot-status": {_bots.BOTS: bot_from_row},
    "notifications": {
        _ntf.NOTIFICATIONS: notification_from_row,
        _risk.ALERTS: lambda r: notification_from_row(_alert_as_notification(r)),
    },
}
_KIND = {
    _pos.POSITIONS: "position",
    _orders.TRADES: "trade",
    _orders.ORDERS: "order",
    _bots.BOTS: "bot",
    _ntf.NOTIFICATIONS: "notification",
    _risk.ALERTS: "notification",
}
AGGREGATE_CHANNELS = ("portfolio", "performance-metrics")
CHANNELS = (*ROW_TABLES, *AGGREGATE_CHANNELS, "market-data")


def snapshot(ctx: ApiContext, conn: Connection) -> Any:
    """What a new connection is sent first (called in a worker thread)."""
    reads = ctx.read_store
    c = conn.caller
    if conn.channel == "positions":
        items = queries.positions(reads, account_id=c.paper_account_id, limit=500).items
        return [position_from_row(r) for r in items if r["status"] != _pos.CLOSED]
    if conn.channel == "trades":
        return [trade_from_row(r) for r in queries.trades(reads, account_id=c.paper_account_id, limit=50).items]
    if conn.channel == "bot-status":
        rows = queries.bots(reads, owner_id=c.user_id, limit=500).items
        return [bot_from_row(r) for r in rows if r["status"] not in (None, "deleted")]
    if conn.channel == "notifications":
        return [notification_from_row(r) for r in queries.notifications(reads, owner_id=c.user_id, limit=50)]
    if conn.channel == "portfolio":
        return portfolio_out(queries.portfolio_for_mode(reads, c.user_id, conn.mode))
    if conn.channel == "performance-metrics":
        return performance(ctx, conn)
    return None


def performance(ctx: ApiContext, conn: Connection) -> dict[str, Any]:
    row = queries.performance(
        ctx.read_store, "account", conn.caller.paper_account_id, conn.period, ctx.system.clock.now()
    )
    from api.routers.analytics import PerformanceOut

    return PerformanceOut.model_validate(row).model_dump(mode="json", by_alias=True)


def channels_for(projection: str, tables: Iterable[str]) -> set[str]:
    """The channels that show rows of ``tables`` of ``projection`` (as ``Hub.dispatch`` routes them)."""
    names = set(tables)
    out = {channel for channel, shown in ROW_TABLES.items() if names & shown.keys()}
    if projection == "portfolio":
        out |= {"portfolio", "performance-metrics"}
    elif projection == "performance":
        out.add("performance-metrics")
    return out


def _accounts_of(changed: dict[str, set[str]]) -> set[str]:
    out: set[str] = set()
    for key in changed.get(_pf.ACCOUNTS, ()):
        out.add(key)
    for key in changed.get(_pf.ASSETS, ()):
        out.add(key.split("|", 1)[0])
    for table in (_pf.DAILY, _pf.CURVE):
        for key in changed.get(table, ()):
            out.add(key.rsplit(":", 1)[0])
    return out


class Hub:
    """Connections by channel, and the dispatcher that routes read-model changes to them."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.connections: dict[str, set[Connection]] = {name: set() for name in CHANNELS}
        self._queue: asyncio.Queue[tuple[str, dict[str, set[str]]] | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh: set[str] = set()  # channels to resend snapshots of (a None in the queue)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue = asyncio.Queue()
        self._refresh = set()

    def on_change(self, projection: str, changed: dict[str, set[str]]) -> None:
        """Runner listener (runner thread): hand the change to the loop."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return
        if not any(self.connections[c] for c in CHANNELS if c != "market-data"):
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, (projection, changed))

    def refresh(self, channels: Iterable[str] | None = None) -> None:
        """Send a fresh snapshot to every connection of ``channels`` (None: every channel); any thread."""
        wanted = frozenset(c for c in (CHANNELS if channels is None else channels) if c != "market-data")
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return
        if not any(self.connections[c] for c in wanted):
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._queue_refresh, wanted)

    def _queue_refresh(self, channels: frozenset[str]) -> None:
        # Refreshes coalesce: one queued marker, however many notices asked for one meanwhile
        # (every push reads the rows as they are when it is sent, so order does not matter).
        assert self._queue is not None
        if not self._refresh:
            self._queue.put_nowait(None)
        self._refresh |= channels

    def add(self, conn: Connection) -> None:
        self.connections[conn.channel].add(conn)
        self.ctx.metrics.websockets.labels(conn.channel).inc()

    def remove(self, conn: Connection) -> None:
        if conn in self.connections[conn.channel]:
            self.connections[conn.channel].discard(conn)
            self.ctx.metrics.websockets.labels(conn.channel).dec()

    async def run(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    channels, self._refresh = frozenset(self._refresh), set()
                    await self.resend_snapshots(channels)
                else:
                    await self.dispatch(*item)
            except Exception:
                log.exception("ws.dispatch_failed", item=repr(item)[:200])

    async def resend_snapshots(self, channels: frozenset[str]) -> None:
        """A fresh snapshot for every connection of ``channels`` (one query per caller and view)."""
        built: dict[tuple[str, str, str, str], Any] = {}
        for channel in sorted(channels):
            for conn in list(self.connections[channel]):
                view = (channel, conn.caller.user_id, conn.mode, conn.period)
                if view not in built:
                    built[view] = await anyio.to_thread.run_sync(
                        lambda c=conn: _json(snapshot(self.ctx, c))  # type: ignore[misc]
                    )
                conn.push({"type": "snapshot", "channel": channel, "data": built[view], "timestamp": _now()})

    async def dispatch(self, projection: str, changed: dict[str, set[str]]) -> None:
        for channel, tables in ROW_TABLES.items():
            conns = list(self.connections[channel])
            if not conns:
                continue
            for table, build in tables.items():
                keys = changed.get(table)
                if not keys:
                    continue
                rows = await anyio.to_thread.run_sync(self._rows, table, sorted(keys))
                for row in rows:
                    message = {
                        "type": "update", "channel": channel, "kind": _KIND[table],
                        "data": _json(build(row)), "timestamp": _now(),
                    }
                    for conn in conns:
                        if conn.owns(row):
                            conn.push(message)
        if projection == "portfolio":
            accounts = _accounts_of(changed)
            everyone = bool(changed.get(_pf.PRICES))
            for conn in list(self.connections["portfolio"]):
                if everyone or accounts & set(conn.caller.account_ids):
                    data = await anyio.to_thread.run_sync(
                        lambda c=conn: _json(snapshot(self.ctx, c))  # type: ignore[misc]
                    )
                    conn.push({"type": "update", "channel": "portfolio", "data": data, "timestamp": _now()})
        if projection in ("performance", "portfolio"):
            accounts = _accounts_of(changed)
            trades = changed.get(_perf.TRADES)
            if trades:
                rows = await anyio.to_thread.run_sync(self._rows, _perf.TRADES, sorted(trades))
                accounts |= {r["account_id"] for r in rows}
            for conn in list(self.connections["performance-metrics"]):
                if accounts & set(conn.caller.account_ids):
                    data = await anyio.to_thread.run_sync(performance, self.ctx, conn)
                    conn.push({"type": "update", "channel": "performance-metrics", "data": data, "timestamp": _now()})

    def _rows(self, table: str, keys: list[str]) -> list[dict[str, Any]]:
        out = []
        for key in keys:
            row = self.ctx.read_store.get(table, key)
            if row is not None:
                out.append(row)
        return out


# --- the endpoint ------------------------------------------------------------------------


def _authenticate(ctx: ApiContext, token: str | None) -> Caller:
    if not token:
        raise ApiError("AUTHENTICATION_ERROR", "token required")
    caller = ctx.caller_for(ctx.tokens.check(token))
    if caller is None or not caller.can(Permission.READ):
        raise ApiError("INVALID_TOKEN", "token's user cannot read")
    return caller


async def _reader(conn: Connection, ctx: ApiContext) -> None:
    """Read client messages: subscriptions (market data) and pings; ends when the client goes."""
    ws = conn.socket
    while True:
        text = await ws.receive_text()
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.push({"type": "error", "message": "messages must be JSON"})
            continue
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "ping":
            conn.push({"type": "pong", "timestamp": _now()})
        elif kind in ("subscribe", "unsubscribe") and conn.channel == "market-data":
            symbols = msg.get("symbols") or []
            valid, bad = set(), []
            for s in symbols if isinstance(symbols, list) else []:
                try:
                    sym = str(Symbol(str(s)))
                except ValidationFailed:
                    bad.append(s)
                    continue
                (valid.add(sym) if ctx.system.markets.is_tradable(Symbol(sym)) else bad.append(s))
            if kind == "subscribe":
                conn.symbols |= valid
            else:
                conn.symbols -= valid
            # The price poller sends the current price of each new symbol within a tick.
            conn.push({"type": f"{kind}d", "symbols": sorted(conn.symbols), "invalid": bad, "timestamp": _now()})
        else:
            conn.push({"type": "error", "message": f"unknown message type {kind!r}"})


def _price_message(symbol: str, price: Decimal, ts: datetime | None) -> dict[str, Any]:
    return {"type": "price_update", "symbol": symbol, "price": str(price),
            "timestamp": (ts or datetime.now(UTC)).isoformat()}


async def _prices(conn: Connection, ctx: ApiContext) -> None:
    """Push a price update whenever a subscribed symbol's last price changes."""
    sent: dict[str, tuple[Decimal, datetime | None]] = {}
    while True:
        for sym in list(conn.symbols):
            last = ctx.system.prices.last(sym)
            if last is not None and sent.get(sym) != last:
                conn.push(_price_message(sym, last[0], last[1]))
                sent[sym] = last
        await asyncio.sleep(PRICE_POLL_SECONDS)


async def _serve(ws: WebSocket, channel: str) -> None:
    ctx: ApiContext = ws.app.state.ctx
    hub: Hub = ctx.extras["hub"]
    await ws.accept()
    try:
        caller = _authenticate(ctx, ws.query_params.get("token"))
    except ApiError as exc:
        await ws.close(code=POLICY_VIOLATION, reason=exc.message[:120])
        return
    params = {k: v for k, v in ws.query_params.items() if k in ("mode", "period")}
    conn = Connection(socket=ws, caller=caller, channel=channel, params=params)
    hub.add(conn)
    tasks: list[asyncio.Task[None]] = []
    try:
        if channel != "market-data":
            data = await anyio.to_thread.run_sync(snapshot, ctx, conn)
            conn.push({"type": "snapshot", "channel": channel, "data": _json(data), "timestamp": _now()})
        else:
            conn.push({"type": "snapshot", "channel": channel, "data": [], "timestamp": _now()})
            tasks.append(asyncio.create_task(_prices(conn, ctx), name=f"ws-prices-{id(conn)}"))
        reader = asyncio.create_task(_reader(conn, ctx), name=f"ws-reader-{id(conn)}")
        tasks.append(reader)
        while True:
            get = asyncio.ensure_future(conn.queue.get())
            done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                await ws.send_text(get.result().decode())
            else:
                get.cancel()
                exc = reader.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect):
                    raise exc
                return
    except WebSocketDisconnect:
        return
    finally:
        hub.remove(conn)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


def _endpoint(channel: str) -> Callable[[WebSocket], Any]:
    async def endpoint(websocket: WebSocket) -> None:
        await _serve(websocket, channel)

    endpoint.__name__ = f"ws_{channel.replace('-', '_')}"
    endpoint.__doc__ = f"Push the caller's {channel} changes (token in the query string)."
    return endpoint


for _channel in CHANNELS:
    router.add_api_websocket_route(f"/ws/{_channel}", _endpoint(_channel), name=f"ws_{_channel}")
