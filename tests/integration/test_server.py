"""The server over real loopback TCP: framing, bad input, limits, peers."""

from __future__ import annotations

import socket
import struct

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from broker import wire
from broker.core.delivery import DeliverySettings
from broker.server import BrokerFactory, BrokerSettings
from broker.testing import start_broker
from broker.wire import StartAt
from tests.raw import RawConnection, connect_raw

SUBSCRIBED = b"\x00\x01"


def error(text: str) -> bytes:
    return wire.encode_error(text)


async def subscriber(port: int, topics: list[str], start=StartAt.CURRENT) -> RawConnection:
    connection = await connect_raw(port)
    connection.send(wire.encode_subscribe(topics, start))
    assert await connection.read(2) == SUBSCRIBED
    return connection


async def publisher(port: int) -> RawConnection:
    connection = await connect_raw(port)
    connection.send(wire.encode_u16(wire.ACTION_PUBLISH))
    return connection


async def read_error(connection: RawConnection) -> str:
    """Read one Error status and return its text."""
    status, length = struct.unpack(">HH", await connection.read(4))
    assert status == wire.STATUS_ERROR
    return (await connection.read(length)).decode() if length else ""


async def expect_delivery(connection: RawConnection, topic: str, payload: bytes) -> None:
    frame = wire.encode_delivery(topic, payload)
    assert await connection.read(len(frame)) == frame


async def next_turn() -> None:
    """Let the reactor run once, so that separate writes go out separately."""
    await deferLater(reactor, 0, lambda: None)


@pytest_twisted.async_yield_fixture
async def broker():
    running = start_broker(BrokerSettings(max_message_size=1024))
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_frames_split_byte_by_byte_and_many_in_one_segment(broker):
    sub = await subscriber(broker.port, ["t"])
    pub = await publisher(broker.port)
    pub.transport.setTcpNoDelay(True)
    frame = wire.encode_publish("t", b"split")
    for i in range(len(frame)):
        pub.send(frame[i : i + 1])
        await next_turn()
    await expect_delivery(sub, "t", b"split")
    pub.send(b"".join(wire.encode_publish("t", b"%d" % i) for i in range(1000)))
    sub.send(wire.encode_u16(wire.ACK))
    for i in range(1000):
        await expect_delivery(sub, "t", b"%d" % i)
        sub.send(wire.encode_u16(wire.ACK))


@pytest_twisted.ensureDeferred
async def test_bad_publishes_are_refused_and_the_stream_stays_in_step(broker):
    sub = await subscriber(broker.port, ["t"])
    pub = await publisher(broker.port)
    cases = [
        (struct.pack(">H", 1) + b"a", wire.ERR_NO_TOPIC_PREFIX),
        (struct.pack(">H", 6) + b"topic:", "invalid topic name: empty"),
        (struct.pack(">H", 7) + b"topic:\xff", "invalid topic name: not valid UTF-8"),
        (struct.pack(">H", 262) + b"topic:" + b"x" * 256, "invalid topic name: longer than 255"),
    ]
    for topic_frame, reason in cases:
        pub.send(topic_frame)
        assert (await read_error(pub)).startswith(reason)
        pub.send(struct.pack(">I", 4) + b"lost")  # its data frame is consumed
    pub.send(wire.encode_publish("t", b"x" * 1025))  # over --max-message-size
    assert await pub.read(len(error(wire.ERR_MESSAGE_TOO_LARGE))) == error(
        wire.ERR_MESSAGE_TOO_LARGE
    )
    pub.send(wire.encode_publish("t", b"kept"))
    await expect_delivery(sub, "t", b"kept")
    await pub.assert_silent(0.05)


