"""Register, log in, refresh tokens, and who am I (seed 004 shapes, seed 002 roles)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, status
from pydantic import Field, model_validator

from api.auth import REFRESH, ROLE_PERMISSIONS
from api.context import ApiContext
from api.deps import AnonymousRateLimited, AuthRateLimited, Ctx, CurrentUser
from api.errors import ApiError
from api.schemas import ApiModel, RequestModel
from commands.user_handlers import ClaimUsername, RegisterUser
from domain.user import Role, User, UsernameClaim, claim_id_for_username, normalise_email, user_id_for_email

router = APIRouter(prefix="/auth", tags=["auth"])

Password = Annotated[str, Field(min_length=8, max_length=128)]


class RegisterRequest(RequestModel):
    email: str = Field(min_length=3, max_length=320, examples=["user@example.com"])
    password: Password
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    username: str | None = Field(default=None, min_length=3, max_length=50)
    role: Role | None = Field(default=None, description="trader, analyst or viewer (admin is granted, not chosen)")


class LoginRequest(RequestModel):
    email: str | None = Field(default=None, min_length=1, max_length=320, description="e-mail address or username")
    username: str | None = Field(default=None, min_length=1, max_length=50)
    password: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _who(self) -> LoginRequest:
        if not self.email and not self.username:
            raise ValueError("give email or username")
        return self


class RefreshRequest(RequestModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class AccountRef(ApiModel):
    id: str
    mode: str


class UserOut(ApiModel):
    id: str
    email: str
    username: str | None
    first_name: str | None
    last_name: str | None
    role: Role
    permissions: list[str]
    accounts: list[AccountRef]
    created_at: datetime | None


class AuthResponse(ApiModel):
    user: UserOut
    token: str = Field(description="access token (24 h by default)")
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until the access token expires")


class TokenResponse(ApiModel):
    token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


def user_out(ctx: ApiContext, user: User) -> UserOut:
    s = user.s
    caller = ctx.caller_for(user.id)
    accounts = [AccountRef(id=a, mode="paper") for a in caller.account_ids] if caller else []
    return UserOut(
        id=user.id,
        email=s.email,
        username=s.username,
        first_name=s.first_name,
        last_name=s.last_name,
        role=s.role,
        permissions=sorted(p.value for p in ROLE_PERMISSIONS[s.role]),
        accounts=accounts,
        created_at=s.registered_at,
    )


def _auth_response(ctx: ApiContext, user: User) -> AuthResponse:
    pair = ctx.tokens.pair(user.id, user.s.role)
    return AuthResponse(
        user=user_out(ctx, user), token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post(
    "/register", status_code=status.HTTP_201_CREATED, response_model=AuthResponse, dependencies=[AuthRateLimited]
)
def register(body: RegisterRequest, ctx: Ctx) -> AuthResponse:
    """Create a user (role trader unless asked for less) with a paper account, and log in."""
    role = body.role or ctx.api.default_role
    if role is Role.ADMIN:
        raise ApiError("AUTHORIZATION_ERROR", "the admin role cannot be chosen at registration")
    email = normalise_email(body.email)
    user_id = user_id_for_email(email)
    if ctx.user(user_id) is not None:
        raise ApiError("USER_EXISTS", "a user with this e-mail address already exists")
    password_hash = ctx.passwords.hash(body.password)
    if body.username:
        ctx.send(ClaimUsername(username=body.username, subject_id=user_id, user_id=user_id))
    ctx.send(
        RegisterUser(
            email=email,
            username=body.username,
            role=role,
            password_hash=password_hash,
            first_name=body.first_name,
            last_name=body.last_name,
            user_id=user_id,
        )
    )
    ctx.ensure_paper_account(user_id)
    user = ctx.user(user_id)
    assert user is not None
    return _auth_response(ctx, user)


def _find(ctx: ApiContext, body: LoginRequest) -> User | None:
    ident = (body.email or body.username or "").strip()
    if "@" in ident:
        try:
            return ctx.user(user_id_for_email(ident))
        except Exception:
            return None
    try:
        claim = ctx.load(UsernameClaim, claim_id_for_username(ident))
    except Exception:
        return None
    return ctx.user(claim.user_id) if claim.user_id else None


@router.post("/login", response_model=AuthResponse, dependencies=[AuthRateLimited])
def login(body: LoginRequest, ctx: Ctx) -> AuthResponse:
    """Check the password and return an access and a refresh token."""
    user = _find(ctx, body)
    if not ctx.passwords.verify(user.s.password_hash if user else None, body.password) or user is None:
        raise ApiError("INVALID_CREDENTIALS", "invalid e-mail address or password")
    ctx.ensure_paper_account(user.id)
    return _auth_response(ctx, user)


@router.post("/refresh", response_model=TokenResponse, dependencies=[AnonymousRateLimited])
def refresh(body: Annotated[RefreshRequest, Body()], ctx: Ctx) -> TokenResponse:
    """Trade a refresh token for a new access token (and a new refresh token)."""
    user_id = ctx.tokens.check(body.refresh_token, REFRESH)
    user = ctx.user(user_id)
    if user is None:
        raise ApiError("INVALID_REFRESH_TOKEN", "the token's user does not exist")
    pair = ctx.tokens.pair(user.id, user.s.role)
    return TokenResponse(token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in)


@router.get("/me", response_model=UserOut)
def me(caller: CurrentUser, ctx: Ctx) -> UserOut:
    """The caller's profile, role, permissions and accounts."""
    user = ctx.user(caller.user_id)
    if user is None:
        raise ApiError("NOT_FOUND", "user not found")
    return user_out(ctx, user)

