"""The TCP door's sessions alone (broker.server.publisher, .subscriber): a
real core Broker over the memory store on a fake clock, and a recording
Connection in place of BrokerProtocol. Each test calls the decoder events a
ServerDecoder would call on a session (or feeds a real ServerDecoder where
the decoder is the one that refuses), then checks the exact frames written
and what the broker holds: offsets in the topic logs, windows, acks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from broker.core import Broker, BrokerSettings
from broker.core.confirms import SYNC_FAILED
from broker.core.consumer import MAX_AWAITED_TOPICS
from broker.core.delivery import DeliverySettings
from broker.log import MemoryLog, MemoryStore
from broker.security.permissions import Rules
from broker.security.users import User
from broker.server.publisher import PublisherSession
from broker.server.subscriber import FLUSH_BYTES, SubscriberSession
from broker.server.transport import IStreamTransport
from broker.wire import (
    ACK,
    ACTION_PUBLISH,
    ERR_EMPTY_MESSAGE,
    ERR_NO_TOPIC_PREFIX,
    ERR_NOTHING_TO_ACK,
    ERR_TOO_MANY_TOPICS,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    ClientDecoder,
    ServerDecoder,
    ServerEvents,
    StartAt,
    encode_ack_id,
    encode_confirmed,
    encode_confirmed_at,
    encode_delivery,
    encode_error,
    encode_hello,
    encode_publish,
    encode_refused_at,
    encode_subscribe,
    encode_u16,
)
from tests.conftest import FailureLog

ACK_TIMEOUT = 2.0
ACK_DELAY = 1.0
SUBSCRIBED = encode_u16(STATUS_SUBSCRIBED)
UNSUBSCRIBED = encode_u16(STATUS_UNSUBSCRIBED)

Frame = tuple[Any, ...]


class RecordingConnection:
    """A Connection (broker.server.connection) that keeps what its session
    asks of it. Frames go to a StringTransport; a refusal is recorded and
    answered with its Error frame there, as BrokerProtocol.refused does, so
    that the bytes are what a client would read, in order."""

    def __init__(self, broker: Broker, written: StringTransport | None = None) -> None:
        self._broker = broker
        self.written = written if written is not None else StringTransport()
        self.refusals: list[tuple[str, str | None]] = []
        self.logged: list[str] = []
        self.unknown: list[int] = []
        self.closed: list[float | None] = []
        self.held: list[Deferred[Any]] = []

    @property
    def peer(self) -> str:
        return "127.0.0.1:40000"

    @property
    def broker(self) -> Broker:
        return self._broker

    @property
    def transport(self) -> IStreamTransport:
        # StringTransport declares ITransport, IConsumer and IPushProducer,
        # not all of IStreamTransport, but has every method a session calls.
        return cast(IStreamTransport, self.written)

    def refused(self, reason: str, detail: str | None = None) -> None:
        self.refusals.append((reason, detail))
        self.written.write(encode_error(reason))

    def log_refusal(self, reason: str) -> None:
        self.logged.append(reason)

    def unknown_action(self, code: int) -> None:
        self.unknown.append(code)

    def hold_input_until(self, ready: Deferred[Any], then: Callable[[], None]) -> None:
        self.held.append(ready)

    def close(self, grace: float | None = None) -> None:
        self.closed.append(grace)

    def take(self) -> bytes:
        """What was written since the last call."""
        data = self.written.value()
        self.written.clear()
        return data


class TaggedFrames:
    """ClientEvents that keep each frame of the extensions' tagged stream
    (what a client that agreed Hello reads) as a tuple."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def status_received(self, code: int) -> None:
        self.frames.append(("status", code))

    def error_received(self, text: str) -> None:
        self.frames.append(("error", text))

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self.frames.append(("plain delivery", topic, payload))

    def protocol_error(self, reason: str) -> None:
        self.frames.append(("protocol error", reason))

    def hello_received(self, fields: dict) -> None:
        self.frames.append(("hello", fields))

    def confirmed(self, count: int, first_offset: int) -> None:
        self.frames.append(("confirmed", count, first_offset))

    def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None:
        self.frames.append(("confirmed at", sequence, count, first_offset))

    def refused_at(self, sequence: int, text: str) -> None:
        self.frames.append(("refused at", sequence, text))

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self.frames.append(("delivery", topic, offset, attempt, delivery_id, payload))


