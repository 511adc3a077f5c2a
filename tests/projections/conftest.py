"""Fixtures: the scripted session (``projections_session``) and the read model built from it."""

from __future__ import annotations

import pytest
from projections_session import Session, build, run_session

from projections.memory import InMemoryReadModel


@pytest.fixture(scope="module")
def session() -> Session:
    return run_session()


@pytest.fixture(scope="module")
def model(session: Session) -> InMemoryReadModel:
    return build(session)
