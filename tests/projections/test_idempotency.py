"""Re-delivery changes nothing, and a rebuild agrees with a model fed all along."""

from __future__ import annotations

from projections_session import Session, build

from domain.envelope import RecordedEvent
from projections import registry
from projections.base import Projection
from projections.memory import InMemoryReadModel
from projections.registry import ALL_PROJECTIONS


def feed(model: InMemoryReadModel, projections: list[Projection], events: list[RecordedEvent], times: int = 1) -> None:
    for rec in events:
        for _ in range(times):
            for p in projections:
                if rec.type in p.handles:
                    p.apply(model, rec)


def fresh() -> tuple[InMemoryReadModel, list[Projection]]:
    return InMemoryReadModel.for_projections(*ALL_PROJECTIONS), [cls() for cls in ALL_PROJECTIONS]


def test_applying_every_event_twice_changes_nothing(session: Session) -> None:
    once, ps = fresh()
    feed(once, ps, session.events())
    twice, ps = fresh()
    feed(twice, ps, session.events(), times=2)
    assert twice.dump() == once.dump()


def test_replaying_the_whole_log_again_changes_nothing(session: Session) -> None:
    model, ps = fresh()
    feed(model, ps, session.events())
    before = model.dump()
    feed(model, ps, session.events())
    feed(model, ps, session.events()[10:20])
    assert model.dump() == before


def test_a_rebuild_equals_the_model_built_as_events_arrived(session: Session, model: InMemoryReadModel) -> None:
    assert build(session).dump() == model.dump()


def test_registry_names_every_projection_once() -> None:
    names = registry.names()
    assert names == ["portfolio", "positions", "orders", "risk", "performance", "bots", "notifications"]
    assert registry.get("risk").name == "risk"
    tables = [t.name for cls in ALL_PROJECTIONS for t in cls.tables]
    assert len(tables) == len(set(tables))
    for cls in ALL_PROJECTIONS:
        assert cls.handles and all(isinstance(t, str) for t in cls.handles)
