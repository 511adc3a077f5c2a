"""What one app holds at run time, and who is calling.

``ApiContext`` is built by ``create_app`` and stored on ``app.state.ctx``; routers reach
it through the dependencies in ``api.deps``. It sends commands (timed and counted), loads
aggregates for exact write-side reads and ownership checks, and caches portfolio reads
until the in-process runner (or, in distributed mode, a Kafka change notice followed by
``api.updates``) reports a change to their rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread

from adapters.bootstrap import System
from adapters.settings import Settings
from api.auth import Passwords, Permission, Tokens, allowed
from api.errors import ApiError
from api.metrics import ApiMetrics
from api.ratelimit import RateLimiter, Window
from api.settings import ApiSettings
from commands.messages import Command, OpenAccount
from domain.account import Account
from domain.aggregate import Aggregate
from domain.bot import Bot, BotStatus
from domain.errors import DomainError
from domain.user import Role, User
from domain.values import TradingMode, derived_id
from projections import portfolio as _pf
from projections.store import ReadStore
from streams.bot_supervisor import BotSupervisor
from streams.runner import ProjectionRunner

A = TypeVar("A", bound=Aggregate)


def paper_account_id(user_id: str) -> str:
    """The id of a user's paper account (derived, so opening it again is harmless)."""
    return derived_id("acc", user_id, TradingMode.PAPER.value)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of a request and the accounts it may see."""

    user_id: str
    role: Role
    email: str
    paper_account_id: str

    @property
    def account_ids(self) -> tuple[str, ...]:
        return (self.paper_account_id,)

    def account_for(self, mode: TradingMode) -> str | None:
        return self.paper_account_id if mode is TradingMode.PAPER else None

    def can(self, permission: Permission) -> bool:
        return allowed(self.role, permission)

    def key(self, idempotency_key: str | None) -> str | None:
        """An Idempotency-Key namespaced by user, so two users never share one."""
        return None if idempotency_key is None else f"{self.user_id}:{idempotency_key}"

    def owns_account(self, account_id: str | None) -> bool:
        return account_id is not None and account_id in self.account_ids


class PortfolioCache:
    """Portfolio reads by (owner, mode), dropped when their accounts' rows change.

    A generation counter keeps a read that raced with a change from being stored. A
    suspended cache (``live=False``: nobody reports changes, e.g. the updates follower is
    not connected) neither serves nor stores anything.
    """

    def __init__(self, *, live: bool = True) -> None:
        self._items: dict[tuple[str, str], tuple[frozenset[str], Any]] = {}
        self._generation = 0
        self._live = live
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        return self._live

    def suspend(self) -> None:
        """Stop serving and storing (changes would go unseen), and forget everything."""
        with self._lock:
            self._live = False
            self._generation += 1
            self._items.clear()

    def resume(self) -> None:
        """Serve again from an empty cache (changes are reported again from now on)."""
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._live = True

    def get(self, owner: str, mode: str) -> tuple[int, Any | None]:
        with self._lock:
            hit = self._items.get((owner, mode)) if self._live else None
            return self._generation, None if hit is None else hit[1]

    def put(self, owner: str, mode: str, accounts: frozenset[str], value: Any, generation: int) -> None:
        with self._lock:
            if self._live and generation == self._generation:
                self._items[(owner, mode)] = (accounts, value)

    def invalidate(self, accounts: set[str] | None) -> None:
        """Drop entries of ``accounts`` (every entry when None or an account is unknown)."""
        with self._lock:
            self._generation += 1
            if accounts is None:
                self._items.clear()
                return
            known: set[str] = set()
            for acc, _ in self._items.values():
                known |= acc
            if not accounts <= known:
                self._items.clear()  # a new account: its owner's entry does not list it yet
                return
            for k in [k for k, (acc, _) in self._items.items() if acc & accounts]:
                del self._items[k]

    def on_change(self, projection: str, changed: dict[str, set[str]]) -> None:
        if projection != "portfolio":
            return
        if changed.get(_pf.PRICES):
            self.invalidate(None)
            return
        accounts: set[str] = set(changed.get(_pf.ACCOUNTS, ()))
        for table, sep in ((_pf.ASSETS, "|"), (_pf.DAILY, ":"), (_pf.CURVE, ":")):
            for key in changed.get(table, ()):
                accounts.add(key.rsplit(sep, 1)[0] if sep == ":" else key.split(sep, 1)[0])
        if accounts:
            self.invalidate(accounts)


@dataclass
class ApiContext:
    settings: Settings
    api: ApiSettings
    system: System
    read_store: ReadStore
    runner: ProjectionRunner | None
    passwords: Passwords
    tokens: Tokens
    limiter: RateLimiter
    metrics: ApiMetrics
    portfolio_cache: PortfolioCache | None
    bots: BotSupervisor | None = None
    started_at: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    extras: dict[str, Any] = field(default_factory=dict)

    # --- commands ----------------------------------------------------------------------

    def send(self, cmd: Command) -> dict[str, Any]:
        """Run ``cmd`` on the bus; count and time it by outcome."""
        name = type(cmd).__name__
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            return self.system.bus.handle(cmd)
        except DomainError as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.commands.labels(name, outcome).inc()
            self.metrics.command_latency.labels(name).observe(time.perf_counter() - t0)

    # --- exact reads of the write side ------------------------------------------------

    def load(self, cls: type[A], aggregate_id: str) -> A:
        return self.system.bus.repo.load(cls, aggregate_id)

    def user(self, user_id: str) -> User | None:
        user = self.load(User, user_id)
        return user if user.exists else None

    def caller_for(self, user_id: str) -> Caller | None:
        user = self.user(user_id)
        if user is None:
            return None
        return Caller(user_id=user_id, role=user.s.role, email=user.s.email, paper_account_id=paper_account_id(user_id))

    def account(self, caller: Caller, mode: TradingMode = TradingMode.PAPER) -> Account:
        """The caller's account of ``mode``; 404 when it does not exist."""
        account_id = caller.account_for(mode)
        if account_id is None:
            raise ApiError("LIVE_TRADING_DISABLED", f"no {mode.value} account: live trading is not enabled")
        acc = self.load(Account, account_id)
        if not acc.s.opened:
            raise ApiError("NOT_FOUND", "account not found; log in again to open it")
        return acc

    def own_bot(self, caller: Caller, bot_id: str) -> Bot:
        """The caller's bot ``bot_id``; 404 for an unknown, deleted or someone else's bot."""
        bot = self.load(Bot, bot_id)
        if not bot.s.created or bot.s.owner_id != caller.user_id or bot.s.status is BotStatus.DELETED:
            raise ApiError("NOT_FOUND", f"bot {bot_id} not found")
        return bot

    def ensure_paper_account(self, user_id: str) -> str:
        """Open the user's paper account unless it is open (repairs a registration cut short)."""
        account_id = paper_account_id(user_id)
        self.send(
            OpenAccount(
                account_id=account_id,
                owner_id=user_id,
                mode=TradingMode.PAPER,
                currency=self.settings.quote_currency,
                idempotency_key=f"open-paper-account:{user_id}",
                user_id=user_id,
            )
        )
        return account_id

    # --- rate limits ----------------------------------------------------------------------

    async def rate_hit(self, name: str, identity: str) -> Window:
        if self.limiter.blocking:
            return await anyio.to_thread.run_sync(self.limiter.hit, name, identity)
        return self.limiter.hit(name, identity)

    # --- read side ----------------------------------------------------------------------

    def wait_for_read_side(self, timeout: float = 2.0) -> bool:
        """Wait until the in-process runner applied everything stored now (best effort)."""
        if self.runner is None:
            return False
        return self.runner.wait_until(self.system.store.last_position(), timeout)

    def cached_portfolio(self, owner: str, mode: str, compute: Callable[[], Any]) -> Any:
        cache = self.portfolio_cache
        if cache is None:
            return compute()
        generation, hit = cache.get(owner, mode)
        if hit is not None:
            return hit
        value = compute()
        cache.put(owner, mode, frozenset(value.get("accounts", ())), value, generation)
        return value
