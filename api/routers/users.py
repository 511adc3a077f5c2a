"""User administration (admin only): change a user's role."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from api.deps import Admin, Ctx
from api.errors import ApiError
from api.routers.auth import UserOut, user_out
from api.schemas import RequestModel
from commands.user_handlers import ChangeRole
from domain.user import Role

router = APIRouter(prefix="/users", tags=["users"])


class RoleRequest(RequestModel):
    role: Role = Field(description="admin, trader, analyst or viewer")


@router.get("/{user_id}", response_model=UserOut)
def get_user(user_id: str, caller: Admin, ctx: Ctx) -> UserOut:
    """A user's profile and role."""
    user = ctx.user(user_id)
    if user is None:
        raise ApiError("NOT_FOUND", f"user {user_id} not found")
    return user_out(ctx, user)


@router.put("/{user_id}/role", response_model=UserOut)
def set_role(user_id: str, body: RoleRequest, caller: Admin, ctx: Ctx) -> UserOut:
    """Grant a role; it applies to the user's next request (tokens carry no authority)."""
    if ctx.user(user_id) is None:
        raise ApiError("NOT_FOUND", f"user {user_id} not found")
    ctx.send(ChangeRole(subject_id=user_id, role=body.role, user_id=caller.user_id))
    user = ctx.user(user_id)
    assert user is not None
    return user_out(ctx, user)
