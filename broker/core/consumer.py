"""One consumer of the broker, whatever door it came through: the topics,
patterns, groups and durable consumers it subscribes to, its window of
deliveries, its acks, and the rules that decide what it may take.

A front door (the TCP subscriber session today) decodes its protocol's
requests, calls a Consumer, and encodes what the Consumer hands it through
`ConsumerOutput`. The rules live here, so that every door keeps them:

- with a users file, a subscribe naming any topic the user may not read is
  refused whole (and should close the connection if the user may read
  nothing at all); a reload that withdraws a topic ends its subscription;
  reading a dead-letter topic needs the right to read its parent (see
  broker.core.dead_letters);
- group and durable names are the user's own unless the users file shares
  them (see broker.security.users), and a user keeps at most `max_durables`
  durable positions;
- a subscription to a topic that does not exist creates none: it waits,
  costing no topic, until a publish creates it, and takes it from its first
  message (at most MAX_AWAITED_TOPICS per consumer);
- with patterns, names with `*` or `>` tokens are patterns (see
  broker.core.patterns);
- a consumer whose output stays full for `slow_consumer_timeout` is a slow
  consumer: logged, and cut off if the broker is told to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from broker.core.delivery import Delivery, DeliveryWindow, Subscription
from broker.core.patterns import PatternSubscriptions
from broker.core.topics import TooManyTopics, Topic
from broker.names import DURABLE_PREFIX, group_name_problem, is_inbox, parse_group_name
from broker.subjects import PatternError, check_pattern, is_pattern
from broker.wire import (
    ERR_DURABLE_NOT_JOINED,
    ERR_INVALID_GROUP,
    ERR_INVALID_PATTERN,
    ERR_PATTERN_OFFSET,
    ERR_PERMISSION_DENIED,
    ERR_PERMISSION_WITHDRAWN,
    ERR_TOO_MANY_DURABLES,
    ERR_TOO_MANY_TOPICS,
    StartAt,
    topic_name_problem,
)

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.security.users import User

log = Logger()

# Hands a door a run of first deliveries of one subscription: offsets and
# delivery ids count up from those given, one per payload.
RunSender = Callable[[Subscription, int, int, list[bytes]], None]

# Topics that do not exist yet one consumer may wait for: they cost the
# broker no topic, but memory, which stays bounded per consumer.
MAX_AWAITED_TOPICS = 1000


class SubscribeRefused(Exception):
    """A subscribe the broker will not do, nothing of it done: `reason` is
    the Error to answer, `detail` what to log (if more than the reason),
    `close` whether the connection holds nothing worth keeping open."""

    def __init__(self, reason: str, detail: str | None = None, close: bool = False) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
        self.close = close


class ConsumerOutput(Protocol):
    """What a Consumer asks of the door it came through."""

    def flush(self) -> None:
        """Write the deliveries handed over since the last flush."""

    def notify(self, error: str) -> None:
        """Tell the client of a change it did not ask for (a durable not
        joined, a permission withdrawn), as the Error `error`."""

    def log_refusal(self, reason: str) -> None:
        """Log a refusal the client is told of otherwise."""

    def abort(self) -> None:
        """Cut the connection off (a slow consumer the broker gives up on)."""


class Consumer:
    """One consumer's subscriptions and window. `deliver` (and, where the
    door encodes runs of first deliveries at once, `deliver_run`) hand a
    delivery to the door; `output` is the rest of what the door does."""

    def __init__(
        self,
        broker: Broker,
        output: ConsumerOutput,
        name: str,
        deliver: Callable[[Delivery], None],
        prefetch: int,
        user: User | None = None,
        patterns: bool = False,
        groups: bool = False,
        deliver_run: RunSender | None = None,
    ) -> None:
        self.broker = broker
        self._output = output
        self.name = name
        """Who it is in the log (the peer's address)."""
        self._user = user
        """Who it is (its rights, whose group names it uses); None: no users file."""
        self._groups = groups
        self._awaited: dict[str, _AwaitedTopic] = {}
        """Its subscriptions to topics that do not exist yet, by topic."""
        self._halted = False
        self._slow_consumer: IDelayedCall | None = None
        self.window = DeliveryWindow(
            broker.timers,
            deliver,
            self._delivery_dropped,
            capacity=prefetch,
            flush=output.flush,
            max_bytes=broker.settings.max_inflight_bytes,
            send_run=deliver_run,
        )
        self.patterns: PatternSubscriptions | None = None
        """Its pattern subscriptions, if it agreed to patterns."""
        broker.consumers.add(self)
        if patterns:
            self.patterns = PatternSubscriptions(
                broker.registry, self.window, broker.dead_letters, self._may_read
            )

    # Subscribing.

    def subscribe(
        self, names: list[str], start: StartAt, offset: int, accepted: Callable[[], None]
    ) -> Deferred[Any] | None:
        """Subscribe to `names` (topics, `$share/GROUP/TOPIC` or `$durable/...`
        groups, patterns) from `start`. Refused whole with SubscribeRefused,
        or taken: `accepted` is called before the first delivery it brings.
        Returns a Deferred if the store is still opening some of the topics
        (nothing more of this consumer's requests should run until it fires),
        else None, the subscribe done."""
        try:
            request = _SubscribeRequest.sort(
                names, start, patterns=self.patterns is not None, groups=self._groups
            )
        except ValueError as error:
            raise SubscribeRefused(str(error)) from None
        user = self._user
        if user is not None:
            # A pattern is allowed as its own name would be (orders.> by orders.>);
            # the topics it matches are checked one by one as well.
            forbidden = [name for name in request.checked if not self._may_read(name)]
            if forbidden:
                more = f" (and {len(forbidden) - 1} more)" if len(forbidden) > 1 else ""
                raise SubscribeRefused(
                    f"{ERR_PERMISSION_DENIED}: subscribe to {forbidden[0]!r}{more}",
                    # Its user may read nothing: it holds a connection for nothing.
                    close=not user.subscribe.allow,
                )
        registry = self.broker.registry
        request.set_aside_absent(registry.exists)
        awaited = self._awaited.keys() | request.absent_topics
        if len(awaited) > MAX_AWAITED_TOPICS:
            raise SubscribeRefused(
                ERR_TOO_MANY_TOPICS,
                f"{ERR_TOO_MANY_TOPICS}: would wait for {len(awaited)} topics that do "
                f"not exist, {MAX_AWAITED_TOPICS} at most",
            )
        too_many = self._durables_beyond_bound(request)
        if too_many is not None:
            raise SubscribeRefused(too_many)
        try:
            resolved = registry.get_all(request.names)
            targets = registry.get_all([topic for _, topic, _ in request.joined])
        except TooManyTopics:
            raise SubscribeRefused(ERR_TOO_MANY_TOPICS) from None
        opening = [t.log.opening for t in (*resolved, *targets) if t.log.opening is not None]
        if opening:
            # A networked store is still learning where these topics start and end.
            ready: Deferred[Any] = gatherResults(opening)
            ready.addCallback(
                lambda _: self._subscribe(request, resolved, targets, start, offset, accepted)
            )
            return ready
        self._subscribe(request, resolved, targets, start, offset, accepted)
        return None

    def _subscribe(
        self,
        request: _SubscribeRequest,
        resolved: list[Topic],
        targets: list[Topic],
        start: StartAt,
        offset: int,
        accepted: Callable[[], None],
    ) -> None:
        if self._halted:
            return
        accepted()
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

    def unsubscribe(self, names: list[str]) -> None:
        """End the subscriptions `names` name (those it has not are ignored)."""
        patterns = self.patterns
        for name in names:
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
                self._output.log_refusal(
                    f"{ERR_DURABLE_NOT_JOINED} ({self._user.max_durables} of user "
                    f"{self._user.name}): {DURABLE_PREFIX}{group}/{topic.name}"
                )
                self._output.notify(
                    f"{ERR_DURABLE_NOT_JOINED}: {DURABLE_PREFIX}{group}/{topic.name}"
                )
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

    def reads(self, topic: str) -> bool:
        """Whether it is subscribed to `topic` (by name or by a pattern), or
        waits for it to be made."""
        return topic in self.window.subscriptions or topic in self._awaited

    @property
    def awaited(self) -> list[str]:
        """The topics it waits for, which do not exist yet."""
        return sorted(self._awaited)

    # Acks.

    def ack(self) -> bool:
        """Ack the oldest delivery in flight; False if there was none."""
        if self.window.ack():
            self.broker.stats.acks += 1
            return True
        return False

    def nack(self) -> bool:
        """Give back the oldest delivery in flight; False if there was none."""
        if self.window.nack():
            self.broker.stats.nacks += 1
            return True
        return False

    def ack_ids(self, delivery_ids: Sequence[int]) -> None:
        """Ack deliveries by id; the slots they free are filled by `pump`."""
        self.window.ack_many(delivery_ids)
        self.broker.stats.acks += len(delivery_ids)

    def nack_id(self, delivery_id: int) -> None:
        """Give back a delivery by id; its slot is filled by `pump`."""
        self.window.nack(delivery_id, pump=False)
        self.broker.stats.nacks += 1

    def pump(self) -> None:
        """Fill the window's free slots, in one write."""
        self.window.pump()

    def keep_positions(self) -> None:
        """Keep what durable consumers acked (once per read, not per ack)."""
        positions = self.broker.groups.positions
        if positions.dirty:
            positions.flush()

    # Rights.

    def _may_read(self, name: str) -> bool:
        """Whether its user may read topic `name` (or pattern, as its own name)."""
        user = self._user
        if user is None or is_inbox(name):  # (an inbox: whoever knows its name)
            return True
        return self.broker.dead_letters.may_read(name, user.subscribe)

    def permissions_changed(self, user: User) -> list[str]:
        """The users file was re-read: end what `user` may no longer read,
        each told through `notify`; return the names ended."""
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
            self._output.notify(f"{ERR_PERMISSION_WITHDRAWN}: {name}")
            log.warn(
                "{peer}: no longer subscribed to {topic!r}: user {user} may not read it now",
                peer=self.name,
                topic=name,
                user=user.name,
            )
        return withdrawn

    # Its output.

    def output_full(self) -> None:
        """The door's output piles up unread: send nothing more for now, and
        call it a slow consumer if it stays so."""
        self.window.pause()
        if self._slow_consumer is None:
            self._slow_consumer = self.broker.clock.callLater(
                self.broker.settings.slow_consumer_timeout, self._slow_consumer_expired
            )

    def output_drained(self) -> None:
        """The door's output has drained: send again."""
        self._cancel_slow_consumer()
        if not self._halted:
            self.window.resume()

    def _cancel_slow_consumer(self) -> None:
        call = self._slow_consumer
        if call is not None and call.active():
            call.cancel()
        self._slow_consumer = None

    def _slow_consumer_expired(self) -> None:
        self._slow_consumer = None
        settings = self.broker.settings
        window = self.window
        disconnect = settings.disconnect_slow_consumers
        log.warn(
            "{peer}: slow consumer: has read none of its deliveries for {seconds} s "
            "({in_flight} in flight, {bytes} bytes); {action}",
            peer=self.name,
            seconds=settings.slow_consumer_timeout,
            in_flight=window.in_flight,
            bytes=window.bytes_in_flight,
            action="disconnecting; its deliveries go back to their topics"
            if disconnect
            else "waiting for it",
        )
        if disconnect:
            self._output.abort()

    def _delivery_dropped(self, delivery: Delivery, reason: str) -> None:
        letter_topic = self.broker.dead_letter(delivery, reason, self.name)
        log.warn(
            "{peer}: gave up on message {offset} of {topic!r} after {attempts} deliveries "
            "({reason}); {fate}",
            peer=self.name,
            offset=delivery.offset,
            topic=delivery.topic.name,
            attempts=delivery.attempts,
            reason=reason,
            fate=f"dead-lettered to {letter_topic!r}" if letter_topic else "dropped",
        )

    # Ending.

    def halt(self) -> None:
        """The broker is stopping or the connection closing: start nothing new."""
        self._halted = True
        self.window.pause()

    def close(self) -> None:
        """The consumer is gone: give back what it held."""
        self._halted = True  # a subscribe the store was opening topics for ends here
        self.broker.consumers.discard(self)
        self._cancel_slow_consumer()
        for name in list(self._awaited):
            self._forget_awaited(name)
        if self.patterns is not None:
            self.patterns.close()
        self.window.close()


def _checked_part(name: str, groups: bool) -> str:
    """What permissions check of a subscribed name: a group's topic or
    pattern (`$share/GROUP/TOPIC`), any other name as it is."""
    member = parse_group_name(name) if groups else None
    return member[1] if member is not None else name


class _AwaitedTopic:
    """A subscription to a topic that does not exist yet, told by the
    registry when a publish creates it."""

    __slots__ = ("consumer", "joining", "name", "offset", "start")

    def __init__(
        self,
        consumer: Consumer,
        name: str,
        start: StartAt,
        offset: int,
        joining: tuple[str, bool] | None,
    ) -> None:
        self.consumer = consumer
        self.name = name
        self.start = start
        self.offset = offset
        self.joining = joining
        """(group, durable) to join, or None for a plain subscription."""

    def topic_created(self, topic: Topic) -> None:
        self.consumer._awaited_created(self, topic)


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
