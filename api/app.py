"""The FastAPI app factory. Nothing is built at import time.

``create_app(settings)`` wires the embedded system (or the ``system`` it is given), the
read store, the projection runner, the bot supervisor, auth, rate limits, metrics and the
WebSocket hub; the lifespan starts the background work (projection runner and paper venue
threads, the runners of the running bots, the WebSocket dispatcher task, and in distributed
mode the Kafka updates follower of ``api.updates``) through ``adapters.tasks`` and stops it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio.to_thread
import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from adapters.bootstrap import System, bootstrap
from adapters.kafka.settings import KafkaSettings
from adapters.readstore import open_read_store
from adapters.settings import Settings
from adapters.tasks import REGISTRY, Supervised, spawn_task, spawn_thread
from api import errors
from api.auth import Passwords, Tokens
from api.context import ApiContext, PortfolioCache
from api.metrics import ApiMetrics
from api.middleware import ApiMiddleware
from api.ratelimit import RateLimiter
from api.routers import (
    analytics,
    audit,
    auth,
    backtesting,
    bots,
    config,
    funds,
    health,
    markets,
    notifications,
    orders,
    portfolio,
    positions,
    risk,
    simulation,
    strategies,
    trades,
    trading,
    users,
)
from api.schemas import ERROR_RESPONSES
from api.settings import ApiSettings
from api.updates import build_follower, should_follow
from api.ws import Hub
from api.ws import router as ws_router
from commands.user_handlers import ChangeRole, RegisterUser
from domain.user import Role, user_id_for_email
from projections.registry import ALL_PROJECTIONS
from projections.store import ReadStore
from streams.bot_supervisor import BotSupervisor, SupervisorSettings
from streams.runner import ProjectionRunner

log = structlog.get_logger(__name__)

ROUTERS = (
    auth.router,
    users.router,
    bots.router,
    orders.router,
    positions.router,
    trades.router,
    portfolio.router,
    risk.router,
    analytics.router,
    trading.router,
    funds.router,
    markets.router,
    simulation.router,
    config.router,
    notifications.router,
    audit.router,
    health.router,
    backtesting.router,
    strategies.router,
)


def _ensure_first_admin(ctx: ApiContext) -> None:
    email, password = ctx.api.first_admin_email, ctx.api.first_admin_password
    if not email or password is None:
        return
    user_id = user_id_for_email(email)
    user = ctx.user(user_id)
    if user is None:
        ctx.send(
            RegisterUser(
                email=email, role=Role.ADMIN, password_hash=ctx.passwords.hash(password.get_secret_value()),
                user_id="system",
            )
        )
        log.info("api.first_admin_created", user_id=user_id)
    elif user.s.role is not Role.ADMIN:
        ctx.send(ChangeRole(subject_id=user_id, role=Role.ADMIN, user_id="system"))
    ctx.ensure_paper_account(user_id)


def create_app(
    settings: Settings | None = None,
    system: System | None = None,
    *,
    api_settings: ApiSettings | None = None,
    read_store: ReadStore | None = None,
    kafka: KafkaSettings | None = None,
) -> FastAPI:
    """Build the app; ``system`` and ``read_store`` given here are not closed by it.

    ``kafka`` is where the updates follower reads change notices (default: from the
    environment); it is only used when the app follows them (``ApiSettings.follow_updates``).
    """
    settings = settings or Settings()
    api_settings = api_settings or ApiSettings(environment=settings.environment)
    if api_settings.environment != settings.environment:
        raise ValueError(
            f"API settings are for {api_settings.environment!r}, system settings for {settings.environment!r}"
        )
    owned: list[object] = []
    if system is None:
        system = bootstrap(settings)
        owned.append(system)
    if read_store is None:
        read_store = open_read_store(settings.read_store_url)
        owned.append(read_store)
    runner = ProjectionRunner(system.store, read_store, ALL_PROJECTIONS) if api_settings.run_projections else None
    metrics = ApiMetrics()
    metrics.watch(system.store, read_store)
    system.bus.on_committed.append(metrics.on_committed)
    following = should_follow(api_settings)
    # Following, the cache stays suspended until the follower is connected (see api.updates).
    cache = (
        PortfolioCache(live=runner is not None)
        if (api_settings.portfolio_cache and (runner is not None or following))
        else None
    )
    grace = settings.bar_close_grace
    supervisor = (
        BotSupervisor(system, SupervisorSettings(close_grace=None if grace is None else timedelta(seconds=grace)))
        if api_settings.run_bots
        else None
    )
    ctx = ApiContext(
        settings=settings,
        api=api_settings,
        system=system,
        read_store=read_store,
        runner=runner,
        passwords=Passwords(api_settings),
        tokens=Tokens(api_settings),
        limiter=RateLimiter(api_settings),
        metrics=metrics,
        portfolio_cache=cache,
        bots=supervisor,
    )
    hub = Hub(ctx)
    ctx.extras["hub"] = hub
    if runner is not None:
        if cache is not None:
            runner.add_listener(cache.on_change)
        runner.add_listener(hub.on_change)
    follower = build_follower(kafka, hub, cache) if following else None
    if follower is not None:
        ctx.extras["updates"] = follower

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        ctx.stop = threading.Event()  # a fresh one, so an app given its system can be started again
        await anyio.to_thread.run_sync(_ensure_first_admin, ctx)
        threads: dict[str, Supervised] = {}
        if runner is not None:
            await anyio.to_thread.run_sync(runner.start)
            threads["projection-runner"] = spawn_thread("projection-runner", runner.run, ctx.stop)
        if api_settings.run_paper_venue:
            threads["paper-venue"] = spawn_thread("paper-venue", system.paper.run, ctx.stop)
        if supervisor is not None:
            # After the paper venue: a resumed runner's first order is filled by a venue that knows the log.
            await anyio.to_thread.run_sync(supervisor.start)
        ctx.extras["tasks"] = threads
        dispatcher = spawn_task("ws-dispatcher", hub.run())
        follow: asyncio.Task[None] | None = None
        if follower is not None:
            from streams.agents import install_fetch_wait_floor

            install_fetch_wait_floor(follower.settings.fetch_wait_floor_ms)  # an idle fetch must not spin
            follow = spawn_task("updates-follower", follower.run())
            threads["updates-follower"] = REGISTRY["updates-follower"]
        # Start-up objects (routes, models, settings) live for the whole process: keeping them
        # out of the collector's generations makes full collections, and tail latency, smaller.
        gc.collect()
        gc.freeze()
        log.info("api.started", environment=api_settings.environment, threads=sorted(threads))
        try:
            yield
        finally:
            ctx.stop.set()
            dispatcher.cancel()
            if follow is not None:
                follow.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(follow, 10.0)
            if supervisor is not None:
                await anyio.to_thread.run_sync(supervisor.stop)
            for sup in threads.values():
                await anyio.to_thread.run_sync(sup.finished.wait, 5.0)
            for obj in owned:
                obj.close()  # type: ignore[attr-defined]
            log.info("api.stopped")

    app = FastAPI(
        title=api_settings.title,
        version=api_settings.version,
        description="tradecore: event-sourced CQRS trading core. Errors use the envelope of ErrorEnvelope.",
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    for r in ROUTERS:
        app.include_router(r, prefix="/api", responses=ERROR_RESPONSES)
    app.include_router(ws_router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    if api_settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(api_settings.cors_origins),
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        )
    route_paths = {id(route): "/api" + route.path for r in ROUTERS for route in r.routes if hasattr(route, "path")}
    app.add_middleware(ApiMiddleware, metrics=metrics, route_paths=route_paths)
    return app
