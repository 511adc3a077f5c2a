"""Dependencies of the routers, as ``Annotated`` aliases.

``CurrentUser`` authenticates (bearer JWT, user loaded from its stream so a role change
applies at once) and counts the request against the caller's rate limit. The role
aliases (``Reader``, ``Analyst``, ``Trader``, ``BotManager``, ``Admin``) add the
permission check of ``api.auth``; a missing permission is a 403 envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Path, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Permission
from api.context import ApiContext, Caller
from api.errors import ApiError
from domain.user import Role
from domain.values import TradingMode
from projections.base import Page, Row
from projections.store import ReadStore


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/auth/login")


async def get_caller(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise ApiError("AUTHENTICATION_ERROR", "authentication required: send 'Authorization: Bearer <token>'")
    user_id = ctx.tokens.check(credentials.credentials)
    caller = ctx.caller_for(user_id)
    if caller is None:
        raise ApiError("INVALID_TOKEN", "the token's user does not exist")
    request.state.user_id = user_id
    if ctx.limiter.enabled and caller.role is not Role.ADMIN:
        request.state.rate_limit = await ctx.rate_hit("default", user_id)
    return caller


CurrentUser = Annotated[Caller, Depends(get_caller)]


def require(permission: Permission) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that lets the request through only with ``permission``."""

    async def check(caller: CurrentUser) -> Caller:
        if not caller.can(permission):
            code = "ADMIN_ACCESS_REQUIRED" if permission is Permission.ADMIN else "AUTHORIZATION_ERROR"
            raise ApiError(
                code,
                f"role {caller.role.value!r} may not do this (needs {permission.value!r})",
                details={"role": caller.role.value, "required_permission": permission.value},
            )
        return caller

    check.__name__ = f"require_{permission.name.lower()}"
    return check


Reader = Annotated[Caller, Depends(require(Permission.READ))]
Analyst = Annotated[Caller, Depends(require(Permission.ANALYTICS))]
Trader = Annotated[Caller, Depends(require(Permission.TRADE))]
BotManager = Annotated[Caller, Depends(require(Permission.MANAGE_BOTS))]
Admin = Annotated[Caller, Depends(require(Permission.ADMIN))]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def auth_rate_limit(request: Request, ctx: Ctx) -> None:
    """5/minute (by default) per client address on login and register."""
    if ctx.limiter.enabled:
        request.state.rate_limit = await ctx.rate_hit("auth", client_address(request))


async def anonymous_rate_limit(request: Request, ctx: Ctx) -> None:
    if ctx.limiter.enabled:
        request.state.rate_limit = await ctx.rate_hit("anonymous", client_address(request))


AuthRateLimited = Depends(auth_rate_limit)
AnonymousRateLimited = Depends(anonymous_rate_limit)


def get_read_store(ctx: Ctx) -> ReadStore:
    return ctx.read_store


Reads = Annotated[ReadStore, Depends(get_read_store)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a request safely: the same key returns the first result",
    ),
]

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="an identifier (letters, digits, _ . : -)")]


T = TypeVar("T")


def account_page(
    ctx: ApiContext,
    caller: Caller,
    response: Response,
    *,
    mode: TradingMode,
    bot_id: str | None,
    fetch: Callable[[str], Page],
    build: Callable[[Row], T],
) -> list[T]:
    """One page of the caller's rows for ``mode``, with ``X-Total-Count``.

    A ``bot_id`` filter must name one of the caller's bots (404 otherwise); a caller without
    an account in ``mode`` gets an empty page. ``fetch(account_id)`` runs the query.
    """
    if bot_id is not None:
        ctx.own_bot(caller, bot_id)
    account_id = caller.account_for(mode)
    if account_id is None:
        response.headers["X-Total-Count"] = "0"
        return []
    page = fetch(account_id)
    response.headers["X-Total-Count"] = str(page.total)
    return [build(r) for r in page.items]
