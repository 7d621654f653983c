"""Consumer groups (competing consumers): subscribers of a topic in one group
share one cursor, so each message goes to one member.

A group reads its topic once, through one cursor; each member is a
subscription in its connection's window that takes its next message from
the group, so a member takes work as its window has room, and faster members
take more. When the group's cursor sees new messages it wakes the members in
turn, starting with a different one each time. A member that nacks, or lets
a delivery time out, has it again after the ack delay (as any subscriber);
a member that leaves or disconnects gives back what it had not acked, and
after the ack delay the group hands it to whichever member has room, its
delivery count kept, so that max deliveries and dead letters apply to the
group. First deliveries leave in offset order; redeliveries may overtake.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IReactorTime

from broker.delivery import Delivery, DeliveryWindow, Subscription
from broker.topics import Topic
from broker.wire import StartAt

if TYPE_CHECKING:
    pass

GROUP_PREFIX = "$share/"


def parse_group_name(name: str) -> tuple[str, str] | None:
    """(group, topic) of a `$share/GROUP/TOPIC` name, else None."""
    if not name.startswith(GROUP_PREFIX):
        return None
    group, slash, topic = name[len(GROUP_PREFIX) :].partition("/")
    if not slash:
        return None
    return group, topic


def group_name_problem(group: str) -> str | None:
    """Why a group name cannot be used, or None."""
    if not 1 <= len(group) <= 64 or not all(c.isalnum() or c in "_.-" for c in group):
        return "a group name is 1-64 letters, digits, '_', '.' or '-'"
    return None


class GroupMember(Subscription):
    """A member's subscription: its window takes from the group."""

    __slots__ = ("group",)

    def __init__(self, group: ConsumerGroup, window: DeliveryWindow) -> None:
        super().__init__(group.topic, window, group.reader.position)
        self.group = group

    def take(self) -> tuple[int, bytes] | tuple[int, bytes, int] | None:
        item = self.group.take()
        self.position = self.group.reader.position
        return item

    def give_back(self, delivery: Delivery) -> None:
        """A delivery this member will not answer: the group hands it on."""
        self.group.give_back(delivery)

    def close(self) -> None:
        if self.active:
            self.active = False
            self.group.leave(self)


class ConsumerGroup:
    """One group on one topic: its cursor, its members, what it must redo."""

    def __init__(
        self,
        name: str,
        topic: Topic,
        position: int,
        clock: IReactorTime,
        ack_delay: float,
        forget: Callable[[ConsumerGroup], None],
    ) -> None:
        self.name = name
        self.topic = topic
        self._clock = clock
        self._ack_delay = ack_delay
        self._forget = forget
        # The group's cursor; it wakes the group (through `_wake`) as a
        # window would be woken when its topic grows.
        self.reader = Subscription(topic, cast(DeliveryWindow, self), position)
        self.members: list[GroupMember] = []
        self.redo: deque[tuple[int, bytes, int]] = deque()
        self._scheduled = 0  # give-backs waiting for the ack delay
        self._turn = 0

    def join(self, window: DeliveryWindow) -> GroupMember:
        member = GroupMember(self, window)
        self.members.append(member)
        return member

    def leave(self, member: GroupMember) -> None:
        if member in self.members:
            self.members.remove(member)
        self._forget_if_idle()

    def take(self) -> tuple[int, bytes] | tuple[int, bytes, int] | None:
        if self.redo:
            return self.redo.popleft()
        return self.reader.take()

    def _wake(self, reader: Subscription) -> None:
        """The group's cursor has messages: wake the members, in turn."""
        self.wake_members()

    def wake_members(self) -> None:
        members = list(self.members)
        if not members:
            return
        first = self._turn % len(members)
        self._turn += 1
        for member in members[first:] + members[:first]:
            member.window._wake(member)

    def give_back(self, delivery: Delivery) -> None:
        """Hand `delivery` to a member again after the ack delay."""
        self._scheduled += 1
        item = (delivery.offset, delivery.payload, delivery.attempts)
        self._clock.callLater(self._ack_delay, self._redo, item)

    def _redo(self, item: tuple[int, bytes, int]) -> None:
        self._scheduled -= 1
        self.redo.append(item)
        self.wake_members()
        self._forget_if_idle()

    def _forget_if_idle(self) -> None:
        if not self.members and not self.redo and not self._scheduled:
            self.reader.close()
            self._forget(self)


class GroupRegistry:
    """The groups of a broker, by topic and name."""

    def __init__(self, clock: IReactorTime, ack_delay: float) -> None:
        self._clock = clock
        self._ack_delay = ack_delay
        self._groups: dict[tuple[str, str], ConsumerGroup] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, topic: Topic, name: str, start: StartAt, offset: int = 0) -> ConsumerGroup:
        """The group `name` of `topic`; a new one starts where `start` says."""
        key = (topic.name, name)
        group = self._groups.get(key)
        if group is None:
            log_ = topic.log
            if start == StartAt.BEGINNING:
                position = log_.first_offset
            elif start == StartAt.CURRENT:
                position = log_.next_offset
            else:
                position = min(max(offset, log_.first_offset), log_.next_offset)
            group = self._groups[key] = ConsumerGroup(
                name, topic, position, self._clock, self._ack_delay, self._forget
            )
        return group

    def _forget(self, group: ConsumerGroup) -> None:
        self._groups.pop((group.topic.name, group.name), None)
