"""A subscriber's session: its subscriptions and window of deliveries, the
frames that carry them, and what to do when its output fills. With a users
file, a subscribe naming any topic the user may not read is refused whole
(and closes the connection if the user may read nothing at all), a reload
that withdraws a topic ends its subscription, reading a dead-letter topic
needs the right to read its parent (see broker.core.dead_letters), and group and
durable names are the user's own unless the file shares them (see
broker.users). A subscription to a topic that does not exist creates none:
it waits, costing no topic, until a publish creates it, and takes it from
its first message. With "patterns" agreed in Hello, names with `*` or `>`
tokens are patterns (see broker.server.patterns)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from broker.core.delivery import Delivery, DeliveryWindow, Subscription
from broker.core.topics import TooManyTopics, Topic
from broker.names import DURABLE_PREFIX, group_name_problem, parse_group_name
from broker.server.patterns import PatternSubscriptions
from broker.server.session import Session, cancel_call
from broker.subjects import PatternError, check_pattern, is_pattern
from broker.transport import direct_writer
from broker.wire import (
    ERR_DURABLE_NOT_JOINED,
    ERR_INVALID_GROUP,
    ERR_INVALID_PATTERN,
    ERR_NOTHING_TO_ACK,
    ERR_PATTERN_OFFSET,
    ERR_PERMISSION_DENIED,
    ERR_PERMISSION_WITHDRAWN,
    ERR_TOO_MANY_DURABLES,
    ERR_TOO_MANY_TOPICS,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    StartAt,
    encode_delivery_tail,
    encode_error,
    encode_first_deliveries,
    encode_u16,
    encode_u64,
    topic_name_problem,
    total_size,
)

if TYPE_CHECKING:
    from broker.permissions import Rules
    from broker.server.connection import Connection
    from broker.users import User

log = Logger()

# Deliveries of one pump are written in chunks of about this many bytes, so
# that a connection whose output is full stops the pump between chunks.
FLUSH_BYTES = 256 * 1024
# A connection adds one publish-to-delivery sample to the latency histogram
# at most this often (seconds).
LATENCY_SAMPLE_SECONDS = 0.01
# Topics that do not exist yet one connection may wait for: they cost the
# broker no topic, but memory, which stays bounded per connection.
MAX_AWAITED_TOPICS = 1000

_SUBSCRIBED = encode_u16(STATUS_SUBSCRIBED)
_UNSUBSCRIBED = encode_u16(STATUS_UNSUBSCRIBED)


class SubscriberSession(Session):
    """Subscriptions, deliveries in flight, acks; slow-consumer detection."""

    role = "subscriber"

    def __init__(
        self,
        protocol: Connection,
        extended: bool,
        prefetch: int,
        may_subscribe: Rules | None = None,
        patterns: bool = False,
        groups: bool = False,
        user: User | None = None,
    ) -> None:
        super().__init__(protocol)
        settings = self.broker.settings
        self._may_subscribe = may_subscribe
        """The user's subscribe rules; None: no users file, every topic allowed."""
        self._user = user
        """Who it is (whose group and durable names it uses); None: no users file."""
        self._awaited: dict[str, _AwaitedTopic] = {}
        """Its subscriptions to topics that do not exist yet, by topic."""
        self._halted = False
        self._transport = protocol.transport
        self._write_now = direct_writer(protocol.transport)
        self._outgoing: list[bytes] = []  # deliveries of one pump, written at once
        self._outgoing_bytes = 0
        self._outgoing_count = 0  # deliveries in _outgoing
        # The topic and offset of a pump's first delivery, sampled for latency.
        self._first_outgoing: tuple[Topic, int] | None = None
        self._next_latency_sample = 0.0
        self.delivered_messages = 0
        self.delivered_bytes = 0
        self._acks_to_pump = False
        self._slow_consumer: IDelayedCall | None = None
        self.window = DeliveryWindow(
            self.broker.timers,
            self._send_extended_delivery if extended else self._send_delivery,
            self._delivery_dropped,
            capacity=prefetch,
            flush=self._flush_deliveries,
            max_bytes=settings.max_inflight_bytes,
            send_run=self._send_extended_run if extended else None,
        )
        self._groups = groups
        self.patterns: PatternSubscriptions | None = None
        """Its pattern subscriptions, if it agreed to patterns in Hello."""
        if patterns:
            self.patterns = PatternSubscriptions(
                self.broker.registry, self.window, self.broker.dead_letters, self._may_read
            )
        # A subscriber that vanishes without a FIN is found by keepalive.
        keep_alive = getattr(self._transport, "setTcpKeepAlive", None)
        if keep_alive is not None:
            keep_alive(True)

    # Decoder events.

    def subscribe_requested(self, topics: list[str], start: StartAt, offset: int) -> None:
        try:
            request = _SubscribeRequest.sort(
                topics, start, patterns=self.patterns is not None, groups=self._groups
            )
        except ValueError as error:
            self.refused(str(error))
            return
        if self._may_subscribe is not None:
            # A pattern is allowed as its own name would be (orders.> by orders.>);
            # the topics it matches are checked one by one as well.
            forbidden = [name for name in request.checked if not self._may_read(name)]
            if forbidden:
                more = f" (and {len(forbidden) - 1} more)" if len(forbidden) > 1 else ""
                self.refused(f"{ERR_PERMISSION_DENIED}: subscribe to {forbidden[0]!r}{more}")
                if not self._may_subscribe.allow:
                    # Its user may read nothing: it holds a connection for nothing.
                    self.protocol.close()
                return
        registry = self.broker.registry
        request.set_aside_absent(registry.exists)
        awaited = self._awaited.keys() | request.absent_topics
        if len(awaited) > MAX_AWAITED_TOPICS:
            self.refused(
                ERR_TOO_MANY_TOPICS,
                f"{ERR_TOO_MANY_TOPICS}: would wait for {len(awaited)} topics that do "
                f"not exist, {MAX_AWAITED_TOPICS} at most",
            )
            return
        too_many = self._durables_beyond_bound(request)
        if too_many is not None:
            self.refused(too_many)
            return
        try:
            resolved = registry.get_all(request.names)
            targets = registry.get_all([topic for _, topic, _ in request.joined])
        except TooManyTopics:
            self.refused(ERR_TOO_MANY_TOPICS)
            return
        opening = [t.log.opening for t in (*resolved, *targets) if t.log.opening is not None]
        if opening:
            # A networked store is still learning where these topics start and end.
            self.protocol.hold_input_until(
                gatherResults(opening),
                lambda: self._subscribe(request, resolved, targets, topics, start, offset),
            )
            return
        self._subscribe(request, resolved, targets, topics, start, offset)

    def _subscribe(
        self,
        request: _SubscribeRequest,
        resolved: list[Topic],
        targets: list[Topic],
        topics: list[str],
        start: StartAt,
        offset: int,
    ) -> None:
        if self._halted:
            return
        # The status goes out before any delivery the new cursors produce.
        self._transport.write(_SUBSCRIBED)
        for topic in resolved:
            self.window.subscribe(topic, start, offset)
        for (group, _, durable), topic in zip(request.joined, targets, strict=True):
            self._join(topic, group, durable, start, offset)
        registry = self.broker.registry
        for name, joining in request.absent:
            self._forget_awaited(name)
            waiting = self._awaited[name] = _AwaitedTopic(self, name, start, offset, joining)
            registry.await_topic(name, waiting)
        if self.patterns is not None:
            self.patterns.by_name.update(request.names)
            self.patterns.by_name.update(name for name, joining in request.absent if not joining)
            self.patterns.add(request.patterns, start)
            for name, pattern, group, durable in request.pattern_groups:
                self.patterns.add([pattern], start, [name], self._joiner(group, durable))
        where = (
            f"offset {offset}" if start in (StartAt.FROM, StartAt.FROM64) else start.name.title()
        )
        log.debug(
            "{peer} subscribed to {topics} at {where}", peer=self.peer, topics=topics, where=where
        )

    def _joiner(self, group: str, durable: bool) -> Callable[[Topic, StartAt], None]:
        """How a group pattern joins a matching topic's group."""

        def join(topic: Topic, start: StartAt) -> None:
            self._join(topic, group, durable, start, 0)

        return join

    def _kept_as(self, group: str, durable: bool) -> str:
        """The name a group is kept by: the user's own, unless shared."""
        user = self._user
        return group if user is None else user.owned_group(group, durable)

    def _durable_room(self) -> int | None:
        """New durable positions the user may still make; None: no bound."""
        user = self._user
        if user is None:
            return None
        return user.max_durables - user.durables_kept(self.broker.groups.positions.kept)

    def _durables_beyond_bound(self, request: _SubscribeRequest) -> str | None:
        """The Error for a subscribe whose durable names would make more
        positions than the user's bound allows, else None."""
        room = self._durable_room()
        if room is None:
            return None
        positions = self.broker.groups.positions
        new = {
            (topic, kept_as)
            for group, topic, durable in request.every_joined
            if durable and positions.get(topic, kept_as := self._kept_as(group, durable)) is None
        }
        if len(new) <= room:
            return None
        assert self._user is not None
        return (
            f"{ERR_TOO_MANY_DURABLES}: user {self._user.name} may keep "
            f"{self._user.max_durables} durable position(s)"
        )

    def _join(self, topic: Topic, group: str, durable: bool, start: StartAt, offset: int) -> None:
        """Join `topic`'s group `group` (kept by the user's name for it); a
        durable one only within the user's bound of positions."""
        kept_as = self._kept_as(group, durable)
        groups = self.broker.groups
        if durable and groups.positions.get(topic.name, kept_as) is None:
            room = self._durable_room()
            if room is not None and room < 1:
                assert self._user is not None
                self.protocol.log_refusal(
                    f"{ERR_DURABLE_NOT_JOINED} ({self._user.max_durables} of user "
                    f"{self._user.name}): {DURABLE_PREFIX}{group}/{topic.name}"
                )
                error = f"{ERR_DURABLE_NOT_JOINED}: {DURABLE_PREFIX}{group}/{topic.name}"
                self._transport.write(encode_error(error))
                return
        self.window.join_group(groups.get(topic, kept_as, start, offset, durable))

    def _awaited_created(self, waiting: _AwaitedTopic, topic: Topic) -> None:
        """A topic subscribed to before it existed was created: take it from
        its first message (or the offset asked for)."""
        if self._awaited.get(topic.name) is not waiting:
            return
        del self._awaited[topic.name]
        if self._halted:
            return
        start, offset = waiting.start, waiting.offset
        if start not in (StartAt.FROM, StartAt.FROM64):
            start = StartAt.BEGINNING  # everything published since it asked
        if waiting.joining is None:
            if topic.name not in self.window.subscriptions:  # else a pattern took it
                self.window.subscribe(topic, start, offset)
        else:
            self._join(topic, *waiting.joining, start, offset)

    def _forget_awaited(self, name: str) -> bool:
        """Stop waiting for topic `name`; whether it was waited for."""
        waiting = self._awaited.pop(name, None)
        if waiting is None:
            return False
        self.broker.registry.stop_awaiting(name, waiting)
        return True

    def unsubscribe_requested(self, topics: list[str]) -> None:
        patterns = self.patterns
        for name in topics:
            member = parse_group_name(name) if self._groups else None
            self._forget_awaited(member[1] if member is not None else name)
            if member is not None and patterns is not None and name in patterns:
                patterns.remove(name)  # a group's pattern
            elif member is not None:
                self.window.unsubscribe(member[1])
            elif patterns is None:
                self.window.unsubscribe(name)
            elif is_pattern(name):
                patterns.remove(name)
            else:
                patterns.unsubscribe_by_name(name)
        self._transport.write(_UNSUBSCRIBED)
        log.debug("{peer} unsubscribed from {topics}", peer=self.peer, topics=topics)

    def acked(self) -> None:
        if self.window.ack():
            self.broker.stats.acks += 1
        else:
            self.refused(ERR_NOTHING_TO_ACK)

    def nacked(self) -> None:
        if self.window.nack():
            self.broker.stats.nacks += 1
        else:
            self.refused(ERR_NOTHING_TO_ACK)

    def acked_ids(self, delivery_ids: Sequence[int]) -> None:
        self.window.ack_many(delivery_ids)
        self.broker.stats.acks += len(delivery_ids)
        self._acks_to_pump = True

    def nacked_id(self, delivery_id: int) -> None:
        self.window.nack(delivery_id, pump=False)
        self.broker.stats.nacks += 1
        self._acks_to_pump = True

    # Hooks of the protocol.

    def end_of_read(self) -> None:
        positions = self.broker.groups.positions
        if positions.dirty:
            positions.flush()  # what durable consumers acked in this read
        if self._acks_to_pump:
            # The slots this read's acks freed are filled at once, in one write.
            self._acks_to_pump = False
            self.window.pump()

    def output_full(self) -> None:
        self.window.pause()
        if self._slow_consumer is None:
            self._slow_consumer = self.broker.clock.callLater(
                self.broker.settings.slow_consumer_timeout, self._slow_consumer_expired
            )

    def output_drained(self) -> None:
        self._cancel_slow_consumer()
        if not self._halted:
            self.window.resume()

    def _may_read(self, name: str) -> bool:
        """Whether its user may read topic `name` (or pattern, as its own name)."""
        rules = self._may_subscribe
        return rules is None or self.broker.dead_letters.may_read(name, rules)

    def permissions_changed(self, user: User) -> None:
        self._may_subscribe = user.subscribe
        self._user = user
        patterns = self.patterns
        may_read = self._may_read
        withdrawn = [name for name in self.window.subscriptions if not may_read(name)]
        withdrawn += [name for name in self._awaited if not may_read(name)]
        if patterns is not None:
            # A group's pattern ($share/GROUP/orders.*) is checked by its
            # pattern, as when it was subscribed, not by its whole name.
            groups = self._groups
            withdrawn += [
                name for name in patterns.patterns if not may_read(_checked_part(name, groups))
            ]
        for name in withdrawn:
            if patterns is not None and name in patterns:
                patterns.remove(name)
            elif self._forget_awaited(name):
                pass
            else:
                self.window.unsubscribe(name)
                if patterns is not None:
                    patterns.forget_topic(name)
            self._transport.write(encode_error(f"{ERR_PERMISSION_WITHDRAWN}: {name}"))
            log.warn(
                "{peer}: no longer subscribed to {topic!r}: user {user} may not read it now",
                peer=self.peer,
                topic=name,
                user=user.name,
            )

    def halt(self) -> None:
        self._halted = True
        self.window.pause()

    def close(self) -> None:
        self._cancel_slow_consumer()
        for name in list(self._awaited):
            self._forget_awaited(name)
        if self.patterns is not None:
            self.patterns.close()
        self.window.close()

    # Deliveries.

    def _send_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        if not self._outgoing:
            self._first_outgoing = (delivery.topic, delivery.offset)
        self._outgoing += (delivery.topic.delivery_prefix, encode_u64(len(payload)), payload)
        self._outgoing_count += 1
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush_deliveries()

    def _send_extended_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        if not self._outgoing:
            self._first_outgoing = (delivery.topic, delivery.offset)
        self._outgoing += (
            delivery.topic.extended_prefix,
            encode_delivery_tail(delivery.offset, delivery.attempts, delivery.id, len(payload)),
            payload,
        )
        self._outgoing_count += 1
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush_deliveries()

    def _send_extended_run(
        self, subscription: Subscription, offset: int, delivery_id: int, payloads: list[bytes]
    ) -> None:
        """First deliveries of one subscription (attempt 1), offsets and ids
        counting up from those given: encoded by `encode_first_deliveries`
        in a few calls for the whole run."""
        topic = subscription.topic
        if not self._outgoing:
            self._first_outgoing = (topic, offset)
        prefix = topic.extended_prefix
        self._outgoing += encode_first_deliveries(prefix, offset, delivery_id, payloads)
        self._outgoing_count += len(payloads)
        self._outgoing_bytes += total_size(payloads)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush_deliveries()

    def _flush_deliveries(self) -> None:
        if self._outgoing:
            outgoing = self._outgoing
            count = self._outgoing_count
            size = self._outgoing_bytes
            self._outgoing = []
            self._outgoing_bytes = 0
            self._outgoing_count = 0
            self.delivered_messages += count
            self.delivered_bytes += size
            stats = self.broker.stats
            stats.delivered_messages += count
            stats.delivered_bytes += size
            first = self._first_outgoing
            self._first_outgoing = None
            now = self.broker.clock.seconds()
            if first is not None and now >= self._next_latency_sample:
                # Sampled, not observed per pump: a subscriber of the seed's
                # protocol pumps once per message, and the histogram locks.
                self._next_latency_sample = now + LATENCY_SAMPLE_SECONDS
                appended = first[0].appended_at(first[1])
                if appended is not None:
                    stats.latency.observe(max(0.0, now - appended))
            # May pause the window at once (output_full), between two chunks.
            self._write_now(b"".join(outgoing))

    def _delivery_dropped(self, delivery: Delivery, reason: str) -> None:
        letter_topic = self.broker.dead_letter(delivery, reason, self.peer)
        log.warn(
            "{peer}: gave up on message {offset} of {topic!r} after {attempts} deliveries "
            "({reason}); {fate}",
            peer=self.peer,
            offset=delivery.offset,
            topic=delivery.topic.name,
            attempts=delivery.attempts,
            reason=reason,
            fate=f"dead-lettered to {letter_topic!r}" if letter_topic else "dropped",
        )

    # Slow consumers.

    def _cancel_slow_consumer(self) -> None:
        cancel_call(self._slow_consumer)
        self._slow_consumer = None

    def _slow_consumer_expired(self) -> None:
        self._slow_consumer = None
        settings = self.broker.settings
        window = self.window
        disconnect = settings.disconnect_slow_consumers
        log.warn(
            "{peer}: slow consumer: has read none of its deliveries for {seconds} s "
            "({in_flight} in flight, {bytes} bytes); {action}",
            peer=self.peer,
            seconds=settings.slow_consumer_timeout,
            in_flight=window.in_flight,
            bytes=window.bytes_in_flight,
            action="disconnecting; its deliveries go back to their topics"
            if disconnect
            else "waiting for it",
        )
        if disconnect:
            self._transport.abortConnection()


