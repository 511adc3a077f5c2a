"""The one way to start background work: failures are logged and kept for health checks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Supervised:
    """A started background thread or task and how it ended, if it did."""

    name: str
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def failed(self) -> bool:
        return self.error is not None


REGISTRY: dict[str, Supervised] = {}


def spawn_thread(name: str, target: Callable[..., Any], *args: Any, daemon: bool = True) -> Supervised:
    """Run ``target(*args)`` in a named thread; an exception is logged and recorded, never lost."""
    sup = Supervised(name)
    REGISTRY[name] = sup

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:
            sup.error = exc
            log.critical("background.failed", task=name, exc_info=exc)
        finally:
            sup.finished.set()

    threading.Thread(target=run, name=name, daemon=daemon).start()
    return sup


def spawn_task(name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Schedule ``coro`` on the running loop; a failure is logged and recorded, never lost."""
    sup = Supervised(name)
    REGISTRY[name] = sup
    task = asyncio.get_running_loop().create_task(coro, name=name)

    def done(t: asyncio.Task[Any]) -> None:
        sup.finished.set()
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            sup.error = exc
            log.critical("background.failed", task=name, exc_info=exc)

    task.add_done_callback(done)
    return task