@pytest_twisted.ensureDeferred
async def test_a_4_gib_length_is_refused_without_buffering_it(broker):
    sub = await subscriber(broker.port, ["t"])
    pub = await publisher(broker.port)
    pub.send(struct.pack(">H", 7) + b"topic:t" + struct.pack(">I", 0xFFFFFFFF))
    assert await pub.read(len(error(wire.ERR_MESSAGE_TOO_LARGE))) == error(
        wire.ERR_MESSAGE_TOO_LARGE
    )
    for _ in range(16):
        pub.send(b"\0" * 65536)
    await next_turn()
    (server_side,) = [c for c in broker.factory.connections if c.decoder.role == "publisher"]
    assert server_side.decoder.buffered == 0
    # Everyone else is served meanwhile.
    other = await publisher(broker.port)
    other.send(wire.encode_publish("t", b"still here"))
    await expect_delivery(sub, "t", b"still here")


@pytest_twisted.ensureDeferred
async def test_subscriber_bad_input(broker):
    conn = await connect_raw(broker.port)
    exchanges = [
        (b"\x00\x63", wire.ERR_UNKNOWN_ACTION),  # before the handshake: still new
        (
            wire.encode_subscribe(["a"], StartAt.CURRENT)[:2] + b"\x00\x00\x00\x04null\x00\x01",
            wire.ERR_INVALID_TOPIC_DATA,
        ),
        (
            b"\x00\x01" + struct.pack(">I", 9) + b'["a",123]' + b"\x00\x01",
            wire.ERR_INVALID_TOPIC_DATA,
        ),
        (wire.encode_subscribe([""], StartAt.CURRENT), "invalid topic name: empty"),
        (wire.encode_subscribe(["a\x00"], StartAt.CURRENT), "invalid topic name: contains NUL"),
        (
            b"\x00\x01" + struct.pack(">I", 2000) + b" " * 2000 + b"\x00\x01",
            wire.ERR_TOPIC_LIST_TOO_LARGE,
        ),
        (wire.encode_u16(wire.ACK), wire.ERR_NOTHING_TO_ACK),
        (wire.encode_u16(wire.NACK), wire.ERR_NOTHING_TO_ACK),
        (wire.encode_u16(wire.ACTION_PUBLISH), wire.ERR_UNKNOWN_ACTION),
        (b"\x00\x02\x00\x00\x00\x03[1]", wire.ERR_INVALID_TOPIC_DATA),
    ]
    for sent, reason in exchanges:
        conn.send(sent)
        assert await read_error(conn) == reason, sent
    # After all that the connection still works.
    conn.send(wire.encode_subscribe(["a"], StartAt.CURRENT))
    assert await conn.read(2) == SUBSCRIBED
    conn.send(wire.encode_unsubscribe(["never-held"]))
    assert await conn.read(2) == b"\x00\x02"


@pytest_twisted.ensureDeferred
async def test_too_many_topics_is_refused():
    """Publishes create topics, up to the limit; subscribes to topics that do
    not exist cost none (they wait for a publish to create theirs)."""
    running = start_broker(BrokerSettings(max_topics=2))
    try:
        conn = await subscriber(running.port, ["a", "b", "c"])
        assert len(running.factory.broker.registry) == 0
        pub = await publisher(running.port)
        pub.send(wire.encode_publish("a", b"first") + wire.encode_publish("b", b"2"))
        await expect_delivery(conn, "a", b"first")
        conn.send(wire.encode_u16(wire.ACK))  # the plain protocol: one at a time
        await expect_delivery(conn, "b", b"2")
        conn.send(wire.encode_u16(wire.ACK))
        pub.send(wire.encode_publish("d", b"1") + wire.encode_publish("a", b"ok"))
        assert await pub.read(len(error(wire.ERR_TOO_MANY_TOPICS))) == error(
            wire.ERR_TOO_MANY_TOPICS
        )
        await expect_delivery(conn, "a", b"ok")
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_reads_is_throttled(broker):
    conn = await connect_raw(broker.port)
    conn.transport.pauseProducing()  # we never read the answers
    flood = wire.encode_u16(0x63) * 65536  # 128 KiB of unknown actions
    for _ in range(64):
        conn.send(flood)
    (server_side,) = broker.factory.connections
    transport = server_side.transport
    for _ in range(200):  # until the server stops reading from it (10 s at most)
        if transport.producerPaused:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert transport.producerPaused  # the server stopped reading from it
    pending = len(transport.dataBuffer) + transport._tempDataLen
    assert pending < 8 * 1024 * 1024, pending  # not 8 MiB of errors per 2 MiB sent
    conn.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_vanishing_subscriber_releases_everything(broker):
    sub = await subscriber(broker.port, ["t"])
    pub = await publisher(broker.port)
    pub.send(wire.encode_publish("t", b"in flight") + wire.encode_publish("t", b"queued"))
    await expect_delivery(sub, "t", b"in flight")
    sub.transport.abortConnection()
    await sub.closed
    await deferLater(reactor, 0.05, lambda: None)
    assert broker.core.timers.ack_timeouts == 0
    assert broker.core.registry.get("t").waiting == {}
    assert all(c.decoder.role == "publisher" for c in broker.factory.connections)
    # Another subscriber from the beginning gets both, in order.
    again = await subscriber(broker.port, ["t"], StartAt.BEGINNING)
    await expect_delivery(again, "t", b"in flight")
    again.send(wire.encode_u16(wire.ACK))
    await expect_delivery(again, "t", b"queued")


