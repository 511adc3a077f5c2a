"""Fixtures of the API tests (helpers live in ``api_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import Api, make_api


@pytest.fixture
def api() -> Iterator[Api]:
    yield from make_api()