def tagged(data: bytes) -> list[Frame]:
    """`data`, a tagged stream, decoded whole by the client's decoder (put
    past a Hello answer first, which is how it learns the stream is tagged)."""
    events = TaggedFrames()
    decoder = ClientDecoder(events, 1 << 20)
    decoder.expect_hello()
    decoder.feed(encode_hello({}) + data)
    assert decoder.buffered == 0, f"an incomplete frame at the end of {data!r}"
    assert events.frames[0] == ("hello", {})
    return events.frames[1:]


def delivery(offset: int, attempt: int, delivery_id: int, payload: bytes) -> Frame:
    """An extended delivery of topic "orders", as `tagged` gives it."""
    return ("delivery", "orders", offset, attempt, delivery_id, payload)


SUBSCRIBED_FRAME: Frame = ("status", STATUS_SUBSCRIBED)


@pytest.fixture(autouse=True)
def no_failure_logged(logged_failures: FailureLog) -> Iterator[None]:
    """A failure logged anywhere (an errback in the confirms' Deferreds, a
    timer that raised) fails the test that caused it."""
    yield
    logged_failures.assert_none()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Iterator[Broker]:
    settings = BrokerSettings(
        delivery=DeliverySettings(ack_timeout=ACK_TIMEOUT, ack_delay=ACK_DELAY)
    )
    core = Broker(settings, clock, store=MemoryStore(settings.retention, clock=clock.seconds))
    yield core
    core.stop()


def stored(broker: Broker, topic: str) -> list[bytes | None]:
    """Every message topic `topic` holds, from offset 0."""
    log = broker.registry.get(topic).log
    assert log.first_offset == 0
    return log.read(0, log.next_offset)


def publisher(
    broker: Broker, confirms: bool = False, may_publish: Rules | None = None, by_topic: bool = False
) -> tuple[PublisherSession, RecordingConnection]:
    connection = RecordingConnection(broker)
    session = PublisherSession(connection, confirms, may_publish, by_topic)
    return session, connection


def subscriber(
    broker: Broker, extended: bool = True, prefetch: int = 1, user: User | None = None
) -> tuple[SubscriberSession, RecordingConnection]:
    connection = RecordingConnection(broker)
    session = SubscriberSession(connection, extended, prefetch, user=user)
    return session, connection


def reader(*allowed: str) -> User:
    """A user who may subscribe to `allowed` only."""
    return User("ann", subscribe=Rules.of(allowed))


# The publisher.


def test_a_reads_publishes_are_appended_per_topic_when_the_read_ends(broker: Broker) -> None:
    """Publishes are gathered, not appended one by one: nothing is stored
    until end_of_read, then each topic's publishes in the order they came,
    one batch per topic; a publisher without confirms is told nothing."""
    broker.registry.publish("orders", [b"old"])
    session, connection = publisher(broker)
    session.published("orders", [b"a", b"b"])
    session.published("audit", [b"x"])
    session.published("orders", [b"c"])
    assert stored(broker, "orders") == [b"old"] and "audit" not in broker.registry
    session.end_of_read()
    assert stored(broker, "orders") == [b"old", b"a", b"b", b"c"]
    assert stored(broker, "audit") == [b"x"]
    assert (session.messages, session.bytes) == (4, 4)
    assert broker.stats.published_messages == 4
    assert connection.take() == b"" and connection.refusals == []
    session.end_of_read()  # an empty read appends nothing more
    assert stored(broker, "orders") == [b"old", b"a", b"b", b"c"]


def test_confirms_answer_each_publish_in_publish_order_with_its_offset(broker: Broker) -> None:
    """With confirms agreed, a read's publishes are answered in the order
    they were published (not grouped by topic), a run of one topic's
    consecutive publishes as one Confirmed with its first offset."""
    broker.registry.publish("orders", [b"o0", b"o1"])
    session, connection = publisher(broker, confirms=True)
    session.published("orders", [b"a", b"b"])
    session.published("audit", [b"x"])
    session.published("orders", [b"c"])
    assert connection.take() == b""  # answered once stored, at the end of the read
    session.end_of_read()
    data = connection.take()
    assert data == encode_confirmed(2, 2) + encode_confirmed(1, 0) + encode_confirmed(1, 4)
    assert tagged(data) == [("confirmed", 2, 2), ("confirmed", 1, 0), ("confirmed", 1, 4)]
    assert stored(broker, "orders") == [b"o0", b"o1", b"a", b"b", b"c"]
    session.published("audit", [b"y"])
    session.end_of_read()
    assert tagged(connection.take()) == [("confirmed", 1, 1)]


