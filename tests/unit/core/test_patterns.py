"""One subscriber's pattern subscriptions alone (broker.core.patterns):
a window, a registry and a fake clock, no connection."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core.dead_letters import DeadLetterPolicy
from broker.core.delivery import Delivery, DeliverySettings, DeliveryTimers, DeliveryWindow
from broker.core.patterns import PatternSubscriptions
from broker.core.topics import TopicRegistry
from broker.wire import StartAt


def setup(may_read=lambda name: True):
    clock = Clock()
    registry = TopicRegistry(clock=clock.seconds)
    sent: list[Delivery] = []
    window = DeliveryWindow(
        DeliveryTimers(clock, DeliverySettings()), sent.append, lambda d, r: None, capacity=64
    )
    patterns = PatternSubscriptions(registry, window, DeadLetterPolicy(), may_read)
    return registry, window, patterns, sent


def test_a_pattern_takes_the_topics_that_exist_and_those_made_later():
    registry, window, patterns, sent = setup()
    registry.publish("orders.eu", [b"old"])
    registry.publish("audit", [b"not matched"])
    assert patterns.add(["orders.*"], StartAt.BEGINNING) == 1
    registry.publish("orders.us", [b"new"])  # made later: from its start
    assert sorted(window.subscriptions) == ["orders.eu", "orders.us"]
    assert [(d.topic.name, d.payload) for d in sent] == [
        ("orders.eu", b"old"),
        ("orders.us", b"new"),
    ]


def test_removing_a_pattern_drops_only_the_topics_nothing_else_holds():
    registry, window, patterns, _ = setup()
    for name in ("orders.eu", "orders.us", "orders.uk"):
        registry.get(name)
    window.subscribe(registry.get("orders.eu"), StartAt.CURRENT)  # by name too,
    patterns.by_name.add("orders.eu")  # as a subscriber's session does
    patterns.add(["orders.*", "*.us"], StartAt.CURRENT)
    patterns.remove("orders.*")
    assert sorted(window.subscriptions) == ["orders.eu", "orders.us"]  # by name; by *.us
    patterns.remove("*.us")
    assert sorted(window.subscriptions) == ["orders.eu"]
    assert patterns.patterns == []


def test_a_pattern_takes_no_topic_its_user_may_not_read():
    registry, window, patterns, _ = setup(may_read=lambda name: name != "orders.secret")
    patterns.add(["orders.*"], StartAt.BEGINNING)
    registry.get("orders.secret")
    registry.get("orders.public")
    assert list(window.subscriptions) == ["orders.public"]


def test_closing_forgets_every_pattern_in_the_registry():
    registry, window, patterns, _ = setup()
    patterns.add(["a.*", "b.>"], StartAt.CURRENT)
    assert len(registry.patterns) == 2
    patterns.close()
    assert len(registry.patterns) == 0
    registry.get("a.x")
    assert window.subscriptions == {}
