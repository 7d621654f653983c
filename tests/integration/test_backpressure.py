"""Backpressure and timeouts of one connection, driven by a fake clock over
an in-memory transport: output full, slow consumers, incomplete frames and
the broker-wide input budget."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import address, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from broker import wire
from broker.client import connect as connect_client
from broker.server import BrokerFactory, BrokerProtocol, BrokerSettings
from broker.testing import start_broker
from broker.wire import StartAt
from tests.raw import connect_raw


def connect(factory: BrokerFactory) -> tuple[BrokerProtocol, StringTransport]:
    peer = address.IPv4Address("TCP", "127.0.0.1", 40000 + len(factory.connections))
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def broker(**settings) -> tuple[BrokerFactory, Clock]:
    clock = Clock()
    return BrokerFactory(BrokerSettings(**settings), clock=clock), clock


def extended_subscriber(factory: BrokerFactory, topic: str, prefetch: int):
    protocol, transport = connect(factory)
    protocol.dataReceived(wire.encode_client_hello(prefetch=prefetch))
    protocol.dataReceived(wire.encode_subscribe([topic], StartAt.BEGINNING))
    transport.clear()
    return protocol, transport


def test_a_full_output_stops_deliveries_and_reading_until_it_drains():
    factory, _clock = broker()
    protocol, transport = extended_subscriber(factory, "t", prefetch=100)
    factory.broker.registry.publish("t", [b"a"])
    assert transport.value().endswith(b"a")
    transport.producer.pauseProducing()  # what a full write buffer does
    assert transport.producerState == "paused"  # we stopped reading it too
    factory.broker.registry.publish("t", [b"b", b"c"])
    transport.clear()
    assert protocol.session.window.in_flight == 1
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"
    assert transport.value().endswith(b"c") and protocol.session.window.in_flight == 3


def test_one_pump_is_written_in_chunks_and_stops_when_the_transport_fills():
    factory, _clock = broker()
    protocol, transport = extended_subscriber(factory, "t", prefetch=1000)
    writes: list[int] = []
    original = transport.write

    def write_and_fill(data):
        writes.append(len(data))
        original(data)
        transport.producer.pauseProducing()  # full after the first chunk

    transport.write = write_and_fill
    factory.broker.registry.publish("t", [b"x" * 100_000] * 50)
    assert len(writes) == 1 and 256 * 1024 <= writes[0] < 400_000
    assert protocol.session.window.in_flight == 3


def test_a_slow_consumer_is_logged_and_dropped_only_when_asked():
    for disconnect in (False, True):
        factory, clock = broker(slow_consumer_timeout=30, disconnect_slow_consumers=disconnect)
        _protocol, transport = extended_subscriber(factory, "t", prefetch=10)
        factory.broker.registry.publish("t", [b"a"])
        transport.producer.pauseProducing()
        clock.advance(29)
        assert not transport.disconnecting
        transport.producer.resumeProducing()  # drained in time: the timer restarts
        transport.producer.pauseProducing()
        clock.advance(29)
        assert not transport.disconnecting
        clock.advance(1)
        assert transport.disconnecting is disconnect


def incomplete_publish(protocol: BrokerProtocol, size: int, sent: int) -> None:
    protocol.dataReceived(wire.encode_u16(wire.ACTION_PUBLISH))
    frame = wire.encode_publish("t", b"p" * size)
    protocol.dataReceived(frame[: len(frame) - size + sent])


def test_a_frame_incomplete_past_the_timeout_closes_its_connection_with_an_error():
    factory, clock = broker(frame_timeout=10)
    protocol, transport = connect(factory)
    incomplete_publish(protocol, 1000, sent=10)
    clock.advance(5)
    protocol.dataReceived(b"p" * 100)  # more bytes of the same frame: no reprieve
    clock.advance(5)
    assert transport.value() == wire.encode_error(wire.ERR_FRAME_TIMEOUT)
    assert transport.disconnecting
    clock.advance(BrokerSettings().close_grace)
    assert transport.disconnected  # cut off: it never read the Error


def test_frames_that_complete_in_time_never_time_out():
    factory, clock = broker(frame_timeout=10)
    protocol, transport = connect(factory)
    protocol.dataReceived(wire.encode_u16(wire.ACTION_PUBLISH))
    for n in range(5):
        frame = wire.encode_publish("t", b"%d" % n * 1000)
        protocol.dataReceived(frame[:500])
        clock.advance(8)
        protocol.dataReceived(frame[500:])
    clock.advance(100)
    assert not transport.disconnecting
    assert factory.broker.registry.get("t").log.next_offset == 5


def test_the_input_budget_pauses_what_passes_it_and_frees_on_close():
    factory, _clock = broker(max_pending_input=10_000, max_message_size=1 << 20)
    protocols = []
    for sent in (1000, 3000, 4000, 5000):
        protocol, transport = connect(factory)
        incomplete_publish(protocol, 100_000, sent=sent)
        protocols.append((protocol, transport))
    states = [transport.producerState for _, transport in protocols]
    assert states == ["producing", "producing", "producing", "paused"]
    assert factory.broker.input_budget.total == 13_000  # payload bytes held; headers are decoded
    # A client with small frames is never paused: they complete in one read.
    good, good_transport = connect(factory)
    good.dataReceived(wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_publish("t", b"ok"))
    assert good_transport.producerState == "producing"
    assert factory.broker.registry.get("t").log.next_offset == 1
    # The first connection reads on and is paused too: over the limit, it holds more.
    first, first_transport = protocols[0]
    first.dataReceived(b"p" * 500)
    assert first_transport.producerState == "paused"
    last, last_transport = protocols[3]
    last_transport.loseConnection()
    last.connectionLost(None)
    assert factory.broker.input_budget.total == 8_500


@pytest_twisted.ensureDeferred
async def test_end_to_end_a_subscriber_that_stops_reading_is_disconnected_and_loses_nothing():
    running = start_broker(
        BrokerSettings(slow_consumer_timeout=0.5, disconnect_slow_consumers=True)
    )
    try:
        stalled = await connect_raw(running.port)
        stalled.send(wire.encode_client_hello(prefetch=1024))
        head = await stalled.read(6)
        await stalled.read(int.from_bytes(head[2:], "big"))
        stalled.send(wire.encode_subscribe(["s"], StartAt.BEGINNING))
        assert await stalled.read(2) == wire.encode_u16(wire.STATUS_SUBSCRIBED)
        stalled.transport.pauseProducing()
        (on_broker,) = running.factory.connections
        gone: Deferred[None] = Deferred()
        lost = on_broker.connectionLost
        on_broker.connectionLost = lambda reason=None: (lost(reason), gone.callback(None))
        running.factory.broker.registry.publish("s", [b"x" * (1 << 20)] * 64)
        await gone  # the broker gave up on it
        stalled.transport.abortConnection()
        # Everything is still in the log for whoever comes next.
        client = connect_client(reactor, running.endpoint, extensions=True, prefetch=64)
        got: list[int] = []
        all_in: Deferred[None] = Deferred()

        def handle(message):
            got.append(message.offset)
            if len(got) == 64:
                all_in.callback(None)
            return True

        await client.subscribe(["s"], handle, start=StartAt.BEGINNING)
        await all_in
        assert sorted(got) == list(range(64))
        await client.close()
    finally:
        await running.stop()