@pytest_twisted.ensureDeferred
async def test_a_burst_reaches_every_subscriber_complete_in_order_and_intact():
    running = start_broker(BrokerSettings(delivery=DeliverySettings(ack_timeout=30)))
    try:
        count = 5_000  # 110 KB of frames: far more than one read or socket buffer
        subs = [await subscriber(running.port, ["burst"]) for _ in range(3)]
        pub = await publisher(running.port)
        pub.send(b"".join(wire.encode_publish("burst", b"m%06d" % i) for i in range(count)))
        for sub in subs:
            for i in range(count):
                await expect_delivery(sub, "burst", b"m%06d" % i)
                sub.send(wire.encode_u16(wire.ACK))
    finally:
        await running.stop()


def test_handshake_timeout_under_a_fake_clock():
    clock = Clock()
    factory = BrokerFactory(BrokerSettings(handshake_timeout=5), clock=clock)
    quiet, chosen = factory.buildProtocol(None), factory.buildProtocol(None)
    quiet_transport, chosen_transport = StringTransport(), StringTransport()
    quiet.makeConnection(quiet_transport)
    chosen.makeConnection(chosen_transport)
    quiet.dataReceived(b"\x00")  # half an action
    chosen.dataReceived(b"\x00\x03")  # publisher
    clock.advance(4.9)
    assert not quiet_transport.disconnecting
    clock.advance(0.1)
    assert quiet_transport.disconnecting
    assert quiet_transport.value() == error(wire.ERR_HANDSHAKE_TIMEOUT)
    assert not chosen_transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_end_to_end():
    running = start_broker(BrokerSettings(handshake_timeout=0.2))
    try:
        conn = await connect_raw(running.port)
        await conn.closed
        assert bytes(conn.received) == error(wire.ERR_HANDSHAKE_TIMEOUT)
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_flood_of_bad_frames_does_not_flood_the_log(broker):
    from twisted.logger import globalLogPublisher

    from broker.server import LOGGED_REFUSALS

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        conn = await connect_raw(broker.port)
        port = conn.transport.getHost().port
        conn.send(wire.encode_u16(0x63) * 500)
        answer = error(wire.ERR_UNKNOWN_ACTION)
        assert await conn.read(len(answer) * 500) == answer * 500  # each one answered
        conn.transport.loseConnection()
        await conn.closed
        await deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if f":{port}" in str(e.get("peer", ""))]
    refusals = [e for e in mine if e.get("reason", "").startswith("unknown action")]
    assert len(refusals) == LOGGED_REFUSALS
    assert any(e.get("n") == 500 and e.get("unlogged") == 500 - LOGGED_REFUSALS for e in mine)


@pytest_twisted.ensureDeferred
async def test_every_connection_is_written_without_nagle(broker):
    sub = await subscriber(broker.port, ["t"])
    pub = await publisher(broker.port)
    handles = [c.transport.getHandle() for c in broker.factory.connections]
    assert len(handles) == 2
    assert all(h.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for h in handles)
    sub.transport.loseConnection()
    pub.transport.loseConnection()
