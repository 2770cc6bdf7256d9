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


def pytest_collection_modifyitems(config, items):
    # The real vLLM servers' tests first: their servers start (and on a machine's first run, compile)
    # while the cores are idle, and stop before the rest of the suite runs.
    items.sort(key=lambda item: item.get_closest_marker("vllm_server") is None)
