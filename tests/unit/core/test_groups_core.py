"""Consumer groups and durable consumers alone, at the core: windows
joining a group of a topic, driven by a fake clock, with no connection."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core.delivery import Delivery, DeliverySettings, DeliveryTimers, DeliveryWindow
from broker.core.groups import GroupRegistry
from broker.core.topics import TopicRegistry
from broker.log.positions import PositionStore
from broker.wire import StartAt


class Member:
    """A window (with room for `capacity`) that records what it was sent."""

    def __init__(self, timers: DeliveryTimers, capacity: int = 1) -> None:
        self.sent: list[Delivery] = []
        self.window = DeliveryWindow(timers, self.sent.append, lambda d, r: None, capacity)

    @property
    def payloads(self) -> list[bytes]:
        return [delivery.payload for delivery in self.sent]

    def ack_sent(self) -> None:
        """Ack what was sent so far (not what these acks make room for)."""
        for delivery in list(self.sent):
            self.window.ack(delivery.id)


def world(ack_delay: float = 1.0) -> tuple[Clock, TopicRegistry, GroupRegistry, DeliveryTimers]:
    clock = Clock()
    timers = DeliveryTimers(clock, DeliverySettings(ack_delay=ack_delay))
    return clock, TopicRegistry(clock=clock.seconds), GroupRegistry(clock, ack_delay), timers


def test_members_of_one_group_share_its_messages_each_once():
    _, topics, groups, timers = world()
    topic = topics.get("jobs")
    members = [Member(timers, capacity=2) for _ in range(3)]
    for member in members:
        member.window.join_group(groups.get(topic, "workers", StartAt.BEGINNING))
    topics.publish("jobs", [b"%d" % n for n in range(6)])
    shares = [member.payloads for member in members]
    assert sorted(payload for share in shares for payload in share) == [b"%d" % n for n in range(6)]
    assert all(len(share) == 2 for share in shares)  # as their windows had room
    assert len(groups) == 1


def test_two_groups_of_one_topic_each_see_every_message():
    _, topics, groups, timers = world()
    topic = topics.get("jobs")
    billing, audit = Member(timers, 8), Member(timers, 8)
    billing.window.join_group(groups.get(topic, "billing", StartAt.BEGINNING))
    audit.window.join_group(groups.get(topic, "audit", StartAt.BEGINNING))
    topics.publish("jobs", [b"a", b"b"])
    assert billing.payloads == audit.payloads == [b"a", b"b"]


def test_what_a_member_leaves_unacked_goes_to_another_after_the_ack_delay():
    clock, topics, groups, timers = world(ack_delay=2.0)
    topic = topics.get("jobs")
    leaving, staying = Member(timers, 4), Member(timers, 4)
    group = groups.get(topic, "workers", StartAt.BEGINNING)
    leaving.window.join_group(group)
    topics.publish("jobs", [b"a", b"b"])
    assert leaving.payloads == [b"a", b"b"]
    staying.window.join_group(group)
    leaving.window.unsubscribe("jobs")  # gives back both, unacked
    assert staying.payloads == []
    clock.advance(2.0)
    assert staying.payloads == [b"a", b"b"]
    assert [d.attempts for d in staying.sent] == [2, 2]  # its delivery count kept


def test_a_durable_consumer_resumes_at_its_first_unacked_message():
    _, topics, _, timers = world()
    positions = PositionStore()
    topic = topics.get("orders")
    topics.publish("orders", [b"0", b"1", b"2", b"3"])
    first_life = GroupRegistry(Clock(), 1.0, positions)
    before = Member(timers, 2)
    before.window.join_group(first_life.get(topic, "billing", StartAt.BEGINNING, durable=True))
    before.ack_sent()  # 0 and 1; 2 and 3 are sent next, and not acked
    before.window.close()
    again = GroupRegistry(Clock(), 1.0, positions)  # as after a restart
    after = Member(timers, 8)
    after.window.join_group(again.get(topic, "billing", StartAt.CURRENT, durable=True))
    assert after.payloads == [b"2", b"3"]  # its place, not Current
    assert positions.get("orders", "billing") is not None
