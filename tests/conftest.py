"""Shared test settings and fixtures."""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: long runs left out by default (SIGKILL chaos, the seed's real timers); "
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
