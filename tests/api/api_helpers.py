"""Helpers: an app over an in-memory embedded system, driven through Starlette's httpx client.

Argon2 runs at its lowest cost and rate limits are high, except where a test sets its
own. Helpers register users, poll the (eventually consistent) read side and feed prices
to the paper venue the way a market-data feed would.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from adapters.bootstrap import System, bootstrap
from adapters.settings import Settings
from api.app import create_app
from api.settings import ApiSettings
from commands.user_handlers import ChangeRole
from domain.user import Role

if TYPE_CHECKING:
    from starlette.testclient import TestClient

BTC = "BTC/USDT"
ETH = "ETH/USDT"
PASSWORD = "correct-horse-battery"
_n = itertools.count(1)


def api_settings(**overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "argon2_time_cost": 1,
        "argon2_memory_cost": 64,
        "argon2_parallelism": 1,
        "rate_limit_default": "100000/hour",
        "rate_limit_auth": "100000/minute",
        "rate_limit_anonymous": "100000/hour",
    }
    values.update(overrides)
    return ApiSettings(**values)


def system_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "event_store_url": "memory://",
        "read_store_url": "memory://",
        "paper_fee_bps": Decimal(10),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    system: System

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def register(self, role: Role | None = None, **extra: Any) -> User:
        email = f"user{next(_n)}-{time.monotonic_ns()}@example.com"
        body: dict[str, Any] = {"email": email, "password": PASSWORD, "firstName": "Ada", "lastName": "L", **extra}
        if role is not None and role is not Role.ADMIN:
            body["role"] = role.value
        r = self.client.post("/api/auth/register", json=body)
        assert r.status_code == 201, r.text
        data = r.json()
        user = User(self, data["user"]["id"], email, data["token"], data["user"]["accounts"][0]["id"])
        if role is Role.ADMIN:
            self.ctx.send(ChangeRole(subject_id=user.id, role=Role.ADMIN, user_id="system"))
        return user

    def price(self, symbol: str, price: str) -> None:
        """A market-data tick: the paper venue fills what it reaches."""
        self.system.paper.on_price(symbol, Decimal(price), self.system.clock.now())

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the paper venue and the projections have processed everything stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.system.paper.catch_up()
            if self.ctx.runner.wait_until(self.system.store.last_position(), 0.05):
                self.system.paper.catch_up()
                if self.ctx.runner.wait_until(self.system.store.last_position(), 0.05):
                    return
        raise AssertionError("read side did not catch up")


@dataclass
class User:
    api: Api
    id: str
    email: str
    token: str
    account_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, url: str, **kw: Any) -> Any:
        return self.api.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, json: Any = None, **kw: Any) -> Any:
        return self.api.client.post(url, json=json, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def put(self, url: str, json: Any = None, **kw: Any) -> Any:
        return self.api.client.put(url, json=json, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def patch(self, url: str, json: Any = None, **kw: Any) -> Any:
        return self.api.client.patch(url, json=json, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def delete(self, url: str, **kw: Any) -> Any:
        return self.api.client.delete(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)


def client_class() -> type[TestClient]:
    with warnings.catch_warnings():
        # starlette 1.x suggests httpx2; httpx is what this project uses
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    return TestClient


def make_api(**overrides: Any) -> Iterator[Api]:
    system = bootstrap(system_settings())
    app = create_app(system.settings, system, api_settings=api_settings(**overrides))
    with client_class()(app, raise_server_exceptions=False) as client:
        yield Api(client=client, app=app, system=app.state.ctx.system)
    system.close()


def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy (the read side is eventually consistent)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
