"""Rate limits with the ``limits`` library: memory storage by default, Redis when configured.

Each checked request records its window in ``request.state.rate_limit``; the middleware
writes ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` on the
response. A request over its limit gets a 429 envelope with ``Retry-After``. Admins are
not limited (seed 004); health, docs and metrics are exempt.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.strategies import (
    RateLimiter as Strategy,
)

from api.errors import ApiError
from api.settings import ApiSettings


@dataclass(frozen=True, slots=True)
class Window:
    limit: int
    remaining: int
    reset: int
    """Unix time at which the window resets."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset).encode()),
        ]


class RateLimiter:
    """Checks named limits per identity (a user id or a client address)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.storage_uri = settings.redis_url or "memory://"
        self.blocking = not self.storage_uri.startswith("memory")
        self._storage = storage_from_string(self.storage_uri)
        strategies: dict[str, type[Strategy]] = {
            "moving-window": MovingWindowRateLimiter,
            "sliding-window-counter": SlidingWindowCounterRateLimiter,
            "fixed-window": FixedWindowRateLimiter,
        }
        self._strategy = strategies[settings.rate_limit_strategy](self._storage)
        self.items: dict[str, RateLimitItem] = {
            "default": parse(settings.rate_limit_default),
            "auth": parse(settings.rate_limit_auth),
            "anonymous": parse(settings.rate_limit_anonymous),
        }

    def hit(self, name: str, identity: str) -> Window:
        """Count one request of ``identity`` against limit ``name``; raise 429 when over it."""
        item = self.items[name]
        allowed = self._strategy.hit(item, name, identity)
        stats = self._strategy.get_window_stats(item, name, identity)
        reset = math.ceil(stats.reset_time)
        window = Window(limit=item.amount, remaining=max(stats.remaining, 0), reset=reset)
        if not allowed:
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise ApiError(
                "RATE_LIMIT_EXCEEDED",
                "Too many requests. Please wait before retrying.",
                details={"limit": str(item), "retry_after": retry},
                headers={
                    "Retry-After": str(retry),
                    "X-RateLimit-Limit": str(window.limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                },
            )
        return window

    def reset(self) -> None:
        self._storage.reset()
