"""Event base class, the type registry, and an exact, fast codec for event payloads.

Events are frozen, keyword-only dataclasses registered by their class name. ``to_data``
turns one into JSON-safe primitives (Decimal and datetime as strings, so nothing is
rounded); ``from_data`` rebuilds it, running the upcasters registered for older
``schema_version`` shapes first. Encoders and decoders are compiled once per class from
its type hints, so decoding on replay costs a few microseconds, not a model validation.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar

from domain.errors import ValidationFailed

JSON = Any
Upcaster = Callable[[dict[str, JSON]], dict[str, JSON]]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every domain event; subclasses are past-tense facts."""

    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No zero-argument super() here: slots=True recreates this class, breaking its cell.
        EVENT_TYPES.register(cls)

    @property
    def type_name(self) -> str:
        return type(self).__name__


class EventRegistry:
    """Maps a stored type name to its class, codec and upcasters."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._encoders: dict[type[Event], Callable[[Event], dict[str, JSON]]] = {}
        self._decoders: dict[type[Event], Callable[[dict[str, JSON]], Event]] = {}

    def register(self, cls: type[Event]) -> None:
        name = cls.__name__
        existing = self._types.get(name)
        if (
            existing is not None
            and existing.__qualname__ == cls.__qualname__
            and (existing.__module__ != cls.__module__)
        ):
            raise ValueError(f"event type {name} defined in {existing.__module__} and {cls.__module__}")
        # dataclass(slots=True) recreates the class in the same module: the last one wins.
        self._types[name] = cls

    def register_upcaster(self, type_name: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` to turn a ``type_name`` payload of ``from_version`` into the next version."""
        self._upcasters[(type_name, from_version)] = fn

    def get(self, type_name: str) -> type[Event]:
        cls = self._types.get(type_name)
        if cls is None:
            # A reader (rebuild, audit, relay) may meet a type whose module nobody imported
            # yet: load the catalogue of every event module once, then look again.
            import domain.catalog  # noqa: F401

            cls = self._types.get(type_name)
            if cls is None:
                raise UnknownEventType(type_name)
        return cls

    def names(self) -> list[str]:
        import domain.catalog  # noqa: F401  (every event type, not only the imported ones)

        return sorted(self._types)

    def to_data(self, event: Event) -> dict[str, JSON]:
        cls = type(event)
        enc = self._encoders.get(cls)
        if enc is None:
            enc = self._encoders[cls] = _compile_encoder(cls)
        return enc(event)

    def from_data(self, type_name: str, schema_version: int, data: dict[str, JSON]) -> Event:
        cls = self.get(type_name)
        target = cls.schema_version
        while schema_version < target:
            up = self._upcasters.get((type_name, schema_version))
            if up is None:
                raise UnknownEventType(f"{type_name} v{schema_version}: no upcaster to v{target}")
            data = up(dict(data))
            schema_version += 1
        dec = self._decoders.get(cls)
        if dec is None:
            dec = self._decoders[cls] = _compile_decoder(cls)
        return dec(data)


class UnknownEventType(LookupError):
    """A stored event names a type (or version) this code cannot read."""


EVENT_TYPES = EventRegistry()


# --- codec compilation -------------------------------------------------------------

Conv = Callable[[Any], Any]


def _identity(v: Any) -> Any:
    return v