def _checked_part(name: str, groups: bool) -> str:
    """What permissions check of a subscribed name: a group's topic or
    pattern (`$share/GROUP/TOPIC`), any other name as it is."""
    member = parse_group_name(name) if groups else None
    return member[1] if member is not None else name


class _AwaitedTopic:
    """A subscription to a topic that does not exist yet, told by the
    registry when a publish creates it."""

    __slots__ = ("joining", "name", "offset", "session", "start")

    def __init__(
        self,
        session: SubscriberSession,
        name: str,
        start: StartAt,
        offset: int,
        joining: tuple[str, bool] | None,
    ) -> None:
        self.session = session
        self.name = name
        self.start = start
        self.offset = offset
        self.joining = joining
        """(group, durable) to join, or None for a plain subscription."""

    def topic_created(self, topic: Topic) -> None:
        self.session._awaited_created(self, topic)


@dataclass
class _SubscribeRequest:
    """A subscribe's names, sorted: topics by name, groups to join, patterns,
    and groups' patterns; those of topics that do not exist set aside."""

    names: list[str] = field(default_factory=list)
    joined: list[tuple[str, str, bool]] = field(default_factory=list)  # group, topic, durable
    patterns: list[str] = field(default_factory=list)
    pattern_groups: list[tuple[str, str, str, bool]] = field(default_factory=list)
    """(name, pattern, group, durable) of each `$share/GROUP/pattern`."""
    absent: list[tuple[str, tuple[str, bool] | None]] = field(default_factory=list)
    """Topics that do not exist yet, with the (group, durable) to join, if any."""

    def set_aside_absent(self, exists: Callable[[str], bool]) -> None:
        """Move the names and groups of topics that do not exist to `absent`."""
        names, joined = self.names, self.joined
        self.names = [name for name in names if exists(name)]
        self.joined = [member for member in joined if exists(member[1])]
        self.absent = [(name, None) for name in names if not exists(name)]
        self.absent += [
            (topic, (group, durable)) for group, topic, durable in joined if not exists(topic)
        ]

    @property
    def absent_topics(self) -> set[str]:
        return {name for name, _ in self.absent}

    @property
    def every_joined(self) -> list[tuple[str, str, bool]]:
        """(group, topic, durable) of every group named, its topic there or not."""
        return [*self.joined, *((j[0], name, j[1]) for name, j in self.absent if j is not None)]

    @property
    def checked(self) -> list[str]:
        """What the user's subscribe permissions must allow."""
        return [
            *self.names,
            *(topic for _, topic, _ in self.joined),
            *(name for name, _ in self.absent),
            *self.patterns,
            *(pattern for _, pattern, _, _ in self.pattern_groups),
        ]

    @classmethod
    def sort(
        cls, names: list[str], start: StartAt, patterns: bool, groups: bool
    ) -> _SubscribeRequest:
        """The request, or ValueError with the Error to answer."""
        request = cls()
        for name in names:
            member = parse_group_name(name) if groups else None
            if member is not None:
                group, topic, durable = member
                problem = group_name_problem(group) or topic_name_problem(topic)
                if problem is None and is_pattern(topic) and not patterns:
                    problem = "a group of a pattern needs patterns agreed in Hello"
                if problem:
                    raise ValueError(f"{ERR_INVALID_GROUP}: {name!r}: {problem}")
                if patterns and is_pattern(topic):
                    request.pattern_groups.append((name, topic, group, durable))
                else:
                    request.joined.append((group, topic, durable))
            elif patterns and is_pattern(name):
                request.patterns.append(name)
            else:
                request.names.append(name)
        every = [*request.patterns, *(p for _, p, _, _ in request.pattern_groups)]
        if every and start in (StartAt.FROM, StartAt.FROM64):
            raise ValueError(ERR_PATTERN_OFFSET)
        for pattern in every:
            try:
                check_pattern(pattern)
            except PatternError as error:
                raise ValueError(f"{ERR_INVALID_PATTERN}: {error}") from None
        return request
