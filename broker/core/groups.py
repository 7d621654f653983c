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
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from broker.core.delivery import Delivery, DeliveryWindow, Subscription, start_position
from broker.core.topics import Topic
from broker.log.interface import ISharedGroupLog
from broker.log.positions import Position, PositionStore
from broker.wire import StartAt

log = Logger()


class GroupMember(Subscription):
    """A member's subscription: its window takes from the group."""

    __slots__ = ("group",)

    def __init__(self, group: ConsumerGroup, window: DeliveryWindow) -> None:
        super().__init__(group.topic, window, group.reader.position)
        self.group = group
        self.takes_runs = False  # it takes from its group, one at a time
        self.give_back = group.give_back  # what it will not answer goes on
        self.on_done = group.done

    def take(self) -> tuple[int, bytes] | tuple[int, bytes, int] | None:
        item = self.group.take()
        self.position = self.group.reader.position
        return item

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
        start_at: int,
        clock: IReactorTime,
        ack_delay: float,
        forget: Callable[[ConsumerGroup], None],
        position: Position | None = None,
        positions: PositionStore | None = None,
        shared: Callable[[ConsumerGroup], Any] | None = None,
        durable: bool = False,
    ) -> None:
        self.name = name
        self.durable = durable or position is not None
        self.position = position
        """A durable consumer's position (None: the group is not durable)."""
        self._positions = positions
        self.topic = topic
        self._clock = clock
        self._ack_delay = ack_delay
        self._forget = forget
        # The group's cursor; it wakes the group (through `_wake`) as a
        # window would be woken when its topic grows. A shared store keeps it
        # itself, shared with the group's members on other nodes.
        self._shared = shared is not None
        self.reader: Any = (
            shared(self) if shared is not None else Subscription(topic, self, start_at)
        )
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
        position = self.position
        while True:
            item = self.reader.take()
            if item is None or position is None:
                return item
            offset = item[0]
            if position.low < self.topic.log.first_offset:
                self._skipped_ahead(position)
            if offset in position.acked:
                continue  # acked before the consumer (or the broker) restarted
            if offset < position.delivered:
                return (offset, item[1], 1)  # handed out before: a redelivery
            if offset > position.delivered:
                # The reader skipped what is not there (compaction's gaps, a
                # corrupt record): done with, or the position waits for ever.
                for skipped in range(max(position.delivered, position.low), offset):
                    position.done(skipped)
            position.delivered = offset + 1
            return item

    def _skipped_ahead(self, position: Position) -> None:
        """A limit of bytes or age removed messages this durable consumer had
        not acked: it moves past them, and says so."""
        first = self.topic.log.first_offset
        log.warn(
            "durable consumer {name!r} of {topic!r} skips ahead to {first}: a retention "
            "limit removed {lost} message(s) it had not acked",
            name=self.name,
            topic=self.topic.name,
            first=first,
            lost=first - position.low,
        )
        position.acked = {offset for offset in position.acked if offset >= first}
        position.low = first
        while position.low in position.acked:
            position.acked.remove(position.low)
            position.low += 1
        if self._positions is not None:
            self._positions.put(self.topic.name, self.name, position)

    def done(self, delivery: Delivery) -> None:
        """A member acked `delivery`, or it was given up on."""
        if self._shared:
            self.reader.done(delivery.offset)
            return
        position = self.position
        if position is not None and self._positions is not None:
            position.done(delivery.offset)
            position.touched = self._clock.seconds()
            self._positions.put(self.topic.name, self.name, position)

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


def shared_group_name(name: str, durable: bool) -> str:
    """What a store shared by nodes calls group `name` ($durable or $share)."""
    return f"{'durable' if durable else 'share'}:{name}"


def parse_shared_group_name(group: str) -> tuple[str, bool] | None:
    """(name, durable) of a shared store's group name; None if not ours."""
    kind, mark, name = group.partition(":")
    if not mark or kind not in ("durable", "share"):
        return None
    return name, kind == "durable"


class GroupRegistry:
    """The groups of a broker, by topic, name and durability; and the
    positions of its durable consumers."""

    def __init__(
        self, clock: IReactorTime, ack_delay: float, positions: PositionStore | None = None
    ) -> None:
        self._clock = clock
        self._ack_delay = ack_delay
        self.positions = positions if positions is not None else PositionStore()
        self._groups: dict[tuple[str, str, bool], ConsumerGroup] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def of_topic(self, topic: str) -> list[ConsumerGroup]:
        """The groups of `topic` held here (with members, or work to redo)."""
        return [group for (name, _, _), group in self._groups.items() if name == topic]

    def get(
        self, topic: Topic, name: str, start: StartAt, offset: int = 0, durable: bool = False
    ) -> ConsumerGroup:
        """The group `name` of `topic`; a new one starts where `start` says,
        a durable one where its kept position says, if it has one."""
        key = (topic.name, name, durable)
        group = self._groups.get(key)
        if group is not None:
            return group
        if ISharedGroupLog.providedBy(topic.log):
            shared_cursor = topic.log.group_cursor
            # The store keeps the group (and a durable consumer's place) for
            # every node: no position is kept here.
            where = {StartAt.BEGINNING: "beginning", StartAt.CURRENT: "current"}.get(start, "from")
            kept_as = shared_group_name(name, durable)

            def cursor(group: ConsumerGroup) -> Any:
                return shared_cursor(
                    topic, kept_as, (where, offset), group.wake_members, self._clock
                )

            group = self._groups[key] = ConsumerGroup(
                name,
                topic,
                0,
                self._clock,
                self._ack_delay,
                self._forget,
                shared=cursor,
                durable=durable,
            )
            return group
        at = start_position(topic, start, offset)
        position = None
        if durable:
            position = self.positions.get(topic.name, name)
            if position is None:
                position = Position(at, delivered=at, touched=self._clock.seconds())
                self.positions.put(topic.name, name, position)
                # Retention spares it from now on, not from its next pass
                # (a topic created by its first publish has had none).
                keep_from = topic.log.keep_from
                topic.log.keep_from = at if keep_from is None else min(keep_from, at)
            # What retention removed meanwhile is skipped (and said) at the
            # first take, as for a group that lives through it.
            at = position.low
        group = self._groups[key] = ConsumerGroup(
            name,
            topic,
            at,
            self._clock,
            self._ack_delay,
            self._forget,
            position,
            self.positions if durable else None,
        )
        return group

    def floors(self) -> dict[str, int]:
        """Per topic, the lowest offset a durable consumer has not acked."""
        floors: dict[str, int] = {}
        for (topic, _), position in self.positions.positions.items():
            floors[topic] = min(floors.get(topic, position.low), position.low)
        return floors

    def drop(self, topic: str, name: str, durable: bool) -> None:
        """Forget a group no member reads (an operator reset or deleted its
        durable consumer): what it had to redo is its position's to say."""
        group = self._groups.get((topic, name, durable))
        if group is not None and not group.members:
            group.reader.close()
            self._forget(group)

    def _forget(self, group: ConsumerGroup) -> None:
        key = (group.topic.name, group.name, group.durable)
        if self._groups.get(key) is group:  # not a newer group of that name
            del self._groups[key]
