"""The event registry and codec: exact round trips, time zones kept, upcasting on read."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest

import domain
from domain.account_events import FundsDeposited, OrderAccepted
from domain.bot import BotConfig
from domain.envelope import Metadata, NewEvent, RecordedEvent
from domain.errors import ValidationFailed
from domain.events import EVENT_TYPES, Event, EventRegistry, UnknownEventType
from domain.risk import RiskLimits
from domain.values import OrderType, Price, Side, Symbol, TradingMode

# Make sure every domain module that defines events is imported (and so registered).
for _mod in pkgutil.walk_packages(domain.__path__, "domain."):
    importlib.import_module(_mod.name)

CEST = timezone(timedelta(hours=2))
AT = datetime(2026, 1, 5, 14, 3, 7, 123456, tzinfo=CEST)

KNOWN_EVENT_TYPES = {
    "AccountOpened", "FundsDeposited", "FundsWithdrawn", "RiskLimitsSet", "OrderAccepted",
    "OrderRejected", "OrderPartiallyFilled", "OrderFilled", "OrderCancelled", "OrderExpired",
    "PositionOpened", "PositionIncreased", "PositionReduced", "PositionClosing", "PositionClosed",
    "TradingHalted", "TradingResumed", "LiquidationRequested",
    "BotCreated", "BotUpdated", "BotStarted", "BotStopped", "BotDeleted",
}


# --- test events for upcasting (registered once, at import) ------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class CodecProbePriced(Event):
    """v1 had ``px`` and no ``venue``; v2 renamed ``px`` to ``price`` and added ``venue``."""

    schema_version = 2
    symbol: Symbol
    price: Price
    venue: str


def _probe_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["price"] = data.pop("px")
    data["venue"] = "unknown"
    return data


EVENT_TYPES.register_upcaster("CodecProbePriced", 1, _probe_v1_to_v2)


@dataclass(frozen=True, kw_only=True, slots=True)
class CodecProbeChained(Event):
    """v1 ``qty`` -> v2 ``quantity`` -> v3 adds ``note`` derived from v2's shape."""

    schema_version = 3
    quantity: Decimal
    note: str