def test_confirms_by_topic_name_the_publish_each_answers(broker: Broker) -> None:
    """With "confirm_order": "topic", each answer names its publish by its
    sequence on the connection (counted from 0, across reads): refusals made
    as the read was parsed go first, then each topic's answers in a lane of
    its own, a forbidden topic's as RefusedAt."""
    session, connection = publisher(
        broker, confirms=True, may_publish=Rules.of(["orders", "audit"]), by_topic=True
    )
    session.published("orders", [b"a", b"b"])
    session.refused("invalid topic name: empty")  # as the decoder reports a bad name
    session.published("payroll", [b"p"])
    session.published("audit", [b"x"])
    session.published("orders", [b"c"])
    session.end_of_read()
    denied = "permission denied: publish to 'payroll'"
    assert connection.take() == (
        encode_refused_at(2, "invalid topic name: empty")
        + encode_confirmed_at(0, 2, 0)
        + encode_confirmed_at(5, 1, 2)
        + encode_refused_at(3, denied)
        + encode_confirmed_at(4, 1, 0)
    )
    session.published("audit", [b"y"])
    session.end_of_read()
    assert tagged(connection.take()) == [("confirmed at", 6, 1, 1)]
    assert stored(broker, "orders") == [b"a", b"b", b"c"] and "payroll" not in broker.registry


def test_a_publish_the_user_may_not_make_is_refused_and_not_stored(broker: Broker) -> None:
    """Without confirms, a publish to a topic the user's publish rules do not
    allow gets one Error per message, is logged once for its batch, and
    stores nothing; the allowed topic of the same read is stored."""
    session, connection = publisher(broker, may_publish=Rules.of(["orders.>"]))
    session.published("orders.eu", [b"a"])
    session.published("payroll", [b"p", b"q"])
    session.end_of_read()
    denied = "permission denied: publish to 'payroll'"
    assert connection.take() == encode_error(denied) * 2
    assert connection.logged == [f"{denied} (2 message(s))"]
    assert "payroll" not in broker.registry
    assert stored(broker, "orders.eu") == [b"a"]
    assert (session.messages, connection.closed) == (1, [])


def test_a_confirming_publisher_is_refused_in_the_place_of_each_forbidden_publish(
    broker: Broker,
) -> None:
    """With confirms, each forbidden publish is answered by an Error where its
    Confirmed would be, so that the client matches answers to publishes by
    order; the offsets of the allowed ones are unaffected."""
    session, connection = publisher(broker, confirms=True, may_publish=Rules.of(["orders"]))
    session.published("orders", [b"a"])
    session.published("payroll", [b"p"])
    session.published("orders", [b"b"])
    session.end_of_read()
    denied = "permission denied: publish to 'payroll'"
    assert tagged(connection.take()) == [
        ("confirmed", 1, 0),
        ("error", denied),
        ("confirmed", 1, 1),
    ]
    assert "payroll" not in broker.registry and stored(broker, "orders") == [b"a", b"b"]


def test_a_publisher_whose_user_may_publish_nothing_is_closed_after_its_answers(
    broker: Broker,
) -> None:
    """A user with no publish right holds a connection for nothing: the
    refusals are written, then the session asks the connection to close."""
    session, connection = publisher(broker, confirms=True, may_publish=Rules())
    session.published("orders", [b"a"])
    session.end_of_read()
    assert tagged(connection.take()) == [("error", "permission denied: publish to 'orders'")]
    assert connection.closed == [None] and "orders" not in broker.registry


def test_new_publish_rights_apply_from_the_next_read(broker: Broker) -> None:
    """permissions_changed (a reloaded users file) replaces the rules the
    next batch is checked against."""
    session, connection = publisher(broker, confirms=True, may_publish=Rules.of(["orders"]))
    session.permissions_changed(User("ann", publish=Rules.of(["audit"])))
    session.published("orders", [b"a"])
    session.published("audit", [b"x"])
    session.end_of_read()
    assert tagged(connection.take()) == [
        ("error", "permission denied: publish to 'orders'"),
        ("confirmed", 1, 0),
    ]


