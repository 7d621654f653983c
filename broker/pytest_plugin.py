"""pytest fixtures for projects that use the broker, registered by
installing it (the `pytest11` entry point):

- `memory_broker`: an `InMemoryBroker`, no sockets, no reactor, a fake clock.
- `broker`: a real broker on 127.0.0.1 for the test's duration
  (needs pytest-twisted, which runs the reactor).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.testing import InMemoryBroker, RunningBroker, start_broker


@pytest.fixture
def memory_broker() -> InMemoryBroker:
    """A broker and its clients in memory, on a fake clock."""
    return InMemoryBroker()


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    """A real broker on 127.0.0.1 (an ephemeral port), stopped afterwards."""
    pytest_twisted = pytest.importorskip(
        "pytest_twisted", reason="the broker fixture needs pytest-twisted to run the reactor"
    )
    running = start_broker()
    yield running
    pytest_twisted.blockon(running.stop())
