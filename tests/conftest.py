"""Fixtures shared by the test modules."""

import pytest
from fake_server import FakeServer


@pytest.fixture
def servers():
    made = []

    def make(**kw) -> FakeServer:
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()