class TakesItsRole:
    """What BrokerProtocol does for a decoder before its first action: once
    the role is known it points the decoder at the session."""

    def __init__(
        self, decoder: ServerDecoder, session: PublisherSession | SubscriberSession
    ) -> None:
        self._decoder = decoder
        self._session = session

    def became_publisher(self) -> None:
        assert isinstance(self._session, PublisherSession)
        self._decoder.events = cast(ServerEvents, self._session)

    def became_subscriber(self) -> None:
        assert isinstance(self._session, SubscriberSession)
        self._decoder.events = cast(ServerEvents, self._session)


def decoded_read(
    session: PublisherSession | SubscriberSession, data: bytes, extended: bool = False
) -> None:
    """Feed `data` (a client's first bytes, after Hello if `extended`) to a
    real ServerDecoder that reports to `session`, as one read."""
    decoder = ServerDecoder(cast(ServerEvents, None), 1 << 20)
    decoder.events = cast(ServerEvents, TakesItsRole(decoder, session))
    decoder.extended = extended
    decoder.feed(data)
    assert decoder.role == session.role and decoder.buffered == 0
    session.end_of_read()


def raw_publish(name: bytes, payload: bytes) -> bytes:
    """A publish frame naming its topic by `name` as sent (prefix included)."""
    return len(name).to_bytes(2, "big") + name + len(payload).to_bytes(4, "big") + payload


def test_invalid_topic_names_are_refused_in_their_place(broker: Broker) -> None:
    """The decoder refuses a topic name without the "topic:" prefix, or an
    empty one, through the session: a confirming publisher gets an Error in
    the place of each, between the Confirmed of the good publishes around
    them, both refusals logged, and nothing stored under a bad name."""
    session, connection = publisher(broker, confirms=True)
    decoded_read(
        session,
        encode_u16(ACTION_PUBLISH)
        + encode_publish("orders", b"a")
        + raw_publish(b"orders", b"z")
        + raw_publish(b"topic:", b"e")
        + encode_publish("orders", b"b"),
    )
    assert tagged(connection.take()) == [
        ("confirmed", 1, 0),
        ("error", ERR_NO_TOPIC_PREFIX),
        ("error", "invalid topic name: empty"),
        ("confirmed", 1, 1),
    ]
    assert connection.logged == [ERR_NO_TOPIC_PREFIX, "invalid topic name: empty"]
    assert connection.refusals == []  # answered by the session, not the protocol
    assert [topic.name for topic in broker.registry] == ["orders"]
    assert stored(broker, "orders") == [b"a", b"b"]


def test_without_confirms_an_invalid_topic_name_is_refused_by_the_connection(
    broker: Broker,
) -> None:
    """A publisher without confirms is answered by the connection's own
    Error (Session.refused), and the good publishes go on being stored."""
    session, connection = publisher(broker)
    decoded_read(
        session,
        encode_u16(ACTION_PUBLISH)
        + raw_publish(b"topic:", b"e")
        + raw_publish(b"topic:x\0y", b"n")
        + encode_publish("orders", b"a"),
    )
    assert connection.refusals == [
        ("invalid topic name: empty", None),
        ("invalid topic name: contains NUL", None),
    ]
    assert connection.take() == (
        encode_error("invalid topic name: empty") + encode_error("invalid topic name: contains NUL")
    )
    assert [topic.name for topic in broker.registry] == ["orders"]


def test_an_empty_message_is_refused_only_to_a_confirming_publisher(broker: Broker) -> None:
    """The seed ignores an empty publish; a confirming publisher is told, in
    its place. Neither stores it."""
    quiet, quiet_connection = publisher(broker)
    quiet.published("orders", [b""])
    quiet.end_of_read()
    assert quiet_connection.take() == b"" and "orders" not in broker.registry
    session, connection = publisher(broker, confirms=True)
    session.published("orders", [b"a", b"", b"b"])
    session.end_of_read()
    assert tagged(connection.take()) == [
        ("confirmed", 1, 0),
        ("error", ERR_EMPTY_MESSAGE),
        ("confirmed", 1, 1),
    ]
    assert stored(broker, "orders") == [b"a", b"b"]


