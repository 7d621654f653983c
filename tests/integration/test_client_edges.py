"""The client where a new user trips: a broker without extensions that stops
reading after Hello (as the Go broker does), a server that closes at once,
no broker at all, cancelled and bounded publishes, wrong argument types."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher

from broker import wire
from broker.client import BrokerUnreachable, Message, QueueFull, connect
from broker.testing import InMemoryBroker, RunningBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox
from tests.process import free_port

FAST_RETRY = {"retry_policy": lambda attempt: 0.05}


class _GoLikeConnection(Protocol):
    """Refuses Hello with "unknown action" and never reads again (nor closes),
    like the seed's Go broker; any other first action is passed on to a real
    broker behind it."""

    factory: GoLikeBroker

    def connectionMade(self) -> None:
        self.upstream: Protocol | None = None
        self.early = b""
        self.stuck = False

    def dataReceived(self, data: bytes) -> None:
        if self.stuck:
            return
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.early += data
        if len(self.early) < 2:
            return
        if self.early[:2] == wire.encode_u16(wire.HELLO):
            self.factory.hellos += 1
            self.transport.write(wire.encode_error(wire.ERR_UNKNOWN_ACTION))
            self.transport.pauseProducing()  # reads nothing more, closes nothing
            self.stuck = True
            return
        relay = _Relay(self)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.factory.real.port)
        connectProtocol(endpoint, relay).addCallback(self._relay_up)

    def _relay_up(self, relay: Protocol) -> None:
        self.upstream = relay
        relay.transport.write(self.early)

    def connectionLost(self, reason=None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _Relay(Protocol):
    def __init__(self, downstream: _GoLikeConnection) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        self.downstream.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.downstream.transport.loseConnection()


class GoLikeBroker(Factory):
    protocol = _GoLikeConnection

    def __init__(self, real: RunningBroker) -> None:
        self.real = real
        self.hellos = 0


@pytest_twisted.ensureDeferred
async def test_extensions_against_a_broker_that_drops_hello_the_go_way(logged_failures):
    real = start_broker()
    go_like = GoLikeBroker(real)
    listening = reactor.listenTCP(0, go_like, interface="127.0.0.1")
    client = connect(
        reactor, f"127.0.0.1:{listening.getHost().port}", extensions=True, **FAST_RETRY
    )
    try:
        inbox = Inbox()
        await client.subscribe(["go"], inbox, start=StartAt.BEGINNING)
        assert await client.publish("go", b"plain") is None  # no confirms here
        await inbox.wait(1)
        assert inbox.payloads == [b"plain"] and inbox.messages[0].offset is None
        assert client.extensions is False  # remembered for this broker
        assert go_like.hellos == 1  # asked once; the other role never asks again
        logged_failures.assert_none()
    finally:
        await client.close()
        await listening.stopListening()
        await real.stop()


class _ClosesAtOnce(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_server_that_closes_at_once_is_reported_not_a_traceback(logged_failures):
    warnings: list[str] = []

    def observe(event: dict) -> None:
        namespace = event.get("log_namespace", "")
        if namespace.startswith("broker.client") and event["log_level"].name == "warn":
            warnings.append(event["problem"])

    globalLogPublisher.addObserver(observe)
    listening = reactor.listenTCP(0, Factory.forProtocol(_ClosesAtOnce), interface="127.0.0.1")
    client = connect(
        reactor, f"127.0.0.1:{listening.getHost().port}", extensions=True, **FAST_RETRY
    )
    try:
        with pytest.raises(BrokerUnreachable, match="closed before the broker answered"):
            await client.connected(timeout=0.5)
        assert warnings and all("closed before the broker answered" in w for w in warnings)
        logged_failures.assert_none()  # no NoTransition, no Unhandled Error
    finally:
        globalLogPublisher.removeObserver(observe)
        await client.close()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_broker_fails_connected_with_the_reason_and_keeps_trying():
    port = free_port()
    client = connect(reactor, f"127.0.0.1:{port}", **FAST_RETRY)
    try:
        with pytest.raises(BrokerUnreachable, match=f"cannot reach tcp:127.0.0.1:{port}"):
            await client.connected(timeout=0.3)
        assert "refused" in (client.last_problem or "")
        running = start_broker(port=port)  # the broker comes up: the client finds it
        try:
            await client.connected(timeout=5)
            assert client.last_problem is None
        finally:
            await running.stop()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_publish_is_never_sent_and_the_queue_is_bounded():
    port = free_port()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, max_queued=3, **FAST_RETRY)
    try:
        cancelled = client.publish("q", b"cancelled")
        kept = client.publish("q", b"kept")
        cancelled.cancel()
        with pytest.raises(CancelledError):
            await cancelled
        client.publish("q", b"two")
        client.publish("q", b"three")
        with pytest.raises(QueueFull):
            await client.publish("q", b"four")  # fails at once: three are queued
        running = start_broker(port=port)
        try:
            assert await kept == 0
            log = running.factory.broker.registry.get("q").log
            later: Deferred = client.publish("q", b"five")
            assert await later == 3
            assert log.read(0, 4) == [b"kept", b"two", b"three", b"five"]
        finally:
            await running.stop()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_publish_many_withdraws_what_waits_and_a_full_queue_refuses_it_whole():
    port = free_port()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, max_queued=4, **FAST_RETRY)
    try:
        withdrawn = client.publish_many([("q", b"w1"), ("q", b"w2")])
        kept = client.publish_many([("q", b"k1"), ("q", b"k2")])
        withdrawn.cancel()
        with pytest.raises(CancelledError):
            await withdrawn
        client.publish_many([("q", b"k3"), ("q", b"k4")])
        with pytest.raises(QueueFull):
            await client.publish_many([("q", b"none")])  # four wait: refused whole
        assert await client.publish_many([]) == []
        running = start_broker(port=port)
        try:
            assert await kept == [0, 1]
            log = running.factory.broker.registry.get("q").log
            assert await client.publish_many([("q", b"k5")]) == [4]
            assert log.read(0, 5) == [b"k1", b"k2", b"k3", b"k4", b"k5"]
            with pytest.raises(ValueError):  # checked whole before any is sent
                client.publish_many([("q", b"ok"), ("q\x00", b"bad")])
            assert await client.publish_many([("q", b"k6")]) == [5]
        finally:
            await running.stop()
    finally:
        await client.close()


def test_a_batch_handler_answers_its_whole_batch_however_it_answers(log_lines):
    """A read's deliveries come to a batch handler at once; False or an
    exception nacks them all (they come again), a Deferred answers them
    when it fires, True acks them all (never sent again)."""
    broker = InMemoryBroker()
    client = broker.client(extensions=True, prefetch=16)
    later: Deferred[bool] = Deferred()
    answers: list[object] = [False, RuntimeError("boom"), later]
    batches: list[list[tuple[int | None, int]]] = []

    def handle(messages: list[Message]) -> object:
        batches.append([(m.offset, m.attempt) for m in messages])
        answer = answers.pop(0) if answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    client.subscribe_batches(["b"], handle, start=StartAt.BEGINNING)
    broker.flush()
    publisher = broker.client(extensions=True)
    publisher.publish_many([("b", b"%d" % n) for n in range(3)])
    broker.flush()
    for _ in range(100):  # the nacked batch comes again, twice
        if len(batches) == 3:
            break
        broker.advance(0.5)
        broker.flush()
    assert batches == [[(0, 1), (1, 1), (2, 1)], [(0, 2), (1, 2), (2, 2)], [(0, 3), (1, 3), (2, 3)]]
    assert log_lines.matching("handler failed on 3 message(s) from offset 0")
    later.callback(True)
    broker.flush()
    broker.advance(120)
    broker.flush()
    assert len(batches) == 3  # acked through the Deferred: never sent again


def test_wrong_argument_types_are_clear_errors():
    client = connect(reactor, "127.0.0.1:1")
    with pytest.raises(TypeError, match="payload must be bytes, not str"):
        client.publish("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic must be str"):
        client.publish(b"t", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        connect(reactor, "127.0.0.1:1", extension=True)  # type: ignore[call-arg]


def test_a_subscribe_cut_off_before_its_answer_goes_again_on_the_next_connection(log_lines):
    """The connection drops with a subscribe unanswered: it is sent again
    once the client has reconnected, once, and the reactor is never held
    (the retry used to take the lost connection again at once, for ever)."""
    broker = InMemoryBroker()
    client = broker.client(extensions=True, prefetch=4)
    inbox: list[Message] = []
    first = client.subscribe(["a"], inbox.append)
    broker.flush()
    broker.result(first)
    second = client.subscribe(["b"], inbox.append)  # written, not answered yet
    broker.drop_connections()
    broker.advance(1)  # the client reconnects and asks again
    assert broker.result(second) is None
    assert len(log_lines.matching("connection lost before the broker answered")) == 1
    publisher = broker.client(extensions=True)
    sent = publisher.publish("b", b"after")
    broker.flush()
    assert broker.result(sent) == 0
    assert [m.payload for m in inbox] == [b"after"]
