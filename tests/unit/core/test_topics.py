"""The topic registry and its topics alone, with memory logs and a fake
clock: the limit on topics, topics reopened at start, subscriptions that
wait for a topic to exist, topics another node made, and waiters woken by
appends."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from broker.core.topics import TooManyTopics, Topic, TopicRegistry
from broker.log import MemoryLog


class Told:
    """A pattern holder or awaited subscription: the topics it was told of."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def topic_created(self, topic: Topic) -> None:
        self.topics.append(topic.name)


class Woken:
    def __init__(self) -> None:
        self.times = 0

    def log_grew(self) -> None:
        self.times += 1


def registry(max_topics: int = 3, shared: tuple[str, ...] = ()) -> TopicRegistry:
    clock = Clock()
    return TopicRegistry(
        lambda name: MemoryLog(clock=clock.seconds),
        max_topics,
        clock=clock.seconds,
        shared_names=lambda: shared,
    )


def test_topics_are_made_on_first_use_up_to_the_limit():
    topics = registry(max_topics=2)
    assert topics.get("a") is topics.get("a")
    topics.get("b")
    with pytest.raises(TooManyTopics):
        topics.get("c")
    assert sorted(t.name for t in topics) == ["a", "b"]


def test_several_topics_are_made_all_or_none():
    topics = registry(max_topics=3)
    topics.get("a")
    with pytest.raises(TooManyTopics):
        topics.get_all(["a", "b", "c", "d"])
    assert len(topics) == 1  # not b and c either
    assert [t.name for t in topics.get_all(["a", "b", "b", "c"])] == ["a", "b", "b", "c"]


def test_topics_a_store_holds_are_reopened_whatever_the_limit():
    topics = registry(max_topics=1)
    topics.reopen(["x", "y", "z"])
    topics.reopen(["x"])  # once only
    assert len(topics) == 3 and "y" in topics


def test_a_subscription_waiting_for_a_topic_is_told_once_when_a_publish_makes_it():
    topics = registry()
    waiting, gone = Told(), Told()
    topics.await_topic("later", waiting)
    topics.await_topic("later", gone)
    topics.stop_awaiting("later", gone)
    assert topics.awaited == 1 and len(topics) == 0  # waiting costs no topic
    topics.publish("later", [b"first"])
    topics.publish("later", [b"second"])
    assert waiting.topics == ["later"] and gone.topics == []
    assert topics.awaited == 0


def test_a_waiter_is_told_before_the_publish_that_made_the_topic_is_appended():
    """So that a subscription waiting for it takes the first message too."""
    topics = registry()
    offsets: list[int] = []

    class Reader(Told):
        def topic_created(self, topic: Topic) -> None:
            offsets.append(topic.log.next_offset)

    topics.await_topic("t", Reader())
    assert topics.publish("t", [b"first"]) == 0
    assert offsets == [0]


def test_topics_another_node_made_exist_and_open_when_waited_for():
    topics = registry(shared=("theirs", "unwanted"))
    assert topics.exists("theirs") and not topics.exists("nobodys")
    waiting = Told()
    topics.await_topic("theirs", waiting)
    topics.discover("theirs")
    topics.discover("unwanted")  # no one waits for it, no pattern matches it
    assert waiting.topics == ["theirs"]
    assert "theirs" in topics and "unwanted" not in topics


def test_a_pattern_is_told_of_each_new_topic_it_matches():
    topics = registry(max_topics=5)
    orders = Told()
    topics.patterns.add("orders.*", orders)
    for name in ("orders.eu", "orders.eu.paris", "audit", "orders.us"):
        topics.get(name)
    assert orders.topics == ["orders.eu", "orders.us"]


def test_an_append_wakes_each_waiter_once():
    topic = Topic("t", MemoryLog(), Clock().seconds)
    first, second = Woken(), Woken()
    topic.wait(first)
    topic.wait(second)
    topic.stop_waiting(second)
    topic.append([b"a"])
    topic.append([b"b"])  # first was woken already: it waits again if it wants
    assert (first.times, second.times) == (1, 0)


def test_a_topics_rate_counts_the_recent_appends():
    clock = Clock()
    topic = Topic("t", MemoryLog(clock=clock.seconds), clock.seconds)
    topic.append([b"x"] * 10)
    clock.advance(5)
    topic.append([b"x"] * 10)
    assert topic.rate(seconds=10) == 2.0  # 20 messages in the last 10 s
    clock.advance(20)
    assert topic.rate(seconds=10) == 0.0
    assert topic.appended_at(15) == 5.0
