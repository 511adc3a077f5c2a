"""Health: a cheap liveness answer, and a detailed one (stores, read-model lag, broker, tasks).

In distributed mode the ``broker`` service is the Kafka updates follower's connection
(``degraded`` while it reconnects: reads and commands work, WebSocket pushes and the
portfolio cache wait), and ``updates`` shows what it has followed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter

from adapters.tasks import REGISTRY
from api.context import ApiContext
from api.deps import Admin, Ctx
from api.schemas import ApiModel

router = APIRouter(prefix="/health", tags=["health"])


class HealthOut(ApiModel):
    status: str
    timestamp: datetime
    uptime: float
    version: str


class ServiceOut(ApiModel):
    service: str
    status: str
    response_time: float | None = None
    detail: str | None = None


class ProjectionOut(ApiModel):
    name: str
    active_copy: int
    position: int
    lag: int
    state: str
    error: str | None


class TaskOut(ApiModel):
    name: str
    running: bool
    error: str | None


class UpdatesOut(ApiModel):
    """The Kafka change-notice follower (distributed mode)."""

    topic: str
    state: str
    connected: bool
    connected_since: datetime | None
    last_notice_at: datetime | None
    last_notice_delay: float | None = None
    lag: int | None = None
    last_error: str | None = None
    positions: dict[str, int]
    notices: int
    truncated: int
    malformed: int
    resyncs: int
    failures: int
    listener_errors: int


class DetailedHealthOut(HealthOut):
    event_store_position: int | None
    max_lag: int | None
    services: list[ServiceOut]
    projections: list[ProjectionOut]
    tasks: list[TaskOut]
    updates: UpdatesOut | None = None


def _timed(fn: object) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = fn()  # type: ignore[operator]
    return value, (time.perf_counter() - t0) * 1000


def _basic(ctx: ApiContext, status: str = "healthy") -> dict[str, object]:
    return {
        "status": status,
        "timestamp": datetime.now(UTC),
        "uptime": round(time.time() - ctx.started_at, 3),
        "version": ctx.api.version,
    }


@router.get("", response_model=HealthOut)
async def health(ctx: Ctx) -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut.model_validate(_basic(ctx))


@router.get("/detailed", response_model=DetailedHealthOut)
def detailed(caller: Admin, ctx: Ctx) -> DetailedHealthOut:
    """Event store, read store, projection lag, broker and background tasks (admin)."""
    services: list[ServiceOut] = []
    head: int | None = None
    try:
        value, ms = _timed(ctx.system.store.last_position)
        head = int(value)  # type: ignore[call-overload]
        services.append(ServiceOut(service="event_store", status="healthy", response_time=round(ms, 3)))
    except Exception as exc:
        services.append(ServiceOut(service="event_store", status="unhealthy", detail=type(exc).__name__))
    projections: list[ProjectionOut] = []
    try:
        value, ms = _timed(ctx.read_store.copies)
        errors = {s.name: s for s in ctx.runner.status()} if ctx.runner is not None else {}
        for info in value:  # type: ignore[attr-defined]
            if not info.active:
                continue
            live = errors.get(info.name)
            position = max(info.position, live.position if live else 0)
            error = (live.error if live else None) or info.error
            projections.append(
                ProjectionOut(
                    name=info.name, active_copy=info.copy, position=position,
                    lag=max((head or 0) - position, 0), state="failed" if error else "ok", error=error,
                )
            )
        services.append(ServiceOut(service="read_store", status="healthy", response_time=round(ms, 3)))
    except Exception as exc:
        services.append(ServiceOut(service="read_store", status="unhealthy", detail=type(exc).__name__))
    follower = ctx.extras.get("updates")
    updates = UpdatesOut.model_validate(follower.status()) if follower is not None else None
    if updates is not None:
        services.append(
            ServiceOut(
                service="broker",
                status="healthy" if updates.connected else "degraded",
                detail=f"following {updates.topic}: {updates.state}"
                + (f" ({updates.last_error})" if updates.last_error and not updates.connected else ""),
            )
        )
    else:
        services.append(
            ServiceOut(
                service="broker",
                status="not_configured",
                detail="embedded mode: projections run in process" if ctx.runner is not None
                else "no in-process runner, not following change notices",
            )
        )
    services.append(
        ServiceOut(service="paper_venue", status="healthy" if ctx.api.run_paper_venue else "not_running")
    )
    tasks = [
        TaskOut(name=name, running=not sup.finished.is_set(), error=repr(sup.error) if sup.error else None)
        for name, sup in ctx.extras.get("tasks", {}).items()
    ]
    for name, sup in REGISTRY.items():
        if name not in ctx.extras.get("tasks", {}) and sup.error is not None:
            tasks.append(TaskOut(name=name, running=False, error=repr(sup.error)))
    bad = any(s.status == "unhealthy" for s in services) or any(p.state == "failed" for p in projections) or any(
        t.error for t in tasks
    )
    lags = [p.lag for p in projections]
    degraded = any(s.status == "degraded" for s in services)
    return DetailedHealthOut.model_validate(
        {
            **_basic(ctx, "unhealthy" if bad else "degraded" if degraded else "healthy"),
            "event_store_position": head,
            "max_lag": max(lags) if lags else None,
            "services": services,
            "projections": projections,
            "tasks": tasks,
            "updates": updates,
        }
    )
