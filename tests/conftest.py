"""Shared test settings and fixtures."""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from broker.client import Message


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: long runs left out by default (SIGKILL chaos, the seed's real timers, "
        "a drained twistd, the dashboard in Chromium, a million acks, a group member "
        "leaving mid-run, the example waiting for a late broker, the README's user test); "
        "`pytest -m slow` runs them, and CI does",
    )


class FailureLog:
    """Collects every failure logged through twisted.logger ('Unhandled
    Error' included), so a test can assert that there was none."""

    def __init__(self) -> None:
        self.failures: list[dict] = []

    def __call__(self, event: dict) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    def assert_none(self) -> None:
        if self.failures:
            event = self.failures[0]
            raise AssertionError(
                f"{len(self.failures)} failure(s) logged, first: {event['log_failure']}"
            )


def _capture():
    observer = FailureLog()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


logged_failures = pytest.fixture(_capture)
module_logged_failures = pytest.fixture(scope="module")(_capture)


class Inbox:
    """Collects messages; `wait(n)` fires once n have arrived."""

    def __init__(self, answer=True) -> None:
        self.messages: list[Message] = []
        self.answer = answer
        self._waiters: list[tuple[int, Deferred]] = []

    def __call__(self, message: Message):
        self.messages.append(message)
        for waiter in [w for w in self._waiters if len(self.messages) >= w[0]]:
            self._waiters.remove(waiter)
            waiter[1].callback(None)
        return self.answer(message) if callable(self.answer) else self.answer

    def wait(self, count: int, timeout: float = 5) -> Deferred:
        d: Deferred = Deferred()
        if len(self.messages) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, d))
            d.addTimeout(timeout, reactor)
        return d

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


class LogLines:
    """Every event logged through twisted.logger, as the text it formats to."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict) -> None:
        self.lines.append(formatEvent(event) or "")

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def log_lines():
    observer = LogLines()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


class HeldAnswers:
    """A subscriber's handler that answers nothing until told: the Deferred
    answering each delivery waits in `waiting`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.waiting: list[Deferred] = []

    def __call__(self, message: Message) -> Deferred:
        self.messages.append(message)
        self.waiting.append(Deferred())
        return self.waiting[-1]

    async def until(self, count: int) -> None:
        """Once `count` deliveries wait for their answer."""
        while len(self.waiting) < count:
            await deferLater(reactor, 0.01, lambda: None)

    def answer_all(self, result: bool = True) -> None:
        waiting, self.waiting = self.waiting, []
        for answer in waiting:
            answer.callback(result)


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory):
    """The standalone Redis and the Redis Cluster the Redis tests share: the
    ones CI started (TEST_REDIS_URL, TEST_REDIS_CLUSTER_URL), or else ones
    started here from Debian's redis-server. Without redis-server the tests
    skip, unless REQUIRE_REDIS is set (CI sets it), when they fail."""
    import os
    from pathlib import Path

    from tests import redis_servers as servers

    if os.environ.get(servers.CLUSTER_URL):
        yield {
            "standalone": os.environ[servers.STANDALONE_URL],
            "cluster": os.environ[servers.CLUSTER_URL],
            "dir": Path(os.environ[servers.SERVERS_DIR]),
        }
        return
    if not servers.available():
        if os.environ.get("REQUIRE_REDIS"):
            pytest.fail("REQUIRE_REDIS is set but redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory = tmp_path_factory.mktemp("redis")
    found = servers.start(directory)
    try:
        yield {
            "standalone": found[servers.STANDALONE_URL],
            "cluster": found[servers.CLUSTER_URL],
            "dir": directory,
        }
    finally:
        servers.stop(directory)
