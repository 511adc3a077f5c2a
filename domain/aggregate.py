"""Aggregate base: decide, then apply. Only ``_apply_<EventName>`` methods change state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from domain.events import Event


class Aggregate:
    """An event-sourced consistency boundary.

    Command methods check rules and call ``_emit``; ``_emit`` applies the event through
    the same ``_apply_*`` method that replay uses, and queues it for appending.
    """

    stream_prefix: ClassVar[str] = ""
    _appliers: ClassVar[dict[type[Event], Callable[[Any, Any], None]]]

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0
        self._pending: list[Event] = []
        self._stream_id = self.stream_id_for(aggregate_id)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._appliers = {}

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        return f"{cls.stream_prefix}-{aggregate_id}"

    @property
    def stream_id(self) -> str:
        return self._stream_id

    def apply(self, event: Event) -> None:
        """Apply a stored or new event; the only way state changes."""
        cls = type(self)
        fn = cls._appliers.get(type(event))
        if fn is None:
            name = "_apply_" + type(event).__name__
            method = getattr(cls, name, None)
            if method is None:
                raise TypeError(f"{cls.__name__} has no {name}")
            fn = cls._appliers[type(event)] = method
        fn(self, event)

    def replay(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.apply(ev)
            self.version += 1

    def _emit(self, event: Event) -> None:
        self.apply(event)
        self._pending.append(event)

    def take_pending(self) -> list[Event]:
        """Return the events decided since the last call, and forget them."""
        out, self._pending = self._pending, []
        return out

    @property
    def pending(self) -> list[Event]:
        return list(self._pending)

    def discard_pending(self) -> None:
        self._pending = []
