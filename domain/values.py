"""Value objects: identifiers, symbols and exact amounts."""

from __future__ import annotations

import hashlib
import os
import random
import re
import uuid
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import NewType

from domain.errors import ValidationFailed

AccountId = NewType("AccountId", str)
BotId = NewType("BotId", str)
OrderId = NewType("OrderId", str)
UserId = NewType("UserId", str)


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def _uuid_hex(raw: bytes, version: int) -> str:
    # What ``uuid.UUID(bytes=raw, version=version).hex`` gives, without building the object
    # (these ids are made several times per command).
    b = bytearray(raw[:16])
    b[6] = (b[6] & 0x0F) | (version << 4)
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


# Random ids only need to be unique, not unpredictable: 122 random bits from a private
# generator seeded from the OS (and reseeded in a forked child) cost no system call per id,
# which ``uuid.uuid4()`` does (``os.urandom``), and which a loaded machine makes slow.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def uuid4_str() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())``."""
    h = _uuid_hex(_ids.getrandbits(128).to_bytes(16, "big"), 4)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_id(prefix: str) -> str:
    """Return a fresh random identifier with a readable prefix."""
    return f"{prefix}_{_uuid_hex(_ids.getrandbits(128).to_bytes(16, 'big'), 4)}"


def derived_id(prefix: str, *parts: str) -> str:
    """Return an identifier derived deterministically from ``parts`` (retries give the same id).

    The hex of ``uuid5(NAMESPACE_URL, '/'.join(parts))``.
    """
    digest = hashlib.sha1(_URL_NAMESPACE + "/".join(parts).encode(), usedforsecurity=False).digest()
    return f"{prefix}_{_uuid_hex(digest, 5)}"


def _decimal(value: object, what: str) -> Decimal:
    if type(value) is Decimal and value.is_finite():
        return value  # the common case, first: amounts computed in Decimal
    if isinstance(value, float):
        # A float has already lost exactness; insist on str/int/Decimal input.
        raise ValidationFailed(f"{what} must be given as a string or Decimal, not a float")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationFailed(f"{what} is not a number: {value!r}") from exc
    if not d.is_finite():
        raise ValidationFailed(f"{what} must be finite: {value!r}")
    return d


# An instance of the value type itself was checked when it was made, and decimals are
# immutable: the constructors hand it back as it is (events rewrap amounts they carry over).


class Price(Decimal):
    """A strictly positive price."""

    __slots__ = ()

    def __new__(cls, value: object = "0") -> Price:
        if isinstance(value, Price):
            return value
        d = _decimal(value, "price")
        if d <= 0:
            raise ValidationFailed(f"price must be positive: {value!r}")
        return Decimal.__new__(cls, d)


class Quantity(Decimal):
    """A non-negative quantity of a base asset."""

    __slots__ = ()

    def __new__(cls, value: object = "0") -> Quantity:
        if isinstance(value, Quantity):
            return value
        d = _decimal(value, "quantity")
        if d < 0:
            raise ValidationFailed(f"quantity must not be negative: {value!r}")
        return Decimal.__new__(cls, d)


class Money(Decimal):
    """A signed amount in the account currency."""

    __slots__ = ()

    def __new__(cls, value: object = "0") -> Money:
        if isinstance(value, Money):
            return value
        return Decimal.__new__(cls, _decimal(value, "amount"))


ZERO = Decimal(0)
ONE = Decimal(1)
BPS = Decimal(10_000)
HUNDRED = Decimal(100)

_SYMBOL = re.compile(r"^([A-Z0-9]{2,12})/([A-Z0-9]{2,12})$")


class Symbol(str):
    """A spot pair written ``BASE/QUOTE`` in upper case, e.g. ``BTC/USDT``."""

    __slots__ = ()

    def __new__(cls, value: str) -> Symbol:
        if isinstance(value, Symbol):
            return value
        text = str(value).strip().upper()
        if not _SYMBOL.match(text):
            raise ValidationFailed(f"symbol must look like BASE/QUOTE: {value!r}", code="INVALID_SYMBOL")
        return super().__new__(cls, text)

    @property
    def base(self) -> str:
        return self.split("/", 1)[0]

    @property
    def quote(self) -> str:
        return self.split("/", 1)[1]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class PositionSide(StrEnum):
    LONG = "long"
    SHORT = "short"

    @property
    def closing_side(self) -> Side:
        return Side.SELL if self is PositionSide.LONG else Side.BUY

    @property
    def opening_side(self) -> Side:
        return Side.BUY if self is PositionSide.LONG else Side.SELL


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class TradingMode(StrEnum):
    PAPER = "paper"
    LIVE = "live"
