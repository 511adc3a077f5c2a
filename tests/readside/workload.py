"""A random but reproducible trading session driven through the real ``CommandBus``.

Accounts open, deposit, trade market/limit orders with and without TP/SL (filled, in
parts or at once, cancelled, rejected), close positions, withdraw, halt and resume;
bots are created, started, updated and stopped. Prices follow a random walk and the
clock moves forward between commands (sometimes by hours, so days roll over). Used by
the read-side tests and by ``bench/rebuild.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from adapters.market import PriceBook, StaticMarkets
from commands import messages as m
from commands.bus import CommandBus
from commands.ports import EventStore
from domain.account import Account
from domain.clock import ManualClock
from domain.errors import DomainError
from domain.values import OrderType, Side

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
START_PRICES = {"BTC/USDT": Decimal(60000), "ETH/USDT": Decimal(3000), "SOL/USDT": Decimal(150),
                "XRP/USDT": Decimal("0.6")}
STRATEGIES = ("sma_cross", "rsi_reversion", "breakout")
_Q = Decimal("0.00000001")
_P = Decimal("0.0001")


def make_bus(store: EventStore, clock: ManualClock, *, cache: int = 100_000) -> tuple[CommandBus, PriceBook]:
    """A command bus over ``store`` with a price book holding the start prices."""
    prices = PriceBook()
    for s, p in START_PRICES.items():
        prices.update(s, p)
    bus = CommandBus(store, clock, prices, StaticMarkets(SYMBOLS), cache_capacity=cache, snapshot_every=10_000)
    return bus, prices


class Session:
    """Sends random commands; ``run`` stops after a number of commands or events."""

    def __init__(
        self,
        bus: CommandBus,
        prices: PriceBook,
        clock: ManualClock,
        *,
        seed: int = 1,
        max_accounts: int = 50,
        max_bots: int = 20,
    ) -> None:
        self.bus = bus
        self.prices = prices
        self.clock = clock
        self.rng = random.Random(seed)
        self.max_accounts = max_accounts
        self.max_bots = max_bots
        self.accounts: list[str] = []
        self.bots: dict[str, bool] = {}
        self.commands = 0
        self.refused = 0
        self._n = 0
        self._actions: list[tuple[Callable[[], None], int]] = [
            (self._open_account, 2), (self._market, 30), (self._limit, 10), (self._fill_limit, 8),
            (self._cancel, 5), (self._close, 12), (self._funds, 5), (self._reject, 3),
            (self._halt, 1), (self._bot, 4), (self._tick, 15), (self._limits, 1),
        ]
        self._weights = [w for _, w in self._actions]

    # --- driving ------------------------------------------------------------------------

    def run(self, *, commands: int | None = None, events: int | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        store = self.bus.store
        start = self.commands
        while True:
            if commands is not None and self.commands - start >= commands:
                return
            if events is not None and self.commands % 64 == 0:
                last = store.last_position()
                if progress is not None:
                    progress(last)
                if last >= events:
                    return
            self.step()

    def step(self) -> None:
        self.clock.advance(timedelta(seconds=self.rng.randint(1, 90)))
        if self.rng.random() < 0.002:
            self.clock.advance(timedelta(hours=self.rng.randint(1, 30)))
        if not self.accounts:
            self._open_account()
            return
        action = self.rng.choices(self._actions, self._weights)[0][0]
        action()

    def send(self, cmd: m.Command) -> dict[str, object] | None:
        self.commands += 1
        try:
            return self.bus.handle(cmd)
        except DomainError:
            self.refused += 1
            return None

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def _account(self) -> str:
        return self.rng.choice(self.accounts)

    def _state(self, account_id: str) -> Account:
        agg = self.bus.repo.load(Account, account_id)
        assert isinstance(agg, Account)
        return agg

    def _price(self, symbol: str) -> Decimal:
        p = self.prices.last_price(symbol)  # type: ignore[arg-type]
        assert p is not None
        return p

    def _fill(self, account_id: str, order_id: str, qty: Decimal, price: Decimal) -> None:
        fee = (qty * price * Decimal("0.001")).quantize(_Q)
        self.send(m.RecordFill(account_id=account_id, order_id=order_id, fill_id=self._id("fill"),
                               quantity=qty, price=price, fee=fee, ts_event=self.clock.now()))

    # --- actions --------------------------------------------------------------------------

    def _open_account(self) -> None:
        if len(self.accounts) >= self.max_accounts:
            return self._market()
        aid = self._id("acc")
        if self.send(m.OpenAccount(account_id=aid, owner_id=f"user-{self.rng.randint(1, 10)}")) is None:
            return None
        self.accounts.append(aid)
        self.send(m.SetRiskLimits(account_id=aid, max_position_size_pct=Decimal(40), max_open_positions=10,
                                  max_daily_loss_pct=Decimal(50), max_drawdown_pct=Decimal(80),
                                  max_leverage=Decimal(5)))
        self.send(m.Deposit(account_id=aid, amount=Decimal(self.rng.randint(20, 200) * 1000)))
        return None

    def _order_qty(self, account_id: str, symbol: str, fraction: float) -> Decimal:
        acc = self._state(account_id)
        budget = max(acc.available, Decimal(0)) * Decimal(str(fraction))
        qty = (budget / self._price(symbol)).quantize(_Q)
        return qty if qty > 0 else Decimal("0.001")

    def _market(self) -> None:
        aid = self._account()
        symbol = self.rng.choice(SYMBOLS)
        side = self.rng.choice((Side.BUY, Side.SELL))
        price = self._price(symbol)
        qty = self._order_qty(aid, symbol, self.rng.uniform(0.01, 0.08))
        tp = sl = None
        if self.rng.random() < 0.4:
            up, down = (price * Decimal("1.05")).quantize(_P), (price * Decimal("0.95")).quantize(_P)
            tp, sl = (up, down) if side is Side.BUY else (down, up)
        leverage = Decimal(self.rng.choice((1, 1, 2, 3)))
        res = self.send(m.PlaceOrder(account_id=aid, symbol=symbol, side=side, quantity=qty, take_profit=tp,
                                     stop_loss=sl, leverage=leverage, order_id=self._id("ord")))
        if not res or res.get("status") != "accepted":
            return
        oid = str(res["order_id"])
        fill_price = (price * Decimal(str(self.rng.uniform(0.999, 1.001)))).quantize(_P)
        if self.rng.random() < 0.2:
            part = (qty / 3).quantize(_Q)
            if part > 0:
                self._fill(aid, oid, part, fill_price)
                qty -= part
        self._fill(aid, oid, qty, fill_price)

    def _limit(self) -> None:
        aid = self._account()
        symbol = self.rng.choice(SYMBOLS)
        side = self.rng.choice((Side.BUY, Side.SELL))
        price = self._price(symbol)
        off = Decimal(str(self.rng.uniform(0.001, 0.02)))
        limit = (price * (1 - off if side is Side.BUY else 1 + off)).quantize(_P)
        qty = self._order_qty(aid, symbol, self.rng.uniform(0.01, 0.05))
        expires = self.clock.now() + timedelta(hours=1) if self.rng.random() < 0.2 else None
        self.send(m.PlaceOrder(account_id=aid, symbol=symbol, side=side, order_type=OrderType.LIMIT,
                               quantity=qty, limit_price=limit, order_id=self._id("lim"), expires_at=expires))

    def _open_orders(self, aid: str) -> list[tuple[str, Decimal, Decimal | None]]:
        acc = self._state(aid)
        return [(o.order_id, o.remaining, o.limit_price) for o in acc.s.orders.values()
                if o.order_type is OrderType.LIMIT]

    def _fill_limit(self) -> None:
        aid = self._account()
        orders = self._open_orders(aid)
        if not orders:
            return self._market()
        oid, remaining, limit = self.rng.choice(orders)
        assert limit is not None
        if self.rng.random() < 0.3 and remaining > Decimal("0.0001"):
            remaining = (remaining / 2).quantize(_Q)
        self._fill(aid, oid, remaining, limit)
        return None

    def _cancel(self) -> None:
        aid = self._account()
        acc = self._state(aid)
        orders = [o.order_id for o in acc.s.orders.values()]
        if not orders:
            return
        oid = self.rng.choice(orders)
        acc_now = self._state(aid)
        order = acc_now.s.orders.get(oid)
        if order is not None and order.expires_at is not None and order.expires_at <= self.clock.now():
            self.send(m.ExpireOrder(account_id=aid, order_id=oid))
        else:
            self.send(m.CancelOrder(account_id=aid, order_id=oid))

    def _close(self) -> None:
        aid = self._account()
        acc = self._state(aid)
        positions = [p for p in acc.s.positions.values() if p.closing_order_id is None]
        if not positions:
            return self._market()
        pos = self.rng.choice(positions)
        res = self.send(m.ClosePosition(account_id=aid, position_id=pos.position_id,
                                        reason=self.rng.choice(("MANUAL", "TAKE_PROFIT", "STOP_LOSS"))))
        if not res or res.get("status") != "closing":
            return None
        price = (self._price(pos.symbol) * Decimal(str(self.rng.uniform(0.995, 1.005)))).quantize(_P)
        self._fill(aid, str(res["close_order_id"]), pos.quantity, price)
        return None

    def _funds(self) -> None:
        aid = self._account()
        amount = Decimal(self.rng.randint(1, 50) * 100)
        if self.rng.random() < 0.6:
            self.send(m.Deposit(account_id=aid, amount=amount))
        else:
            self.send(m.Withdraw(account_id=aid, amount=amount))

    def _reject(self) -> None:
        aid = self._account()
        symbol = self.rng.choice(SYMBOLS)
        self.send(m.PlaceOrder(account_id=aid, symbol=symbol, side=Side.BUY, quantity=Decimal(10_000_000),
                               order_id=self._id("rej")))

    def _halt(self) -> None:
        aid = self._account()
        if self._state(aid).s.halted:
            self.send(m.ResumeTrading(account_id=aid))
        else:
            self.send(m.EmergencyStop(account_id=aid, reason="test halt"))

    def _limits(self) -> None:
        aid = self._account()
        self.send(m.SetRiskLimits(account_id=aid, max_position_size_pct=Decimal(self.rng.randint(20, 50)),
                                  max_open_positions=self.rng.randint(5, 15), max_daily_loss_pct=Decimal(50),
                                  max_drawdown_pct=Decimal(80), max_leverage=Decimal(5)))

    def _bot(self) -> None:
        if len(self.bots) < self.max_bots and (not self.bots or self.rng.random() < 0.3):
            bid = self._id("bot")
            aid = self._account()
            res = self.send(m.CreateBot(bot_id=bid, owner_id="user-1", account_id=aid, name=f"bot {bid}",
                                        symbol=self.rng.choice(SYMBOLS), strategy=self.rng.choice(STRATEGIES),
                                        parameters={"fast": 10, "slow": 30}, stop_loss_pct=Decimal(2),
                                        take_profit_pct=Decimal(4)))
            if res is not None:
                self.bots[bid] = False
            return
        bid = self.rng.choice(list(self.bots))
        running = self.bots[bid]
        r = self.rng.random()
        if r < 0.4:
            if self.send(m.StopBot(bot_id=bid) if running else m.StartBot(bot_id=bid)) is not None:
                self.bots[bid] = not running
        elif r < 0.8:
            self.send(m.UpdateBot(bot_id=bid, changes={"risk_per_trade_pct": str(self.rng.randint(1, 5))}))
        elif not running and self.send(m.DeleteBot(bot_id=bid)) is not None:
            del self.bots[bid]
        # A bot's orders: a market order tagged with the bot id.
        acc_id = self._account()
        symbol = self.rng.choice(SYMBOLS)
        res = self.send(m.PlaceOrder(account_id=acc_id, symbol=symbol, side=Side.BUY, bot_id=bid,
                                     quantity=self._order_qty(acc_id, symbol, 0.02), order_id=self._id("bord")))
        if res and res.get("status") == "accepted":
            self._fill(acc_id, str(res["order_id"]), self._state(acc_id).s.orders[str(res["order_id"])].quantity,
                       self._price(symbol))

    def _tick(self) -> None:
        symbol = self.rng.choice(SYMBOLS)
        p = self._price(symbol) * Decimal(str(self.rng.gauss(1, 0.004)))
        self.prices.update(symbol, max(p, Decimal("0.0001")).quantize(_P))
