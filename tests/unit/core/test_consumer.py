"""One consumer in the core alone (broker.core.consumer): what it may
subscribe to, topics it waits for, groups, durables, withdrawn rights and
slow consumers, with a fake clock and an output that records what a door
would be asked to send. No frames, no connection."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.core.consumer import MAX_AWAITED_TOPICS, Consumer, SubscribeRefused
from broker.core.delivery import Delivery
from broker.security.permissions import Rules
from broker.security.users import User
from broker.wire import StartAt


class RecordingDoor:
    """A door as a Consumer sees it: it keeps what it is handed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.aborted = False

    def deliver(self, delivery: Delivery) -> None:
        self.events.append(("delivery", (delivery.topic.name, delivery.offset, delivery.payload)))

    def accepted(self) -> None:
        self.events.append(("subscribed", None))

    def flush(self) -> None:
        pass

    def notify(self, error: str) -> None:
        self.events.append(("error", error))

    def log_refusal(self, reason: str) -> None:
        self.events.append(("logged", reason))

    def abort(self) -> None:
        self.aborted = True

    @property
    def deliveries(self) -> list[object]:
        return [what for kind, what in self.events if kind == "delivery"]


def consumer_of(
    broker: Broker, user: User | None = None, prefetch: int = 10, patterns: bool = True
) -> tuple[Consumer, RecordingDoor]:
    door = RecordingDoor()
    consumer = Consumer(
        broker, door, "test", door.deliver, prefetch, user=user, patterns=patterns, groups=True
    )
    return consumer, door


def reader(*allowed: str, name: str = "ann", **more: object) -> User:
    return User(name, subscribe=Rules.of(list(allowed), []), **more)  # type: ignore[arg-type]


def test_the_door_says_subscribed_before_the_first_delivery_it_brings():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("orders", [b"a", b"b"])
    consumer, door = consumer_of(broker)
    assert consumer.subscribe(["orders"], StartAt.BEGINNING, 0, door.accepted) is None
    assert door.events == [
        ("subscribed", None),
        ("delivery", ("orders", 0, b"a")),
        ("delivery", ("orders", 1, b"b")),
    ]
    assert consumer.ack() and consumer.ack() and not consumer.ack()
    assert broker.stats.acks == 2


def test_a_topic_that_does_not_exist_is_waited_for_and_costs_no_topic():
    broker = Broker(BrokerSettings(), Clock())
    consumer, door = consumer_of(broker)
    consumer.subscribe(["later"], StartAt.CURRENT, 0, door.accepted)
    assert "later" not in broker.registry and consumer.awaited == ["later"]
    broker.registry.publish("later", [b"first"])
    # Current, asked before the topic existed, means from its first message.
    assert door.deliveries == [("later", 0, b"first")]
    assert consumer.awaited == []


def test_a_consumer_waits_for_a_bounded_number_of_absent_topics():
    broker = Broker(BrokerSettings(), Clock())
    consumer, door = consumer_of(broker)
    names = [f"absent.{n}" for n in range(MAX_AWAITED_TOPICS + 1)]
    with pytest.raises(SubscribeRefused) as refused:
        consumer.subscribe(names, StartAt.CURRENT, 0, door.accepted)
    assert refused.value.reason == "too many topics"
    assert consumer.awaited == [] and door.events == []


def test_a_subscribe_naming_one_forbidden_topic_is_refused_whole():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("orders", [b"a"])
    consumer, door = consumer_of(broker, reader("orders"))
    with pytest.raises(SubscribeRefused) as refused:
        consumer.subscribe(["orders", "payroll"], StartAt.BEGINNING, 0, door.accepted)
    assert refused.value.reason == "permission denied: subscribe to 'payroll'"
    assert not refused.value.close  # it may read something: the connection stays
    assert door.events == [] and consumer.window.subscriptions == {}


def test_a_user_who_may_read_nothing_is_told_to_go():
    broker = Broker(BrokerSettings(), Clock())
    consumer, door = consumer_of(broker, reader())
    with pytest.raises(SubscribeRefused) as refused:
        consumer.subscribe(["orders"], StartAt.BEGINNING, 0, door.accepted)
    assert refused.value.close


