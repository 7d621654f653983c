"""The test harness users get: an in-memory broker on a fake clock, and the
pytest fixtures the package registers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from broker.client import Message, connect
from broker.core.delivery import DeliverySettings
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker, RunningBroker
from broker.wire import StartAt
from tests.process import ROOT


def test_publish_and_deliver_with_no_sockets_and_no_sleeps(memory_broker):
    client = memory_broker.client(extensions=True)
    received: list[Message] = []
    subscribed = client.subscribe(["orders"], received.append, start=StartAt.BEGINNING)
    sent = client.publish("orders", b"one pizza")
    memory_broker.flush()
    memory_broker.result(subscribed)
    assert memory_broker.result(sent) == 0
    assert [(m.payload, m.offset, m.attempt) for m in received] == [(b"one pizza", 0, 1)]


def test_ack_timeouts_and_redeliveries_happen_when_the_clock_says():
    broker = InMemoryBroker(
        BrokerSettings(delivery=DeliverySettings(ack_timeout=2.0, ack_delay=1.0))
    )
    client = broker.client(extensions=True)
    answers: list[Deferred[bool]] = []

    def handle(message: Message) -> Deferred[bool]:
        answers.append(Deferred())
        return answers[-1]  # answered when the test says

    client.subscribe(["slow"], handle, start=StartAt.BEGINNING)
    client.publish("slow", b"job")
    broker.flush()
    assert len(answers) == 1
    broker.advance(1.9)
    assert len(answers) == 1
    broker.advance(0.1)  # timed out...
    broker.advance(0.9)
    assert len(answers) == 1
    broker.advance(0.1)  # ...and delivered again after the ack delay
    assert len(answers) == 2
    answers[1].callback(True)
    broker.advance(10)
    assert len(answers) == 2  # acked: never again


def test_nacks_redeliver_and_a_dropped_connection_is_resumed():
    broker = InMemoryBroker(BrokerSettings(delivery=DeliverySettings(ack_delay=1.0)))
    client = broker.client(extensions=True)
    seen: list[tuple[bytes, int]] = []

    def refuse_first(message: Message) -> bool:
        seen.append((message.payload, message.attempt))
        return message.attempt > 1

    client.subscribe(["n"], refuse_first, start=StartAt.BEGINNING)
    client.publish("n", b"a")
    broker.flush()
    broker.advance(1.0)
    assert seen == [(b"a", 1), (b"a", 2)]
    broker.drop_connections()
    assert broker.connections == 0
    publish = client.publish("n", b"b")
    broker.advance(1.0)  # the client's retry policy: 0.1 s
    assert broker.result(publish) == 1
    assert seen[-1] == (b"b", 1) and broker.connections == 2


@pytest_twisted.ensureDeferred
async def test_the_broker_fixture_is_a_real_broker_on_loopback(broker: RunningBroker):
    client = connect(reactor, broker.endpoint, extensions=True)
    try:
        assert await client.publish("fixture", b"x") == 0
        assert broker.core.registry.get("fixture").log.read(0, 1) == [b"x"]
    finally:
        await client.close()


@pytest.mark.slow  # a pytest run of its own in a child process
def test_the_readme_user_test_passes_in_a_project_of_its_own(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test your code against it", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "test_user.py").write_text(code)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
