"""The extensions negotiated by Hello: confirms, offsets, prefetch, resume, dead letters."""

from __future__ import annotations

import json
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor

from broker import wire
from broker.client import BrokerError, Message, connect
from broker.core.dead_letters import decode_dead_letter
from broker.core.delivery import DeliverySettings
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox
from tests.raw import RawConnection, connect_raw

SHORT = BrokerSettings(delivery=DeliverySettings(ack_delay=0.05, ack_timeout=0.2), max_prefetch=64)


@pytest_twisted.async_yield_fixture
async def broker():
    running = start_broker(SHORT)
    yield running
    await running.stop()


async def hello(conn: RawConnection, **fields) -> dict:
    conn.send(wire.encode_hello({"version": wire.EXTENSIONS_VERSION, **fields}))
    code, length = struct.unpack(">HI", await conn.read(6))
    assert code == wire.HELLO
    return json.loads(await conn.read(length))


async def read_answer(conn: RawConnection) -> tuple:
    (code,) = struct.unpack(">H", await conn.read(2))
    if code == wire.CONFIRMED:
        return ("confirmed", *struct.unpack(">IQ", await conn.read(12)))
    assert code == wire.STATUS_ERROR, code
    (length,) = struct.unpack(">H", await conn.read(2))
    return ("error", (await conn.read(length)).decode())


async def read_delivery(conn: RawConnection) -> tuple[str, int, int, int, bytes]:
    code, topic_length = struct.unpack(">HH", await conn.read(4))
    assert code == wire.DELIVERY
    topic = (await conn.read(topic_length)).decode()
    offset, attempt, delivery_id, size = struct.unpack(">QHII", await conn.read(18))
    return topic, offset, attempt, delivery_id, await conn.read(size)


@pytest_twisted.ensureDeferred
async def test_hello_negotiates_and_a_silent_client_sees_the_seed_protocol(broker):
    conn = await connect_raw(broker.port)
    granted = await hello(conn, prefetch=1000, confirms=True)
    assert granted["version"] == 1 and granted["confirms"] is True
    assert granted["prefetch"] == 64 == granted["max_prefetch"]  # capped
    assert granted["max_deliveries"] == 5 and granted["from64"] is True
    # Hello is a first action only.
    late = await connect_raw(broker.port)
    late.send(wire.encode_subscribe(["h"], StartAt.CURRENT))
    assert await late.read(2) == b"\x00\x01"
    late.send(wire.encode_client_hello())
    assert await read_answer(late) == ("error", wire.ERR_UNKNOWN_ACTION)
    bad = await connect_raw(broker.port)
    bad.send(b"\x00\x10\x00\x00\x00\x03[1]" + wire.encode_u16(wire.ACTION_PUBLISH))
    assert await read_answer(bad) == ("error", wire.ERR_INVALID_HELLO)
    bad.send(wire.encode_publish("t", b""))  # still plain: an empty message is ignored
    await bad.assert_silent(0.1)


@pytest_twisted.ensureDeferred
async def test_confirms_answer_every_publish_in_order(broker):
    conn = await connect_raw(broker.port)
    await hello(conn, confirms=True)
    conn.send(
        wire.encode_u16(wire.ACTION_PUBLISH)
        + wire.encode_publish("a", b"a0")
        + wire.encode_publish("a", b"a1")
        + struct.pack(">H", 1)
        + b"x"
        + struct.pack(">I", 1)
        + b"?"  # no prefix
        + wire.encode_publish("b", b"b0")
        + wire.encode_publish("a", b"a2")
        + wire.encode_publish("a", b"")  # empty: refused, not ignored, under confirms
        + wire.encode_publish("a", b"x" * 2_000_000)  # over the limit
        + wire.encode_publish("a", b"a3")
    )
    answers = [await read_answer(conn) for _ in range(7)]
    assert answers == [
        ("confirmed", 2, 0),
        ("error", wire.ERR_NO_TOPIC_PREFIX),
        ("confirmed", 1, 0),
        ("confirmed", 1, 2),
        ("error", wire.ERR_EMPTY_MESSAGE),
        ("error", wire.ERR_MESSAGE_TOO_LARGE),
        ("confirmed", 1, 3),
    ]


@pytest_twisted.ensureDeferred
async def test_prefetch_window_offsets_and_acks_by_id(broker):
    pub = await connect_raw(broker.port)
    pub.send(b"\x00\x03" + b"".join(wire.encode_publish("w", b"%d" % i) for i in range(20)))
    sub = await connect_raw(broker.port)
    await hello(sub, prefetch=5)
    sub.send(wire.encode_subscribe(["w"], StartAt.BEGINNING))
    assert await sub.read(2) == b"\x00\x01"
    first = [await read_delivery(sub) for _ in range(5)]
    assert [(d[1], d[2], d[4]) for d in first] == [(i, 1, b"%d" % i) for i in range(5)]
    await sub.assert_silent(0.05)  # the window is full
    sub.send(wire.encode_ack_id(first[2][3]))  # acks name their delivery; any order
    assert (await read_delivery(sub))[1] == 5
    sub.send(wire.encode_u16(wire.ACK))  # the seed's id-less ack is not an extended action
    assert await read_answer(sub) == ("error", wire.ERR_UNKNOWN_ACTION)
    # Unanswered deliveries time out and come again with the same id.
    again = await read_delivery(sub)
    assert again[2] == 2 and again[3] == first[0][3] and again[1] == 0