def test_a_pattern_does_not_start_at_an_offset():
    broker = Broker(BrokerSettings(), Clock())
    consumer, door = consumer_of(broker)
    with pytest.raises(SubscribeRefused) as refused:
        consumer.subscribe(["orders.*"], StartAt.FROM, 3, door.accepted)
    assert refused.value.reason == "a pattern starts at Beginning or Current, not at an offset"


def test_a_withdrawn_right_ends_the_subscriptions_it_allowed_and_says_so():
    broker = Broker(BrokerSettings(), Clock())
    for topic in ("orders", "audit"):
        broker.registry.publish(topic, [b"x"])
    consumer, door = consumer_of(broker, reader("orders", "audit", "soon"))
    consumer.subscribe(["orders", "audit", "soon"], StartAt.CURRENT, 0, door.accepted)
    withdrawn = consumer.permissions_changed(reader("orders"))
    assert sorted(withdrawn) == ["audit", "soon"]
    assert list(consumer.window.subscriptions) == ["orders"] and consumer.awaited == []
    assert ("error", "permission withdrawn: audit") in door.events
    assert ("error", "permission withdrawn: soon") in door.events


def test_group_names_are_the_users_own_unless_shared():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("jobs", [b"a", b"b"])
    ann, ann_door = consumer_of(broker, reader("jobs"), prefetch=1)
    bob, bob_door = consumer_of(broker, reader("jobs", name="bob"), prefetch=1)
    carol, carol_door = consumer_of(broker, reader("jobs", name="carol", groups={"workers"}))
    dave, dave_door = consumer_of(broker, reader("jobs", name="dave", groups={"workers"}))
    for consumer, door in ((ann, ann_door), (bob, bob_door), (carol, carol_door)):
        consumer.subscribe(["$share/workers/jobs"], StartAt.BEGINNING, 0, door.accepted)
    # Ann's and Bob's "workers" are two groups: each gets the first message.
    assert ann_door.deliveries == bob_door.deliveries == [("jobs", 0, b"a")]
    # Carol and Dave share the name: one group, each message to one of them.
    assert carol_door.deliveries == [("jobs", 0, b"a"), ("jobs", 1, b"b")]
    dave.subscribe(["$share/workers/jobs"], StartAt.BEGINNING, 0, dave_door.accepted)
    assert dave_door.deliveries == []


def test_a_user_keeps_no_more_durables_than_its_bound():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("jobs", [b"a"])
    broker.registry.publish("audit", [b"b"])
    consumer, door = consumer_of(broker, reader("jobs", "audit", max_durables=1))
    with pytest.raises(SubscribeRefused) as refused:
        consumer.subscribe(
            ["$durable/a/jobs", "$durable/b/audit"], StartAt.BEGINNING, 0, door.accepted
        )
    assert refused.value.reason == (
        "too many durable consumers: user ann may keep 1 durable position(s)"
    )
    consumer.subscribe(["$durable/a/jobs"], StartAt.BEGINNING, 0, door.accepted)
    consumer.keep_positions()
    assert door.deliveries == [("jobs", 0, b"a")]


def test_a_slow_consumer_is_cut_off_when_the_broker_is_told_to():
    clock = Clock()
    settings = BrokerSettings(slow_consumer_timeout=5.0, disconnect_slow_consumers=True)
    broker = Broker(settings, clock)
    consumer, door = consumer_of(broker)
    consumer.output_full()
    clock.advance(4.9)
    consumer.output_drained()  # read in time: forgiven
    clock.advance(1)
    assert not door.aborted
    consumer.output_full()
    clock.advance(5.0)
    assert door.aborted


def test_a_closed_consumer_stops_waiting_and_gives_back_its_deliveries():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("orders", [b"a", b"b"])
    consumer, door = consumer_of(broker, prefetch=1)
    consumer.subscribe(["orders", "later"], StartAt.BEGINNING, 0, door.accepted)
    assert consumer.window.in_flight == 1
    consumer.close()
    assert broker.registry.awaited == 0
    broker.registry.publish("later", [b"c"])
    assert door.deliveries == [("orders", 0, b"a")]  # nothing after its close
    other, other_door = consumer_of(broker)
    other.subscribe(["orders"], StartAt.BEGINNING, 0, other_door.accepted)
    assert other_door.deliveries == [("orders", 0, b"a"), ("orders", 1, b"b")]
