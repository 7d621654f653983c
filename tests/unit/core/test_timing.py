"""Delays and expiry in a delivery window, driven by a fake clock: an
expired message is skipped (counted), a delayed one goes when due, delayed
ones in order of due time, and a held message costs no timer of its own."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core.delivery import Delivery, DeliverySettings, DeliveryTimers, DeliveryWindow
from broker.core.timing import any_timed, timing_of
from broker.core.topics import TopicRegistry
from broker.log import MemoryLog, Retention
from broker.wire import StartAt
from broker.wire.headers import encode_headers, with_headers


def message(data: bytes, **timing: float) -> bytes:
    names = {"not_before": "Not-Before", "expires": "Expires"}
    pairs = [(names[key], f"{value:.3f}") for key, value in timing.items()]
    return with_headers(data, encode_headers([("kind", "x"), *pairs]))


class Window:
    def __init__(self, capacity: int = 256, **settings) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = TopicRegistry(lambda name: MemoryLog(Retention(), self.clock.seconds))
        self.sent: list[Delivery] = []
        self.dropped: list[tuple[Delivery, str]] = []
        self.timers = DeliveryTimers(self.clock, DeliverySettings(**settings))
        self.window = DeliveryWindow(
            self.timers,
            self.sent.append,
            lambda delivery, reason: self.dropped.append((delivery, reason)),
            capacity=capacity,
        )

    def publish(self, *payloads: bytes) -> None:
        self.registry.publish("t", list(payloads))

    def subscribe(self) -> None:
        self.window.subscribe(self.registry.get("t"), StartAt.BEGINNING)

    def got(self) -> list[bytes]:
        return [bytes(delivery.payload) for delivery in self.sent]

    def ack_all(self) -> None:
        self.window.ack_many([delivery.id for delivery in self.sent])


def test_what_a_message_says_of_its_timing_is_read_from_its_headers():
    assert timing_of(b"plain") is None
    assert timing_of(with_headers(b"x", encode_headers([("a", "b")]))) is None
    assert timing_of(message(b"x", not_before=5)) == (5.0, float("inf"))
    assert timing_of(message(b"x", expires=7)) == (0.0, 7.0)
    garbled = with_headers(b"x", encode_headers([("expires", "soon")]))
    assert timing_of(garbled) is None  # not a number: ignored
    assert not any_timed([b"a", None, with_headers(b"x", encode_headers([("a", "b")]))])
    assert any_timed([b"a", message(b"x", expires=1)])


def test_an_expired_message_is_skipped_and_counted():
    w = Window()
    now = w.clock.seconds()
    w.publish(b"a", message(b"gone", expires=now - 1), message(b"fresh", expires=now + 60), b"b")
    w.subscribe()
    assert w.got() == [b"a", b"fresh", b"b"]
    assert w.timers.expired == 1
    assert w.dropped == []  # only counted, unless dead-lettered


def test_an_expired_message_can_go_to_dead_letters():
    w = Window(dead_letter_expired=True)
    w.publish(message(b"gone", expires=w.clock.seconds() - 1))
    w.subscribe()
    assert [(bytes(d.payload), reason) for d, reason in w.dropped] == [(b"gone", "expired")]


def test_delayed_messages_go_when_due_in_order_of_due_time_with_one_timer():
    w = Window()
    now = w.clock.seconds()
    w.publish(
        message(b"in 20 s", not_before=now + 20),
        b"now",
        message(b"in 10 s", not_before=now + 10),
        message(b"was due", not_before=now - 5),
    )
    w.subscribe()
    assert w.got() == [b"now", b"was due"]
    assert len(w.clock.getDelayedCalls()) <= 2  # the ack timeouts' and the delays' one
    w.ack_all()
    w.clock.advance(10)
    assert w.got()[2:] == [b"in 10 s"]
    w.ack_all()
    w.clock.advance(10)
    assert w.got()[2:] == [b"in 10 s", b"in 20 s"]
    assert [d.attempts for d in w.sent[2:]] == [1, 1]  # first deliveries
    assert w.timers.delayed == 2


def test_a_nacked_message_that_expires_before_its_redelivery_is_not_sent_again():
    w = Window(ack_delay=5)
    now = w.clock.seconds()
    w.publish(message(b"short-lived", expires=now + 3))
    w.subscribe()
    (delivery,) = w.sent
    w.window.nack(delivery.id)
    w.clock.advance(5)
    assert w.got() == [b"short-lived"]
    assert w.timers.expired == 1


def test_a_plain_subscriber_gets_delays_too():
    w = Window(capacity=1)
    now = w.clock.seconds()
    w.publish(message(b"later", not_before=now + 1), b"now")
    w.subscribe()
    assert w.got() == [b"now"]
    w.window.ack()
    w.clock.advance(1)
    assert w.got() == [b"now", b"later"]


def test_many_delayed_messages_cost_one_timer():
    w = Window()
    now = w.clock.seconds()
    w.publish(*[message(b"%d" % n, not_before=now + 1 + n % 100) for n in range(10_000)])
    w.subscribe()
    assert w.sent == [] and len(w.timers.later) == 10_000
    assert len(w.clock.getDelayedCalls()) == 1
    w.clock.advance(101)
    assert len(w.sent) == 256  # the window's capacity; the rest wait their turn


def test_a_dead_letter_keeps_the_headers_but_not_the_timing_nor_the_id():
    from broker.core.dead_letters import encode_dead_letter
    from broker.wire.headers import Headers, with_message_id

    original = with_message_id(message(b"gone", expires=5, not_before=1), "id-1")
    letter = encode_dead_letter(
        {"topic": "t", "offset": 3, "deliveries": 1, "reason": "expired"}, original
    )
    assert Headers.of(letter).pairs() == (
        ("kind", "x"),
        ("Dead-Letter-Reason", "expired"),
        ("Dead-Letter-Topic", "t"),
        ("Dead-Letter-Offset", "3"),
        ("Dead-Letter-Deliveries", "1"),
    )