def _converters(tp: Any) -> tuple[Conv, Conv]:
    """Return (encode, decode) for a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {tp}")
        enc, dec = _converters(inner[0])
        return (lambda v: None if v is None else enc(v)), (lambda v: None if v is None else dec(v))
    if origin is tuple:
        enc, dec = _converters(args[0])
        return (lambda v: [enc(x) for x in v]), (lambda v: tuple(dec(x) for x in v))
    if origin is list:
        enc, dec = _converters(args[0])
        return (lambda v: [enc(x) for x in v]), (lambda v: [dec(x) for x in v])
    if origin in (dict, typing.Mapping) or tp is dict:
        if args:
            # Keys go through their own converter. A ``str`` key may hold a str subclass at run
            # time (a Symbol): it is stored as a plain str, since orjson refuses subclass keys.
            kenc, kdec = _converters(args[0])
            if args[0] is str:
                kenc = str
            venc, vdec = _converters(args[1]) if args[1] is not Any else (_identity, _identity)
            return (
                (lambda v: {kenc(k): venc(x) for k, x in v.items()}),
                (lambda v: {kdec(k): vdec(x) for k, x in v.items()}),
            )
        return _identity, _identity
    supertype = getattr(tp, "__supertype__", None)  # NewType
    if supertype is not None:
        return _converters(supertype)
    if isinstance(tp, type):
        if issubclass(tp, Decimal):
            return str, tp
        if issubclass(tp, datetime):
            return datetime.isoformat, datetime.fromisoformat
        if issubclass(tp, Enum):
            return (lambda v: v.value), tp
        if dataclasses.is_dataclass(tp):
            return _compile_encoder(tp), _compile_decoder(tp)
        if issubclass(tp, str) and tp is not str:
            return str, tp
        if tp in (str, int, bool):
            return _identity, _identity
    if tp is Any:
        return _identity, _identity
    raise TypeError(f"unsupported field type {tp!r}")


def _fields(cls: type) -> list[tuple[str, Conv, Conv]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        enc, dec = _converters(hints[f.name])
        out.append((f.name, enc, dec))
    return out


def _compile_encoder(cls: type) -> Callable[[Any], dict[str, JSON]]:
    # Generated once per class, like dataclasses' own methods: one dict display with
    # attribute reads and converter calls, no per-field loop or getattr (events are
    # encoded on every append).
    hints = typing.get_type_hints(cls)
    names: dict[str, Any] = {}
    items = []
    for i, (name, enc, _) in enumerate(_fields(cls)):
        items.append(f"{name!r}: {_convert_expr(hints[name], enc, f'obj.{name}', f'_c{i}', names, 0)}")
    source = "def encode(obj):\n    return {" + ", ".join(items) + "}\n"
    exec(compile(source, f"<encoder of {cls.__qualname__}>", "exec"), names)  # noqa: S102
    encode: Callable[[Any], dict[str, JSON]] = names["encode"]
    return encode


def _convert_expr(tp: Any, conv: Conv, expr: str, slot: str, names: dict[str, Any], side: int) -> str:
    """An expression converting ``expr`` like ``conv`` does; ``side`` 0 encodes, 1 decodes."""
    if conv is _identity:
        return expr
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        inner_conv = _converters(inner[0])[side]
        if inner_conv is _identity:
            return expr
        names[slot] = inner_conv
        return f"(None if (_v := {expr}) is None else {slot}(_v))"
    names[slot] = conv
    return f"{slot}({expr})"


def _compile_decoder(cls: type) -> Callable[[dict[str, JSON]], Any]:
    # Generated once per class, like the encoder: one constructor call with item reads and
    # converter calls (events are decoded on every replay, rebuild and Kafka delivery). A
    # payload that lacks a field takes the general path, which fills defaults or reports
    # what is missing.
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }

    def general(data: dict[str, JSON]) -> Any:
        missing = required.difference(data)
        if missing:
            raise ValidationFailed(f"{cls.__name__} payload lacks {sorted(missing)}")
        return cls(**{name: dec(data[name]) for name, _, dec in fields if name in data})

    names: dict[str, Any] = {"_cls": cls, "_general": general}
    args = [
        f"{name}={_convert_expr(hints[name], dec, f'data[{name!r}]', f'_c{i}', names, 1)}"
        for i, (name, _, dec) in enumerate(fields)
    ]
    source = (
        "def decode(data):\n"
        "    try:\n"
        f"        return _cls({', '.join(args)})\n"
        "    except KeyError:\n"
        "        return _general(data)\n"
    )
    exec(compile(source, f"<decoder of {cls.__qualname__}>", "exec"), names)  # noqa: S102
    decode: Callable[[dict[str, JSON]], Any] = names["decode"]
    return decode
