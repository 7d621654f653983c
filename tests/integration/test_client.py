"""The Twisted client against a real broker over loopback."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from broker.client import BrokerError, connect
from broker.core.delivery import DeliverySettings
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox

SHORT = BrokerSettings(delivery=DeliverySettings(ack_delay=0.05, ack_timeout=0.1))


@pytest_twisted.async_yield_fixture
async def broker():
    running = start_broker(SHORT)
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def client(broker):
    c = connect(reactor, broker.endpoint)
    yield c
    await c.close()


@pytest_twisted.ensureDeferred
async def test_publish_and_subscribe_at_each_start(broker, client):
    for i in range(3):
        await client.publish("t", b"m%d" % i)
    beginning, current, from_one = Inbox(), Inbox(), Inbox()
    others = [connect(reactor, broker.endpoint) for _ in range(2)]
    try:
        await client.subscribe(["t"], beginning, start=StartAt.BEGINNING)
        await others[0].subscribe(["t"], current, start=StartAt.CURRENT)
        await others[1].subscribe(["t"], from_one, start=StartAt.FROM, offset=1)
        await beginning.wait(3)
        await from_one.wait(2)
        await client.publish("t", b"m3")
        await current.wait(1)
        await beginning.wait(4)
        await from_one.wait(3)
        assert beginning.payloads == [b"m0", b"m1", b"m2", b"m3"]
        assert from_one.payloads == [b"m1", b"m2", b"m3"]
        assert current.payloads == [b"m3"]
        assert {m.topic for m in beginning.messages} == {"t"}
    finally:
        for other in others:
            await other.close()


@pytest_twisted.ensureDeferred
async def test_one_letter_topics_and_requests_in_flight(broker, client):
    """Statuses and deliveries of one-byte topics interleave (the seed's
    ambiguous framing); the client must keep them apart."""
    inbox = Inbox()
    await client.subscribe(["a"], inbox)
    for i in range(50):
        await client.publish("a", b"%d" % i)
        await client.subscribe([f"b{i % 3}"], inbox)
    await inbox.wait(50)
    assert inbox.payloads == [b"%d" % i for i in range(50)]


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_deliveries(broker, client):
    inbox = Inbox()
    await client.subscribe(["u", "v"], inbox)
    await client.publish("u", b"1")
    await inbox.wait(1)
    await client.unsubscribe(["u"])
    await client.publish("u", b"2")
    await client.publish("v", b"3")
    await inbox.wait(2)
    assert inbox.payloads == [b"1", b"3"]


def test_nack_and_failure_redeliver_and_five_deliveries_then_drop():
    broker = InMemoryBroker(SHORT)
    client = broker.client(extensions=False)  # the plain protocol
    refusals = Inbox(answer=False)
    failing = Inbox(answer=lambda m: 1 / 0)
    client.subscribe(["n"], refusals)
    client.subscribe(["f"], failing)
    broker.flush()
    client.publish("n", b"unwanted")
    client.publish("f", b"boom")
    for _ in range(20):
        broker.advance(0.05)  # the ack delay, twenty times over
    # Both were dropped after five deliveries: nothing more comes, however long.
    client.publish("n", b"wanted")
    for _ in range(20):
        broker.advance(0.05)
    broker.advance(60)
    assert refusals.payloads == [b"unwanted"] * 5 + [b"wanted"] * 5
    assert failing.payloads == [b"boom"] * 5


def test_a_slow_handler_is_timed_out_and_redelivered():
    broker = InMemoryBroker(SHORT)  # ack timeout 0.1 s, ack delay 0.05 s
    client = broker.client(extensions=False)  # one delivery at a time, as the seed
    answers: list[Deferred] = []

    def slow_first(message):
        if message.payload == b"x" and not answers:
            answers.append(Deferred())
            return answers[0]  # answered only when the test says
        return True

    inbox = Inbox(answer=slow_first)
    client.subscribe(["slow"], inbox)
    broker.flush()
    client.publish("slow", b"x")
    client.publish("slow", b"y")
    broker.advance(0.099)
    assert inbox.payloads == [b"x"]  # one in flight: y waits behind x
    broker.advance(0.001)  # timed out...
    broker.advance(0.05)  # ...sent again after the ack delay; a client of the
    assert inbox.payloads == [b"x"]  # plain protocol handles one at a time
    answers[0].callback(True)
    broker.advance(0.2)
    assert inbox.payloads[:2] == [b"x", b"x"] and b"y" in inbox.payloads


@pytest_twisted.ensureDeferred
async def test_refused_subscribe_fails_the_deferred(broker, client):
    with pytest.raises(ValueError):
        await client.subscribe([""], Inbox())
    protocol = await client.subscriber_connected()
    with pytest.raises(BrokerError, match="invalid start"):
        answered: Deferred[None] = Deferred()
        protocol.subscriber._request(answered, b'\x00\x01\x00\x00\x00\x05["a"]\x00\x09', 1, [])
        await answered


@pytest_twisted.ensureDeferred
async def test_reconnects_and_resubscribes():
    first = start_broker(SHORT)
    port = first.port
    client = connect(reactor, first.endpoint)
    inbox = Inbox()
    try:
        await client.subscribe(["r"], inbox)
        await client.publish("r", b"before")
        await inbox.wait(1)
        old_sub = await client.subscriber_connected()
        old_pub = await client.publisher_connected()
        await first.stop()
        await old_sub.lost
        await old_pub.lost
        second = start_broker(SHORT, port=port)
        try:
            new_sub = await client.subscriber_connected()
            assert new_sub is not old_sub
            await client.publish("r", b"after")
            await inbox.wait(2)
            assert inbox.payloads == [b"before", b"after"]
        finally:
            await second.stop()
    finally:
        await client.close()


@pytest.mark.parametrize("extensions", [False, True])
@pytest_twisted.ensureDeferred
async def test_close_right_after_a_publish_is_clean(broker, extensions, logged_failures):
    """The README's first steps: connect, wait, publish once, close. A plain
    connection is ready as it opens, before ClientService has heard of it;
    closing then must not cancel a connector that is no longer connecting
    (it raised NotConnectingError, then logged AlreadyCalledError)."""
    client = connect(reactor, broker.endpoint, extensions=extensions)
    await client.connected(timeout=5)
    sent = await client.publish("first", b"hello")
    assert sent == (0 if extensions else None)
    await client.close()
    logged_failures.assert_none()


@pytest_twisted.ensureDeferred
async def test_the_default_client_negotiates_and_a_refused_publish_fails(broker):
    """A publish fires with its offset or fails (without the extensions, the
    old default, a refused one fired None and the refusal went unseen)."""
    client = connect(reactor, broker.endpoint)
    try:
        assert client.extensions is True
        assert await client.publish("default", b"a") == 0
        assert await client.publish("default", b"b") == 1
        with pytest.raises(BrokerError, match="too large"):
            await client.publish("default", b"x" * (SHORT.max_message_size + 1))
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_handler_answers_by_its_result_however_it_gives_it(broker, client):
    """At once (True, False, raising) or later (a Deferred, a coroutine)."""
    attempts: dict[bytes, int] = {}
    done: Deferred[None] = Deferred()

    async def later(outcome: bool) -> bool:
        return outcome

    def handle(message):
        seen = attempts[message.payload] = attempts.get(message.payload, 0) + 1
        if len(attempts) == 5 and all(count == 2 for count in attempts.values()):
            done.callback(None)
        first = seen == 1  # each is refused once, its own way, then taken
        kind = message.payload
        if kind == b"false":
            return not first
        if kind == b"raise" and first:
            raise RuntimeError("refused by raising")
        if kind == b"deferred":
            answer: Deferred[bool] = Deferred()
            reactor.callLater(0, answer.callback, not first)
            return answer
        if kind == b"coroutine":
            return later(not first)
        if kind == b"failure" and first:
            return Deferred.fromCoroutine(_raises())
        return True

    await client.subscribe(["kinds"], handle, start=StartAt.BEGINNING)
    for kind in (b"false", b"raise", b"deferred", b"coroutine", b"failure"):
        await client.publish("kinds", kind)
    await done
    assert attempts == dict.fromkeys([b"false", b"raise", b"deferred", b"coroutine", b"failure"], 2)


async def _raises() -> bool:
    raise RuntimeError("refused later")
