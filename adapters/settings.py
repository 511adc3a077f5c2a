"""Settings from the environment (prefix ``TRADECORE_``); one frozen object per process."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT", "ADA/USDT")


class Settings(BaseSettings):
    """Every setting tradecore reads. Unset values take the embedded defaults."""

    model_config = SettingsConfigDict(env_prefix="TRADECORE_", frozen=True, extra="ignore")

    environment: str = Field(default="development", description="development | test | production")
    event_store_url: str = Field(
        default="sqlite:///tradecore.db",
        description="memory:// | sqlite:///PATH | postgresql://USER@HOST:PORT/DB",
    )
    read_store_url: str = Field(
        default="sqlite:///tradecore-read.db", description="sqlite:///PATH | postgresql://... | memory://"
    )
    market_data_url: str | None = Field(
        default=None, description="OHLCV bars and backtest results (default: the read store's URL)"
    )
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_SYMBOLS, description="tradable symbols (paper mode), comma-separated in the environment"
    )
    quote_currency: str = Field(default="USDT", description="currency of new paper accounts")
    paper_fee_bps: Decimal = Field(default=Decimal(10), ge=0, le=1000, description="paper fill fee, basis points")
    paper_slippage_bps: Decimal = Field(default=Decimal(0), ge=0, le=1000, description="paper slippage, basis points")
    bar_close_grace: float | None = Field(
        default=None, ge=0, description="bots: also close a bar this many seconds after its bucket ends (else: ticks)"
    )
    snapshot_every: int = Field(default=500, ge=10, description="events between aggregate snapshots")
    aggregate_cache: int = Field(default=10_000, ge=0, description="aggregates kept in memory per process")
    log_level: str = Field(default="INFO")
    log_json: bool = Field(default=False, description="JSON log lines instead of console output")
    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8000, ge=1, le=65535)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    @property
    def market_data_store_url(self) -> str:
        """Where OHLCV bars and backtest results live: ``market_data_url`` or the read store."""
        return self.market_data_url or self.read_store_url