@pytest_twisted.ensureDeferred
async def test_client_confirms_offsets_and_refusals(broker):
    client = connect(reactor, broker.endpoint, extensions=True)
    try:
        offsets = [await client.publish("c", b"m%d" % i) for i in range(3)]
        assert offsets == [0, 1, 2]
        big = b"x" * (SHORT.max_message_size + 1)
        with pytest.raises(BrokerError, match="too large"):
            await client.publish("c", big)
        assert await client.publish("c", b"after") == 3
        inbox = Inbox()
        await client.subscribe(["c"], inbox, start=StartAt.FROM, offset=1)
        await inbox.wait(3)
        assert [(m.offset, m.payload, m.attempt) for m in inbox.messages] == [
            (1, b"m1", 1),
            (2, b"m2", 1),
            (3, b"after", 1),
        ]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_resumes_where_it_left_off(broker):
    publisher = connect(reactor, broker.endpoint, extensions=True)
    subscriber = connect(reactor, broker.endpoint, extensions=True, prefetch=8)
    inbox = Inbox()
    try:
        await subscriber.subscribe(["resume"], inbox, start=StartAt.BEGINNING)
        for i in range(10):
            await publisher.publish("resume", b"%d" % i)
        await inbox.wait(10)
        old = await subscriber.subscriber_connected()
        old.transport.abortConnection()
        await old.lost
        for i in range(10, 30):  # published while the subscriber is away
            await publisher.publish("resume", b"%d" % i)
        await inbox.wait(30)
        new = await subscriber.subscriber_connected()
        assert new is not old
        firsts = []
        for message in inbox.messages:
            if message.offset not in firsts:
                firsts.append(message.offset)
        assert firsts == list(range(30))  # nothing lost, first deliveries in order
    finally:
        await publisher.close()
        await subscriber.close()


def test_exhausted_messages_go_to_the_dead_letter_topic():
    broker = InMemoryBroker(SHORT)
    client = broker.client(extensions=True)
    plain = broker.client()
    letters = Inbox()
    refuse = Inbox(answer=False)
    client.subscribe(["orders.dead-letter"], letters)
    client.subscribe(["orders"], refuse)
    plain.subscribe(["orders"], Inbox(answer=False))  # a plain subscriber too
    broker.flush()
    client.publish("orders", b"poison")
    for _ in range(40):
        broker.advance(0.05)
    assert [m.attempt for m in refuse.messages] == [1, 2, 3, 4, 5]
    metadata = [decode_dead_letter(m.payload) for m in letters.messages]
    assert len(metadata) == 2 and {payload for _, payload in metadata} == {b"poison"}
    for meta, _ in metadata:
        assert meta["topic"] == "orders" and meta["offset"] == 0
        assert meta["deliveries"] == 5 and meta["reason"] == "nacked"
        assert meta["subscriber"].startswith("127.0.0.1:")
    # Letters given up on are not lettered again, however long it runs.
    client.unsubscribe(["orders.dead-letter"])
    client.subscribe(["orders.dead-letter"], Inbox(answer=False), StartAt.BEGINNING)
    for _ in range(40):
        broker.advance(0.05)
    broker.advance(60)
    assert "orders.dead-letter.dead-letter" not in broker.core.registry


def test_a_dead_letter_carries_the_messages_headers_and_the_brokers():
    broker = InMemoryBroker(SHORT)
    client = broker.client(extensions=True)
    letters = Inbox()
    client.subscribe(["orders.dead-letter"], letters)
    client.subscribe(["orders"], Inbox(answer=False))
    broker.flush()
    client.publish("orders", b"poison", headers=[("traceparent", "00-ab-01")])
    for _ in range(40):
        broker.advance(0.05)
    (letter,) = letters.messages
    assert decode_dead_letter(letter.payload)[1] == b"poison"
    assert letter.headers.pairs() == (
        ("traceparent", "00-ab-01"),
        ("Dead-Letter-Reason", "nacked"),
        ("Dead-Letter-Topic", "orders"),
        ("Dead-Letter-Offset", "0"),
        ("Dead-Letter-Deliveries", "5"),
    )


def test_dead_letters_can_be_turned_off():
    broker = InMemoryBroker(
        BrokerSettings(
            delivery=DeliverySettings(ack_delay=0.01, ack_timeout=0.05), dead_letter_topic=None
        )
    )
    client = broker.client(extensions=True)
    refuse = Inbox(answer=lambda m: False)
    client.subscribe(["t"], refuse)
    broker.flush()
    client.publish("t", b"x")
    for _ in range(10):
        broker.advance(0.01)
    broker.advance(60)
    assert [m.attempt for m in refuse.messages] == [1, 2, 3, 4, 5]
    assert list(broker.core.registry) == [broker.core.registry.get("t")]  # no letters


def test_unused_message_fields_default():
    assert Message("t", b"x").offset is None and Message("t", b"x").attempt == 1
