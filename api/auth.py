"""Passwords (argon2), tokens (JWT access and refresh) and roles with their permissions (seed 002).

- viewer: read-only access to the caller's own data;
- analyst: reads, risk analytics, audit of the caller's own streams, backtests;
- trader: all of the above, plus orders, positions, funds, risk limits, trading control
  and bots;
- admin: everything, including user roles, any stream's audit, detailed health and the
  simulation price feed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from api.errors import ApiError
from api.settings import ApiSettings
from domain.user import Role


class Permission(StrEnum):
    READ = "read"
    ANALYTICS = "analytics"
    BACKTEST = "backtest"
    TRADE = "trade"
    MANAGE_BOTS = "bots:write"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.ANALYST: frozenset({Permission.READ, Permission.ANALYTICS, Permission.BACKTEST}),
    Role.TRADER: frozenset(
        {Permission.READ, Permission.ANALYTICS, Permission.BACKTEST, Permission.TRADE, Permission.MANAGE_BOTS}
    ),
    Role.ADMIN: frozenset(Permission),
}


def allowed(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


class Passwords:
    """Argon2id hashing with the configured cost."""

    def __init__(self, settings: ApiSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the user does not exist, so both paths take as long.
        self._dummy = self._hasher.hash(uuid.uuid4().hex)

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


ACCESS = "access"
REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class Tokens:
    """Signs and checks JWTs; ``sub`` is the user id, ``typ`` access or refresh."""

    _CACHE_SIZE = 10_000

    def __init__(self, settings: ApiSettings) -> None:
        self._secret = settings.jwt_secret.get_secret_value()
        self._alg = settings.jwt_algorithm
        self._ttl = {ACCESS: settings.access_token_ttl, REFRESH: settings.refresh_token_ttl}
        # Verified access tokens -> (user id, expiry): a token's signature never changes, so
        # checking it once is enough; the expiry is still checked on every use.
        self._verified: dict[str, tuple[str, int]] = {}

    def issue(self, user_id: str, role: Role, typ: str = ACCESS) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": role.value,
            "typ": typ,
            "iat": now,
            "exp": now + int(self._ttl[typ].total_seconds()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=self._alg)

    def pair(self, user_id: str, role: Role) -> TokenPair:
        return TokenPair(
            access_token=self.issue(user_id, role, ACCESS),
            refresh_token=self.issue(user_id, role, REFRESH),
            expires_in=int(self._ttl[ACCESS].total_seconds()),
        )

    def check(self, token: str, typ: str = ACCESS) -> str:
        """Return the user id of a valid token of type ``typ``; raise a 401 ``ApiError`` otherwise."""
        if typ == ACCESS:
            hit = self._verified.get(token)
            if hit is not None and hit[1] > time.time():
                return hit[0]
        bad = "INVALID_REFRESH_TOKEN" if typ == REFRESH else "INVALID_TOKEN"
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[self._alg], options={"require": ["exp", "iat", "sub", "typ"]}
            )
        except jwt.ExpiredSignatureError:
            raise ApiError("INVALID_REFRESH_TOKEN" if typ == REFRESH else "TOKEN_EXPIRED", "token expired") from None
        except jwt.PyJWTError:
            raise ApiError(bad, "token is invalid") from None
        if claims.get("typ") != typ or not isinstance(claims.get("sub"), str):
            raise ApiError(bad, f"not an {typ} token" if typ == ACCESS else f"not a {typ} token")
        if typ == ACCESS:
            if len(self._verified) >= self._CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (str(claims["sub"]), int(claims["exp"]))
        return str(claims["sub"])
