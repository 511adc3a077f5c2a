"""Domain errors. Each carries a stable code that the API maps once to the error envelope."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A command was refused by a business rule; nothing was changed."""

    code = "DOMAIN_ERROR"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}


class ValidationFailed(DomainError):
    code = "VALIDATION_ERROR"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Conflict(DomainError):
    code = "CONFLICT"


class InsufficientFunds(DomainError):
    code = "INSUFFICIENT_FUNDS"


class TradingHalted(DomainError):
    code = "TRADING_HALTED"


class BotAlreadyActive(DomainError):
    code = "BOT_ALREADY_ACTIVE"


class BotNotActive(DomainError):
    code = "BOT_NOT_ACTIVE"


class InvalidTransition(DomainError):
    """An event is not allowed from the entity's current status (lifecycle table)."""

    code = "INVALID_TRANSITION"

    def __init__(self, entity_id: str, status: str, event_type: str):
        super().__init__(
            f"{event_type} is not allowed for {entity_id} in status {status}",
            details={"entity_id": entity_id, "status": status, "event_type": event_type},
        )
        self.entity_id = entity_id
        self.status = status
        self.event_type = event_type


class ConcurrencyError(Exception):
    """The stream moved on since it was read (wrong expected version)."""

    def __init__(self, stream_id: str, expected: int, actual: int):
        super().__init__(f"stream {stream_id}: expected version {expected}, found {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyConflict(Conflict):
    """An idempotency key was reused for a different command."""

    code = "IDEMPOTENCY_KEY_REUSED"