class SyncedLog(MemoryLog):
    """A memory log that commits what it holds only when the test calls
    `sync`, as the file store does under --fsync: until then every `flush`
    waits."""

    def __init__(self) -> None:
        super().__init__()
        self._committed = 0
        self._flushes: list[Deferred[None]] = []

    @property
    def committed_offset(self) -> int:
        return self._committed

    def flush(self) -> Deferred[None]:
        flushed: Deferred[None] = Deferred()
        self._flushes.append(flushed)
        return flushed

    def sync(self, error: Exception | None = None) -> None:
        """Commit everything held and end the flushes waiting, or fail them
        all with `error`."""
        flushes, self._flushes = self._flushes, []
        if error is None:
            self._committed = self.next_offset
        for flushed in flushes:
            if error is None:
                flushed.callback(None)
            else:
                flushed.errback(error)


class SyncedStore(MemoryStore):
    """A memory store of SyncedLogs, each kept by its topic's name."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: dict[str, SyncedLog] = {}

    def open(self, name: str) -> MemoryLog:
        log = self.logs[name] = SyncedLog()
        return log


def synced_broker(clock: Clock) -> tuple[Broker, SyncedStore]:
    store = SyncedStore()
    return Broker(BrokerSettings(), clock, store=store), store


def test_confirms_wait_for_the_commit_and_keep_the_order_of_reads(clock: Clock) -> None:
    """A Confirmed goes only once the log has committed what it confirms,
    and never before the answers of an earlier read, even when the later
    read's topic commits first."""
    broker, store = synced_broker(clock)
    session, connection = publisher(broker, confirms=True)
    session.published("orders", [b"a", b"b"])
    session.end_of_read()
    session.published("audit", [b"x"])
    session.end_of_read()
    assert connection.take() == b""
    store.logs["audit"].sync()
    assert connection.take() == b""
    store.logs["orders"].sync()
    assert connection.take() == encode_confirmed(2, 0) + encode_confirmed(1, 0)


def test_a_failed_sync_answers_each_of_its_publishes_with_an_error(clock: Clock) -> None:
    """A commit that fails (fsync failed) is not confirmed: each publish of
    the batch gets the "sync to disk failed" Error instead."""
    broker, store = synced_broker(clock)
    session, connection = publisher(broker, confirms=True)
    session.published("orders", [b"a", b"b"])
    session.end_of_read()
    store.logs["orders"].sync(OSError("disk gone"))
    assert connection.take() == encode_error(SYNC_FAILED) * 2


def test_a_closed_publisher_sends_no_answer_left(clock: Clock) -> None:
    """close() (the connection is gone) drops the answers still waiting for
    their commit: nothing is written when it comes."""
    broker, store = synced_broker(clock)
    session, connection = publisher(broker, confirms=True)
    session.published("orders", [b"a"])
    session.end_of_read()
    session.close()
    store.logs["orders"].sync()
    assert connection.take() == b""


# The subscriber.


def test_subscribing_from_the_beginning_delivers_earlier_messages_in_order(
    broker: Broker,
) -> None:
    """StartAt Beginning replays the log: Subscribed first, then each
    earlier message as an extended delivery, offsets and ids counting up,
    attempt 1, as far as the prefetch allows."""
    broker.registry.publish("orders", [b"a", b"b", b"c"])
    session, connection = subscriber(broker, prefetch=10)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert tagged(connection.take()) == [
        SUBSCRIBED_FRAME,
        delivery(0, 1, 0, b"a"),
        delivery(1, 1, 1, b"b"),
        delivery(2, 1, 2, b"c"),
    ]
    assert session.window.in_flight == 3 and session.delivered_messages == 3
    assert broker.stats.delivered_messages == 3 and connection.refusals == []


def test_the_plain_protocol_gets_the_seeds_frames_one_at_a_time(broker: Broker) -> None:
    """Without Hello: a bare Subscribed status and the seed's untagged
    delivery (topic, u64 length, data), one in flight (prefetch 1); each
    ack (no id) lets the next one go at once."""
    broker.registry.publish("orders", [b"a", b"b"])
    session, connection = subscriber(broker, extended=False)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert connection.take() == SUBSCRIBED + encode_delivery("orders", b"a")
    session.acked()
    assert connection.take() == encode_delivery("orders", b"b")
    session.acked()
    assert connection.take() == b""
    assert broker.stats.acks == 2 and session.window.in_flight == 0


