"""Settings of the HTTP API from the environment (prefix ``TRADECORE_``).

A default secret is refused outside ``development`` and ``test``: set
``TRADECORE_JWT_SECRET`` (and ``TRADECORE_FIRST_ADMIN_PASSWORD`` if a first admin is
configured) in every other environment.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Self

from limits import parse
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from domain.user import Role

DEFAULT_JWT_SECRET = "tradecore-development-secret-change-me"  # noqa: S105 - refused outside development
RELAXED_ENVIRONMENTS = frozenset({"development", "test"})


class ApiSettings(BaseSettings):
    """Everything the API layer reads; frozen, one per app."""

    model_config = SettingsConfigDict(env_prefix="TRADECORE_", frozen=True, extra="ignore")

    environment: str = Field(default="development", description="development | test | production")
    title: str = "tradecore"
    version: str = "0.1.0"

    jwt_secret: SecretStr = Field(default=SecretStr(DEFAULT_JWT_SECRET), description="HS256 signing key")
    jwt_algorithm: str = Field(default="HS256", pattern=r"^HS(256|384|512)$")
    access_token_ttl: timedelta = Field(default=timedelta(hours=24))
    refresh_token_ttl: timedelta = Field(default=timedelta(days=30))

    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_cost: int = Field(default=65536, ge=8, description="KiB")
    argon2_parallelism: int = Field(default=4, ge=1, le=16)

    default_role: Role = Field(default=Role.TRADER, description="role of a self-registered user")
    first_admin_email: str | None = Field(default=None, description="admin created at start-up if missing")
    first_admin_password: SecretStr | None = None

    rate_limit_enabled: bool = True
    rate_limit_default: str = Field(default="1000/hour", description="per authenticated user")
    rate_limit_auth: str = Field(default="5/minute", description="login and register, per client address")
    rate_limit_anonymous: str = Field(default="100/hour", description="other public endpoints, per address")
    rate_limit_strategy: str = Field(
        default="moving-window",
        pattern=r"^(moving-window|sliding-window-counter|fixed-window)$",
        description="moving-window is exact (cost grows with the limit); the others cost O(1)",
    )
    redis_url: str | None = Field(default=None, description="rate-limit storage; memory when unset")

    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    run_projections: bool = Field(default=True, description="run the in-process projection runner")
    run_paper_venue: bool = Field(default=True, description="run the paper venue in this process")
    run_bots: bool = Field(
        default=True, description="run the bot supervisor here (off where `tradecore bots` runs them)"
    )
    simulation_enabled: bool | None = Field(
        default=None, description="admin price-setting endpoint; default on in development/test only"
    )
    portfolio_cache: bool = Field(default=True, description="cache portfolio reads until their rows change")
    follow_updates: bool | None = Field(
        default=None,
        description="follow the workers' change notices on Kafka (tradecore.projection-updates) to feed "
        "WebSocket pushes and the portfolio cache; default: on exactly when run_projections is off",
    )

    @field_validator("rate_limit_default", "rate_limit_auth", "rate_limit_anonymous")
    @classmethod
    def _limit(cls, v: str) -> str:
        parse(v)  # raises ValueError on a bad expression
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    @model_validator(mode="after")
    def _one_source_of_changes(self) -> Self:
        if self.follow_updates and self.run_projections:
            raise ValueError("TRADECORE_FOLLOW_UPDATES needs TRADECORE_RUN_PROJECTIONS=false: the in-process "
                             "runner already reports every change")
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.environment in RELAXED_ENVIRONMENTS:
            return self
        secret = self.jwt_secret.get_secret_value()
        if secret == DEFAULT_JWT_SECRET:
            raise ValueError(f"TRADECORE_JWT_SECRET must be set in the {self.environment!r} environment")
        if len(secret) < 32:
            raise ValueError("TRADECORE_JWT_SECRET must be at least 32 characters")
        if self.first_admin_email and (
            self.first_admin_password is None or len(self.first_admin_password.get_secret_value()) < 12
        ):
            raise ValueError("TRADECORE_FIRST_ADMIN_PASSWORD must be set (12+ characters) with a first admin")
        return self

    @property
    def relaxed(self) -> bool:
        return self.environment in RELAXED_ENVIRONMENTS

    @property
    def following_updates(self) -> bool:
        """Whether this API follows the Kafka change notices (see ``follow_updates``)."""
        return not self.run_projections if self.follow_updates is None else self.follow_updates

    @property
    def simulation(self) -> bool:
        return self.relaxed if self.simulation_enabled is None else self.simulation_enabled