EVENT_TYPES.register_upcaster(
    "CodecProbeChained", 1, lambda d: {"quantity": d["qty"]}
)
EVENT_TYPES.register_upcaster(
    "CodecProbeChained", 2, lambda d: {**d, "note": f"had {d['quantity']}"}
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CodecProbeNoUpcaster(Event):
    schema_version = 2
    value: str


# --- sample instances of every registered domain event ----------------------------------

_NESTED_SAMPLES: dict[type, object] = {
    RiskLimits: RiskLimits(
        max_position_size_pct=Decimal("33.3"), max_open_positions=7,
        max_daily_loss_pct=Decimal("2.5"), max_drawdown_pct=Decimal("12.75"),
        max_leverage=Decimal("2.5"),
    ),
    BotConfig: BotConfig(
        name="grid one", account_id="acc-1", symbol=Symbol("ETH/USDT"), strategy="sma_cross",
        parameters={"fast": 10, "slow": "30", "flags": [1, 2], "on": True, "none": None},
        mode=TradingMode.LIVE, timeframe="15m", risk_per_trade_pct=Decimal("1.25"),
        stop_loss_pct=Decimal("0.5"), take_profit_pct=Decimal("1.5"),
    ),
}


def _sample(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        inner = next(a for a in args if a is not type(None))
        return _sample(inner, name)
    if origin in (list, tuple):
        item = _sample(args[0], name)
        return [item, item] if origin is list else (item, item)
    if origin is dict or tp is dict:
        return {"k": "v", "n": 3}
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _sample(supertype, name)
    if tp in _NESTED_SAMPLES:
        return _NESTED_SAMPLES[tp]
    if isinstance(tp, type):
        if issubclass(tp, Decimal):
            # Trailing zeros and many digits: any float or rounding on the way would show.
            return tp("64250.500000000000000001") if tp is not Decimal else Decimal("0.10")
        if issubclass(tp, datetime):
            return AT
        if issubclass(tp, Enum):
            return list(tp)[-1]
        if issubclass(tp, Symbol):
            return Symbol("ETH/USDT")
        if tp is str:
            return f"{name}-value"
        if tp is bool:
            return True
        if tp is int:
            return 42
    raise AssertionError(f"no sample for {tp!r} ({name})")


def _instance(cls: type[Event], *, optional_none: bool = False) -> Event:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if optional_none and type(None) in typing.get_args(tp):
            kwargs[f.name] = None
        else:
            kwargs[f.name] = _sample(tp, f.name)
    return cls(**kwargs)


DOMAIN_EVENT_TYPES = sorted(
    (EVENT_TYPES.get(n) for n in EVENT_TYPES.names() if EVENT_TYPES.get(n).__module__.startswith("domain.")),
    key=lambda c: c.__name__,
)


def _round_trip(event: Event) -> Event:
    data = EVENT_TYPES.to_data(event)
    stored = json.loads(json.dumps(data))  # what a JSON column gives back
    return EVENT_TYPES.from_data(type(event).__name__, type(event).schema_version, stored)


def _assert_same_types(a: object, b: object) -> None:
    assert type(a) is type(b), (a, b)
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _assert_same_types(getattr(a, f.name), getattr(b, f.name))


# --- tests --------------------------------------------------------------------------------


def test_every_known_domain_event_type_is_registered():
    assert {c.__name__ for c in DOMAIN_EVENT_TYPES} >= KNOWN_EVENT_TYPES


@pytest.mark.parametrize("cls", DOMAIN_EVENT_TYPES, ids=lambda c: c.__name__)
def test_every_registered_event_round_trips_exactly(cls):
    event = _instance(cls)

    back = _round_trip(event)

    assert back == event
    assert EVENT_TYPES.to_data(back) == EVENT_TYPES.to_data(event)  # same digits, same strings
    _assert_same_types(back, event)


@pytest.mark.parametrize("cls", DOMAIN_EVENT_TYPES, ids=lambda c: c.__name__)
def test_every_registered_event_round_trips_with_optional_fields_empty(cls):
    event = _instance(cls, optional_none=True)

    assert _round_trip(event) == event


def test_decimal_sum_is_stored_as_its_exact_string():
    event = FundsDeposited(account_id="acc-1", amount=Decimal("0.1") + Decimal("0.2"), at=AT)

    data = EVENT_TYPES.to_data(event)

    assert data["amount"] == "0.3"
    assert _round_trip(event).amount == Decimal("0.3")


def test_decimal_precision_and_trailing_zeros_survive_the_round_trip():
    event = FundsDeposited(account_id="acc-1", amount=Decimal("12345678901234567890.123456780"), at=AT)

    back = _round_trip(event)

    assert str(back.amount) == "12345678901234567890.123456780"


def test_datetime_keeps_its_time_zone_and_microseconds():
    event = FundsDeposited(account_id="acc-1", amount=Decimal("1"), at=AT)

    back = _round_trip(event)

    assert back.at == AT
    assert back.at.utcoffset() == timedelta(hours=2)
    assert back.at.microsecond == 123456


def test_utc_datetime_stays_aware():
    at = datetime(2026, 1, 5, 12, tzinfo=UTC)

    back = _round_trip(FundsDeposited(account_id="acc-1", amount=Decimal("1"), at=at))

    assert back.at.tzinfo is not None
    assert back.at.utcoffset() == timedelta(0)


def test_enums_are_stored_by_value():
    event = _instance(OrderAccepted)

    data = EVENT_TYPES.to_data(event)

    assert data["side"] == event.side.value
    assert data["order_type"] == event.order_type.value
    assert isinstance(_round_trip(event).side, Side)
    assert isinstance(_round_trip(event).order_type, OrderType)


def test_old_schema_version_is_upcast_on_decode():
    old = {"symbol": "BTC/USDT", "px": "64250.5"}

    event = EVENT_TYPES.from_data("CodecProbePriced", 1, old)

    assert event == CodecProbePriced(symbol=Symbol("BTC/USDT"), price=Price("64250.5"), venue="unknown")
    assert old == {"symbol": "BTC/USDT", "px": "64250.5"}  # the stored shape is not rewritten


def test_current_schema_version_is_decoded_without_upcasting():
    data = {"symbol": "BTC/USDT", "price": "1.5", "venue": "binance"}

    event = EVENT_TYPES.from_data("CodecProbePriced", 2, data)

    assert event.venue == "binance"


def test_upcasters_are_chained_in_version_order():
    event = EVENT_TYPES.from_data("CodecProbeChained", 1, {"qty": "0.25"})

    assert event == CodecProbeChained(quantity=Decimal("0.25"), note="had 0.25")


def test_recorded_event_in_an_old_shape_is_upcast_when_read():
    rec = RecordedEvent(
        event_id="e-1", stream_id="probe-1", version=1, position=1, type="CodecProbePriced",
        schema_version=1, data={"symbol": "ETH/USDT", "px": "3000.01"}, metadata={},
        ts_recorded=AT,
    )

    event = rec.event

    assert isinstance(event, CodecProbePriced)
    assert event.price == Decimal("3000.01")
    assert event.venue == "unknown"
    assert rec.data == {"symbol": "ETH/USDT", "px": "3000.01"}


def test_missing_upcaster_raises_unknown_event_type():
    with pytest.raises(UnknownEventType):
        EVENT_TYPES.from_data("CodecProbeNoUpcaster", 1, {"value": "x"})


def test_unknown_event_type_raises_unknown_event_type():
    with pytest.raises(UnknownEventType):
        EVENT_TYPES.from_data("NoSuchEventEver", 1, {})


def test_recorded_event_of_unknown_type_raises_when_decoded():
    rec = RecordedEvent(
        event_id="e-1", stream_id="x-1", version=1, position=1, type="NoSuchEventEver",
        schema_version=1, data={}, metadata={}, ts_recorded=AT,
    )

    with pytest.raises(UnknownEventType):
        _ = rec.event


def test_payload_missing_a_required_field_is_a_validation_error():
    with pytest.raises(ValidationFailed, match="amount"):
        EVENT_TYPES.from_data("FundsDeposited", 1, {"account_id": "acc-1", "at": AT.isoformat()})


def test_payload_without_a_field_that_has_a_default_decodes_to_the_default():
    @dataclass(frozen=True, kw_only=True, slots=True)
    class Tagged(Event):
        account_id: str
        note: str | None = None
        amount: Price | None = None

    registry = EventRegistry()
    registry.register(Tagged)
    assert registry.from_data("Tagged", 1, {"account_id": "acc-1"}) == Tagged(account_id="acc-1")
    full = registry.from_data("Tagged", 1, {"account_id": "acc-1", "note": "n", "amount": "1.50"})
    assert full == Tagged(account_id="acc-1", note="n", amount=Price("1.50"))
    with pytest.raises(ValidationFailed, match="account_id"):
        registry.from_data("Tagged", 1, {"note": "n"})


def test_same_event_name_from_another_module_is_refused():
    registry = EventRegistry()
    registry.register(FundsDeposited)
    impostor = type("FundsDeposited", (), {"__module__": "elsewhere.events"})

    with pytest.raises(ValueError, match="FundsDeposited"):
        registry.register(impostor)  # type: ignore[arg-type]


def test_new_event_envelope_names_type_version_and_data():
    event = FundsDeposited(account_id="acc-1", amount=Decimal("5.50"), at=AT)
    meta = Metadata(correlation_id="c", causation_id="k", user_id="u", idempotency_key="i", ts_event=AT)

    ne = NewEvent(event=event, metadata=meta)

    assert ne.type == "FundsDeposited"
    assert ne.schema_version == 1
    assert ne.data() == {"account_id": "acc-1", "amount": "5.50", "at": AT.isoformat()}
    assert meta.to_dict() == {
        "correlation_id": "c", "causation_id": "k", "user_id": "u", "idempotency_key": "i",
        "ts_event": AT.isoformat(),
    }
    assert NewEvent(event=event).event_id != NewEvent(event=event).event_id


def test_recorded_event_to_dict_is_json_safe():
    rec = RecordedEvent(
        event_id="e-1", stream_id="account-acc-1", version=3, position=9, type="FundsDeposited",
        schema_version=1, data=EVENT_TYPES.to_data(FundsDeposited(account_id="acc-1", amount=Decimal("1"), at=AT)),
        metadata={"user_id": "u"}, ts_recorded=AT,
    )

    out = json.loads(json.dumps(rec.to_dict()))

    assert out["metadata"] == {"user_id": "u", "ts_recorded": AT.isoformat()}
    assert out["version"] == 3
    assert out["position"] == 9


def test_catalog_registers_every_event_module():
    """A fresh process that imported only domain.events decodes every event type (rebuild, audit)."""
    import ast
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    defined = set()
    for path in (root / "domain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "Event" for b in node.bases):
                defined.add(node.name)
    assert {"FundsDeposited", "BotCreated", "SignalGenerated", "RiskAlertAcknowledged"} <= defined

    code = (
        "import sys; from domain.events import EVENT_TYPES; "
        "[EVENT_TYPES.get(n) for n in sys.argv[1:]]; print(len(EVENT_TYPES.names()))"
    )
    out = subprocess.run([sys.executable, "-c", code, *sorted(defined)], cwd=root, capture_output=True, text=True)

    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= len(defined)


def test_new_event_ids_are_distinct_version_4_uuids():
    import uuid

    from domain.envelope import new_event_id

    ids = [new_event_id() for _ in range(1000)]

    assert len(set(ids)) == len(ids)
    for text in ids[:50]:
        u = uuid.UUID(text)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == text


def test_recorded_event_kept_as_objects_encodes_data_and_metadata_when_first_read():
    ev = FundsDeposited(account_id="a1", amount=Decimal("10.50"), at=datetime(2026, 1, 1, tzinfo=UTC))
    meta = Metadata(correlation_id="c", causation_id="c", user_id="u", ts_event=datetime(2026, 1, 1, tzinfo=UTC))
    rec = RecordedEvent(event_id="e1", stream_id="account-a1", version=1, position=1, type="FundsDeposited",
                        schema_version=1, data=None, metadata=meta, ts_recorded=datetime(2026, 1, 1, tzinfo=UTC),
                        event=ev)

    assert rec.data == EVENT_TYPES.to_data(ev)
    assert rec.data is rec.data  # encoded once
    assert rec.metadata == meta.to_dict()
    assert rec.event is ev
    with pytest.raises(ValueError):
        RecordedEvent(event_id="e2", stream_id="s", version=1, position=1, type="FundsDeposited", schema_version=1,
                      data=None, metadata={}, ts_recorded=datetime(2026, 1, 1, tzinfo=UTC))