def test_subscribing_at_current_skips_what_was_published_before(broker: Broker) -> None:
    """StartAt Current starts at the end of the log: only later messages go."""
    broker.registry.publish("orders", [b"old"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.CURRENT, 0)
    assert tagged(connection.take()) == [SUBSCRIBED_FRAME]
    broker.registry.publish("orders", [b"new"])
    assert tagged(connection.take()) == [delivery(1, 1, 0, b"new")]


def test_an_ack_frees_the_window_for_the_next_delivery_at_the_end_of_the_read(
    broker: Broker,
) -> None:
    """Prefetch 1: the second message waits for the first's ack; an ack by
    id frees the slot, which is filled once the read ends (one write for all
    the read's acks), not during it."""
    broker.registry.publish("orders", [b"a", b"b"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert tagged(connection.take()) == [SUBSCRIBED_FRAME, delivery(0, 1, 0, b"a")]
    session.end_of_read()
    assert connection.take() == b""  # still in flight: nothing more goes
    session.acked_ids([0])
    assert connection.take() == b"" and session.window.in_flight == 0
    session.end_of_read()
    assert tagged(connection.take()) == [delivery(1, 1, 1, b"b")]
    assert session.window.in_flight == 1 and broker.stats.acks == 1


def test_a_nack_sends_the_message_again_after_the_ack_delay(broker: Broker, clock: Clock) -> None:
    """A nack frees the slot at once; the message goes again, same id and
    offset, attempt 2, once the ack delay has passed on the clock."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert tagged(connection.take()) == [SUBSCRIBED_FRAME, delivery(0, 1, 0, b"a")]
    session.nacked_id(0)
    session.end_of_read()
    assert connection.take() == b"" and session.window.in_flight == 0
    clock.advance(ACK_DELAY / 2)
    assert connection.take() == b""
    clock.advance(ACK_DELAY / 2)
    assert tagged(connection.take()) == [delivery(0, 2, 0, b"a")]
    assert (broker.stats.nacks, broker.timers.redeliveries) == (1, 1)


def test_a_plain_nack_sends_the_oldest_delivery_again(broker: Broker, clock: Clock) -> None:
    """The seed's nack (no id) gives back the delivery in flight; it comes
    again after the ack delay as the same untagged frame."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker, extended=False)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    session.nacked()
    clock.advance(ACK_DELAY)
    assert connection.take() == encode_delivery("orders", b"a")
    assert connection.refusals == []


def test_an_unanswered_delivery_times_out_and_goes_again(broker: Broker, clock: Clock) -> None:
    """A delivery not acked within the ack timeout keeps its slot for the
    ack delay, then goes again (attempt 2, same id); an ack of it then
    frees the window."""
    broker.registry.publish("orders", [b"a", b"b"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    clock.advance(ACK_TIMEOUT)
    assert connection.take() == b"" and broker.timers.ack_timeouts == 1
    assert session.window.in_flight == 1  # held: b does not take its place
    clock.advance(ACK_DELAY / 2)
    assert connection.take() == b""
    clock.advance(ACK_DELAY / 2)
    assert tagged(connection.take()) == [delivery(0, 2, 0, b"a")]
    session.acked_ids([0])
    session.end_of_read()
    assert tagged(connection.take()) == [delivery(1, 1, 1, b"b")]


def test_unsubscribing_stops_the_deliveries_of_that_topic(broker: Broker) -> None:
    """Unsubscribe is answered Unsubscribed; later messages of the topic are
    not delivered, while another topic's still are."""
    broker.registry.publish("audit", [b"old"])
    session, connection = subscriber(broker, prefetch=10)
    session.subscribe_requested(["orders", "audit"], StartAt.CURRENT, 0)
    assert session.consumer.awaited == ["orders"]  # made by its first publish
    broker.registry.publish("orders", [b"a"])
    assert tagged(connection.take()) == [SUBSCRIBED_FRAME, delivery(0, 1, 0, b"a")]
    session.unsubscribe_requested(["orders"])
    assert connection.take() == UNSUBSCRIBED
    assert list(session.window.subscriptions) == ["audit"]
    broker.registry.publish("orders", [b"b"])
    broker.registry.publish("audit", [b"x"])
    assert tagged(connection.take()) == [("delivery", "audit", 1, 1, 1, b"x")]


def test_a_plain_ack_with_nothing_in_flight_is_refused(broker: Broker) -> None:
    """The seed's ack and nack name no delivery: with none in flight each is
    answered "nothing to acknowledge", and nothing is counted."""
    session, connection = subscriber(broker, extended=False)
    session.subscribe_requested(["orders"], StartAt.CURRENT, 0)
    connection.take()
    session.acked()
    session.nacked()
    assert connection.refusals == [(ERR_NOTHING_TO_ACK, None), (ERR_NOTHING_TO_ACK, None)]
    assert connection.take() == encode_error(ERR_NOTHING_TO_ACK) * 2
    assert (broker.stats.acks, broker.stats.nacks) == (0, 0)


def test_an_ack_of_an_unknown_id_is_ignored_without_an_error(broker: Broker) -> None:
    """An ack by id of a delivery not in flight (a late ack of one given up
    on, DeliveryWindow.ack_many) is ignored: no Error, and the delivery in
    flight stays in flight."""
    broker.registry.publish("orders", [b"a", b"b"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    session.acked_ids([7])
    session.end_of_read()
    assert connection.take() == b"" and connection.refusals == []
    assert session.window.in_flight == 1


def test_a_nack_of_an_unknown_id_is_ignored(broker: Broker, clock: Clock) -> None:
    """A nack by id of a delivery not in flight gives back nothing: no
    Error, and nothing is sent again after the ack delay."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    session.nacked_id(7)
    session.end_of_read()
    clock.advance(ACK_DELAY)
    assert connection.take() == b"" and connection.refusals == []
    assert session.window.in_flight == 1 and broker.timers.redeliveries == 0


def test_a_subscribe_waiting_for_too_many_absent_topics_is_refused(broker: Broker) -> None:
    """More absent topics than a consumer may wait for: the refusal's Error,
    with the detail for the log, no Subscribed, nothing subscribed, the
    connection kept."""
    session, connection = subscriber(broker)
    names = [f"absent.{n}" for n in range(MAX_AWAITED_TOPICS + 1)]
    session.subscribe_requested(names, StartAt.CURRENT, 0)
    assert connection.refusals == [
        (
            ERR_TOO_MANY_TOPICS,
            f"{ERR_TOO_MANY_TOPICS}: would wait for {MAX_AWAITED_TOPICS + 1} topics that do "
            f"not exist, {MAX_AWAITED_TOPICS} at most",
        )
    ]
    assert connection.take() == encode_error(ERR_TOO_MANY_TOPICS)
    assert session.consumer.awaited == [] and connection.closed == []


def test_a_subscribe_naming_a_forbidden_topic_is_refused_whole(broker: Broker) -> None:
    """A user who may read orders but not payroll: a subscribe naming both
    is refused with the permission Error and subscribes to neither; the
    connection stays, and a later allowed subscribe works."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker, user=reader("orders"))
    session.subscribe_requested(["orders", "payroll"], StartAt.BEGINNING, 0)
    denied = "permission denied: subscribe to 'payroll'"
    assert connection.refusals == [(denied, None)]
    assert connection.take() == encode_error(denied)
    assert session.window.subscriptions == {} and connection.closed == []
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert tagged(connection.take()) == [SUBSCRIBED_FRAME, delivery(0, 1, 0, b"a")]


def test_a_subscriber_whose_user_may_read_nothing_is_refused_and_closed(broker: Broker) -> None:
    """A user with no subscribe right: the refusal, then close()."""
    session, connection = subscriber(broker, user=reader())
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    assert connection.refusals == [("permission denied: subscribe to 'orders'", None)]
    assert connection.closed == [None]


def test_a_withdrawn_right_ends_the_subscription_with_an_error(broker: Broker) -> None:
    """permissions_changed (a reloaded users file): a subscription the user
    may no longer read ends, the client is told by an unsolicited Error,
    and its later messages are not delivered."""
    broker.registry.get("orders")
    broker.registry.get("audit")
    session, connection = subscriber(broker, prefetch=10, user=reader("orders", "audit"))
    session.subscribe_requested(["orders", "audit"], StartAt.CURRENT, 0)
    connection.take()
    session.permissions_changed(reader("audit"))
    assert tagged(connection.take()) == [("error", "permission withdrawn: orders")]
    broker.registry.publish("orders", [b"a"])
    assert connection.take() == b"" and list(session.window.subscriptions) == ["audit"]


def test_a_full_output_pauses_deliveries_until_it_drains(broker: Broker, clock: Clock) -> None:
    """output_full: messages published meanwhile wait in the log, and the
    slow consumer's timer starts; output_drained sends them, in order, and
    stops that timer."""
    session, connection = subscriber(broker, prefetch=10)
    session.subscribe_requested(["orders"], StartAt.CURRENT, 0)
    connection.take()
    assert clock.getDelayedCalls() == []
    session.output_full()
    broker.registry.publish("orders", [b"a", b"b"])
    assert connection.take() == b"" and session.window.in_flight == 0
    [slow_consumer] = clock.getDelayedCalls()
    assert slow_consumer.getTime() == broker.settings.slow_consumer_timeout
    session.output_drained()
    assert tagged(connection.take()) == [delivery(0, 1, 0, b"a"), delivery(1, 1, 1, b"b")]
    assert not slow_consumer.active()


class FillingTransport(StringTransport):
    """A transport that calls `full` from inside the write that first puts
    more than `limit` bytes in it, as a TCP transport tells its producer
    once its buffer passes its size."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.full: Callable[[], None] = lambda: None
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        was = len(self.value())
        super().write(data)
        self.writes.append(len(data))
        if was <= self.limit < len(self.value()):
            self.full()


@pytest.mark.parametrize(
    ("count", "size"),
    [(5, 100_000), (600, 1_000)],
    ids=["one by one", "in runs"],
)
def test_a_pump_stops_between_chunks_once_the_output_is_full(
    broker: Broker, count: int, size: int
) -> None:
    """Deliveries of one pump are written in chunks of about FLUSH_BYTES
    (large messages one by one, small ones in runs); output that fills on
    the first chunk pauses the pump before the next, and the rest goes, in
    order, once it drains."""
    broker.registry.publish(
        "orders", [(n % 251 + 1).to_bytes(1, "big") * size for n in range(count)]
    )
    transport = FillingTransport(limit=FLUSH_BYTES)
    connection = RecordingConnection(broker, transport)
    session = SubscriberSession(connection, True, 1024)
    transport.full = session.output_full
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    first = connection.take()
    assert first[: len(SUBSCRIBED)] == SUBSCRIBED and transport.writes[1] >= FLUSH_BYTES
    sent = tagged(first[len(SUBSCRIBED) :])
    assert 0 < len(sent) < count and session.window.in_flight == len(sent)
    session.output_drained()
    sent += tagged(connection.take())
    assert [(frame[2], frame[4]) for frame in sent] == [(n, n) for n in range(count)]
    assert [frame[5] for frame in sent] == stored(broker, "orders")


def test_a_read_of_acks_by_id_fills_the_window_once_it_is_decoded(broker: Broker) -> None:
    """Through a real decoder, with extensions agreed: a subscribe, an ack
    by id and the seed's id-less ack (an unknown action once acks carry
    ids) in one read; the slot the ack freed is filled at its end."""
    broker.registry.publish("orders", [b"a", b"b"])
    session, connection = subscriber(broker)
    decoded_read(
        session,
        encode_subscribe(["orders"], StartAt.BEGINNING) + encode_ack_id(0) + encode_u16(ACK),
        extended=True,
    )
    assert tagged(connection.take()) == [
        SUBSCRIBED_FRAME,
        delivery(0, 1, 0, b"a"),
        delivery(1, 1, 1, b"b"),
    ]
    assert connection.unknown == [ACK] and broker.stats.acks == 1


def test_a_redelivery_due_while_the_output_is_full_waits_for_it_to_drain(
    broker: Broker, clock: Clock
) -> None:
    """A nacked message whose ack delay passes while the output is full is
    not written into it; it goes on output_drained."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    session.nacked_id(0)
    session.end_of_read()
    session.output_full()
    clock.advance(ACK_DELAY)
    assert connection.take() == b""
    session.output_drained()
    assert tagged(connection.take()) == [delivery(0, 2, 0, b"a")]


def test_a_closed_subscriber_gets_nothing_more_and_leaves_the_broker(broker: Broker) -> None:
    """close(): the consumer leaves the broker's consumers, its window is
    emptied, and later messages are not written."""
    broker.registry.publish("orders", [b"a"])
    session, connection = subscriber(broker)
    session.subscribe_requested(["orders"], StartAt.BEGINNING, 0)
    connection.take()
    assert session.consumer in broker.consumers
    session.close()
    assert session.consumer not in broker.consumers
    assert session.window.in_flight == 0 and session.window.subscriptions == {}
    broker.registry.publish("orders", [b"b"])
    assert connection.take() == b""
