"""Shared pieces of the API's pydantic models (each router defines its own resources).

Convention, applied to every resource: JSON fields are camelCase (seed 004's
``tradingPair``, ``totalValue``); requests also accept the snake_case names. Money,
prices and quantities are exact decimals written as strings; ratios are numbers. The
error envelope keeps the snake_case shape the seeds fix.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Amount = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=30, decimal_places=12)]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class RequestModel(BaseModel):
    """Request bodies: unknown fields are refused, camelCase or snake_case accepted."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ActionResult(ApiModel):
    success: bool = True
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    status_code: int
    classification: str = Field(description="user_error | system_error | security_error")
    suggestion: str | None = None
    details: dict[str, Any] | list[Any] | None = None


class ErrorEnvelope(BaseModel):
    success: bool = False
    error: ErrorBody
    status_code: int
    timestamp: datetime
    request_id: str | None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in (
        (400, "Refused by a business rule"),
        (401, "Authentication required or failed"),
        (403, "The caller's role does not allow this"),
        (404, "Not found (or not the caller's)"),
        (409, "Conflicts with the current state"),
        (422, "Malformed request"),
        (429, "Rate limit exceeded"),
        (500, "Internal error"),
        (503, "Not available"),
    )
}
