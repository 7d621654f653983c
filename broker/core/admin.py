"""What an operator may do to a running broker, whatever asks (the admin
API on the monitor port today): create, inspect, peek into, purge and
delete topics; list consumer groups and durable consumers, and reset or
delete a durable one. Each action is logged with who asked.

Refusals are `AdminRefused` with an HTTP-like status: 404 nothing of that
name, 409 in use (a topic being read, a durable consumer with members), 400
a bad request, 503 the store cannot now (Redis unreachable).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.core.groups import parse_shared_group_name, shared_group_name
from broker.core.topics import TooManyTopics, Topic
from broker.log import ISharedStore, SharedConsumer, StoreError, TopicState
from broker.log.positions import Position
from broker.wire import topic_name_problem
from broker.wire.headers import Headers

if TYPE_CHECKING:
    from broker.core.broker import Broker

log = Logger()

T = TypeVar("T")

# What one peek returns at most, whatever it asks for.
MAX_PEEK_MESSAGES = 1000
MAX_PEEK_BYTES = 4 * 1024 * 1024


class AdminRefused(Exception):
    """An action the broker will not take; `status` says why, as HTTP would."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Administration:
    """An operator's actions on one Broker. What asks of the store answers
    a Deferred: a store shared by nodes (Redis) is asked across nodes."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def _shared(self) -> ISharedStore | None:
        store = self.broker.store
        return store if ISharedStore.providedBy(store) else None

    # Topics.

    def topic(self, name: str) -> Topic:
        """The topic open here, or 404."""
        registry = self.broker.registry
        if name not in registry:
            if registry.exists(name):  # another node's, on a shared store
                return registry.get(name)
            raise AdminRefused(404, f"no topic {name!r}")
        return registry.get(name)

    def topics(self) -> Deferred[list[dict[str, Any]]]:
        """Every topic, by name: its offsets, size and readers here (with a
        shared store, also those no reader here opened)."""
        summaries = {topic.name: self._summary(topic) for topic in self.broker.registry}
        shared = self._shared
        if shared is None:
            return succeed([summaries[name] for name in sorted(summaries)])
        elsewhere = [name for name in shared.shared_topics() if name not in summaries]

        def listed(states: dict[str, TopicState]) -> list[dict[str, Any]]:
            for name, state in states.items():
                summaries[name] = {
                    "name": name,
                    "first": state.first,
                    "next": state.next,
                    "messages": state.next - state.first,
                    "bytes": None,
                    "readers": 0,
                }
            return [summaries[name] for name in sorted(summaries)]

        return _asked(shared.topic_states(elsewhere)).addCallback(listed)

    def _summary(self, topic: Topic) -> dict[str, Any]:
        topic_log = topic.log
        return {
            "name": topic.name,
            "first": topic_log.first_offset,
            "next": topic_log.next_offset,
            "messages": topic_log.next_offset - topic_log.first_offset,
            "bytes": topic_log.bytes_held,
            "readers": self.broker.readers_of(topic.name),
            "compacted": topic.compacted,
        }

    def info(self, name: str) -> Deferred[dict[str, Any]]:
        """A topic's summary, with its groups and durable consumers."""
        topic = self.topic(name)

        def described(_: object) -> Deferred[dict[str, Any]]:
            rows = self._consumers_of(name)
            return rows.addCallback(
                lambda found: {
                    **self._summary(topic),
                    "committed": topic.log.committed_offset,
                    "groups": [row for row in found if not row["durable"]],
                    "durables": [row for row in found if row["durable"]],
                }
            )

        opening = topic.log.opening  # a shared store's topic: its offsets first
        return (opening if opening is not None else succeed(None)).addCallback(described)

    def create(self, name: str, who: str) -> tuple[dict[str, Any], bool]:
        """Make topic `name` if it does not exist; its summary, and whether
        it was made now."""
        problem = topic_name_problem(name)
        if problem:
            raise AdminRefused(400, f"{name!r}: {problem}")
        made = not self.broker.registry.exists(name)
        try:
            topic = self.broker.registry.get(name)
        except TooManyTopics:
            raise AdminRefused(
                409, "too many topics: the broker's --max-topics is reached"
            ) from None
        if made:
            log.info("{who} created topic {topic!r}", who=who, topic=name)
        return self._summary(topic), made

    def peek(
        self, name: str, offset: int | None, limit: int, max_bytes: int
    ) -> Deferred[dict[str, Any]]:
        """Up to `limit` messages of a topic from `offset` (its first held, if
        None), at most `max_bytes` of payload, without consuming them."""
        topic = self.topic(name)
        topic_log = topic.log
        limit = max(1, min(limit, MAX_PEEK_MESSAGES))
        max_bytes = max(1, min(max_bytes, MAX_PEEK_BYTES))
        start = topic_log.first_offset if offset is None else max(offset, topic_log.first_offset)
        end = topic_log.committed_offset
        count = max(0, min(limit, end - start))
        if count == 0:
            return succeed({"topic": name, "messages": [], "next": start})

        def shown(payloads: list[bytes | None]) -> dict[str, Any]:
            messages: list[dict[str, Any]] = []
            total = 0
            for at, payload in enumerate(payloads, start):
                if payload is not None and messages and total + len(payload) > max_bytes:
                    break
                messages.append(_message(at, payload, topic.compacted))
                total += len(payload or b"")
            return {"topic": name, "messages": messages, "next": start + len(messages)}

        return maybeDeferred(topic_log.read, start, count).addCallback(shown)

    def set_compaction(self, name: str, compacted: bool, who: str) -> dict[str, Any]:
        """Turn a topic's compaction on or off (until the broker restarts:
        --compact keeps it); on, it runs at once."""
        topic = self.topic(name)
        broker = self.broker
        (broker.compaction.on if compacted else broker.compaction.off).add(name)
        (broker.compaction.off if compacted else broker.compaction.on).discard(name)
        topic.compacted = topic.log.keyed = compacted
        if compacted:
            broker.key_index(name, topic)
            broker.compact_topics(force=True)
        log.warn(
            "{who} turned compaction of topic {topic!r} {state}",
            who=who,
            topic=name,
            state="on" if compacted else "off",
        )
        return {"topic": name, "compacted": compacted}

    def purge(self, name: str, who: str) -> Deferred[int]:
        """Drop every message of a topic (offsets go on); how many went."""
        topic = self.topic(name)

        def purged(dropped: int) -> int:
            self.broker.key_indexes.pop(name, None)  # made again from what is left
            log.warn(
                "{who} purged topic {topic!r}: {dropped} message(s) dropped",
                who=who,
                topic=name,
                dropped=dropped,
            )
            return dropped

        return _asked(maybeDeferred(topic.log.purge)).addCallback(purged)

    def delete(self, name: str, who: str) -> Deferred[None]:
        """Remove a topic nobody reads, with its messages and its durable
        consumers; 409 while anything reads it here. With a shared store,
        every node closes it, except where something still reads it."""
        self.topic(name)
        readers = self.broker.readers_of(name)
        if readers:
            raise AdminRefused(
                409, f"topic {name!r} has {readers} reader(s): end their subscriptions first"
            )
        self.broker.forget_topic(name)
        registry = self.broker.registry

        def deleted(_: object) -> None:
            positions = self.broker.groups.positions
            for kept in positions.of_topic(name):
                positions.remove(name, kept)
            positions.flush()
            log.warn("{who} deleted topic {topic!r}", who=who, topic=name)

        def refused(failure: Failure) -> Failure:
            registry.reopen([name])  # still the store's: open it again
            return failure

        deleting = maybeDeferred(self.broker.store.delete, name)
        return _asked(deleting.addCallbacks(deleted, refused))

    # Consumers.

    def consumers(self) -> Deferred[list[dict[str, Any]]]:
        """Every consumer group and durable consumer, by topic and name
        (with a shared store, of every topic it holds)."""
        shared = self._shared
        if shared is None:
            return succeed(self.consumers_here())
        names = sorted({topic.name for topic in self.broker.registry} | set(shared.shared_topics()))
        asked = [self._consumers_of(name) for name in names]

        def gathered(found: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
            return [row for rows in found for row in rows]

        return gatherResults(asked, consumeErrors=True).addCallbacks(gathered, _first_failure)

    def consumers_here(self) -> list[dict[str, Any]]:
        """The consumer groups and durable consumers held on this node."""
        groups = self.broker.groups
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for topic in self.broker.registry:
            for group in groups.of_topic(topic.name):
                rows[(topic.name, group.name)] = {
                    "topic": topic.name,
                    "name": group.name,
                    "durable": group.durable,
                    "members": len(group.members),
                }
            for kept in groups.positions.of_topic(topic.name):
                row = rows.setdefault(
                    (topic.name, kept),
                    {"topic": topic.name, "name": kept, "durable": True, "members": 0},
                )
                row.update(self._durable(topic.name, kept))
        return [rows[key] for key in sorted(rows)]

    def _consumers_of(self, topic: str) -> Deferred[list[dict[str, Any]]]:
        """The groups and durable consumers of one topic, with their members
        here (and, with a shared store, what it keeps for every node)."""
        here = [row for row in self.consumers_here() if row["topic"] == topic]
        shared = self._shared
        if shared is None:
            return succeed(here)
        members = {(row["name"], row["durable"]): row["members"] for row in here}

        def listed(found: list[SharedConsumer]) -> list[dict[str, Any]]:
            rows = []
            for consumer in found:
                parsed = parse_shared_group_name(consumer.group)
                if parsed is None:
                    continue
                name, durable = parsed
                rows.append(
                    {
                        "topic": topic,
                        "name": name,
                        "durable": durable,
                        "members": members.get((name, durable), 0),
                        "position": consumer.position,
                        "lag": max(0, self._end_of(topic, consumer.position) - consumer.position),
                        "nodes": consumer.nodes,
                        "reading_nodes": list(consumer.live_nodes),
                        "pending_batches": consumer.pending,
                    }
                )
            return rows

        return _asked(shared.shared_consumers(topic)).addCallback(listed)

    def _end_of(self, topic: str, otherwise: int) -> int:
        registry = self.broker.registry
        return registry.get(topic).log.next_offset if topic in registry else otherwise

    def _durable(self, topic: str, name: str) -> dict[str, Any]:
        position = self.broker.groups.positions.get(topic, name)
        assert position is not None
        end = self._end_of(topic, position.low)
        return {
            "name": name,
            "position": position.low,
            "lag": max(0, end - position.low),
            "touched": position.touched,
        }

    def offset_at(self, topic: str, when: float) -> Deferred[int]:
        """The offset of a topic's first message appended at or after `when`
        (seconds since the epoch); its next offset if none was."""
        return _asked(maybeDeferred(self.topic(topic).log.offset_at, when))

    def reset_durable(
        self, topic: str, name: str, offset: int, who: str
    ) -> Deferred[dict[str, Any]]:
        """Move a durable consumer with no member to `offset` (clamped to
        what the topic holds): it resumes there when it subscribes again.
        A shared store moves it to the batch holding `offset`."""
        topic_log = self.topic(topic).log
        at = min(max(offset, topic_log.first_offset), topic_log.next_offset)

        def reset(where: int) -> dict[str, Any]:
            log.warn(
                "{who} reset durable consumer {name!r} of {topic!r} to offset {offset}",
                who=who,
                name=name,
                topic=topic,
                offset=where,
            )
            return {"name": name, "topic": topic, "position": where}

        shared = self._shared
        if shared is None:
            positions = self.broker.groups.positions
            if positions.get(topic, name) is None:
                raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
            self._refuse_if_live(topic, name)
            clock = self.broker.clock.seconds()
            positions.put(topic, name, Position(at, delivered=at, touched=clock))
            positions.flush()
            return succeed({**reset(at), **self._durable(topic, name)})
        group = shared_group_name(name, durable=True)

        def unless_read(_: object) -> Deferred[int | None]:
            return shared.reset_shared_consumer(topic, group, at)

        def done(where: int | None) -> dict[str, Any]:
            if where is None:
                raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
            return reset(where)

        checking = self._refuse_if_live_anywhere(shared, topic, name)
        return _asked(checking.addCallback(unless_read)).addCallback(done)

    def delete_durable(self, topic: str, name: str, who: str) -> Deferred[None]:
        """Forget a durable consumer with no member: its name starts anew."""

        def deleted(existed: bool) -> None:
            if not existed:
                raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
            log.warn(
                "{who} deleted durable consumer {name!r} of {topic!r}",
                who=who,
                name=name,
                topic=topic,
            )

        shared = self._shared
        if shared is None:
            positions = self.broker.groups.positions
            if positions.get(topic, name) is None:
                raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
            self._refuse_if_live(topic, name)
            positions.remove(topic, name)
            positions.flush()
            return succeed(True).addCallback(deleted)
        group = shared_group_name(name, durable=True)

        def unless_read(_: object) -> Deferred[bool]:
            return shared.delete_shared_consumer(topic, group)

        checking = self._refuse_if_live_anywhere(shared, topic, name)
        return _asked(checking.addCallback(unless_read)).addCallback(deleted)

    def _refuse_if_live(self, topic: str, name: str) -> None:
        """409 while members here read the durable consumer; else forget its
        group held here, so that the next member starts from its kept position."""
        groups = self.broker.groups
        for group in groups.of_topic(topic):
            if group.name == name and group.durable and group.members:
                raise AdminRefused(
                    409, f"durable consumer {name!r} has {len(group.members)} member(s) reading"
                )
        groups.drop(topic, name, durable=True)

    def _refuse_if_live_anywhere(
        self, shared: ISharedStore, topic: str, name: str
    ) -> Deferred[None]:
        """409 while members on any node read the durable consumer."""
        self._refuse_if_live(topic, name)
        group = shared_group_name(name, durable=True)

        def checked(found: list[SharedConsumer]) -> None:
            for consumer in found:
                if consumer.group == group and consumer.live_nodes:
                    nodes = ", ".join(consumer.live_nodes)
                    raise AdminRefused(409, f"durable consumer {name!r} is read on node(s) {nodes}")

        return _asked(shared.shared_consumers(topic)).addCallback(checked)


def _asked(asking: Deferred[T]) -> Deferred[T]:
    """A store's answer, its StoreError a 503 (the store cannot now)."""

    def refused(failure: Failure) -> Failure:
        if failure.check(StoreError):
            return Failure(AdminRefused(503, str(failure.value)))
        return failure

    return asking.addErrback(refused)


def _first_failure(failure: Failure) -> Failure:
    """gatherResults' FirstError unwrapped, so that a 503 stays one."""
    if failure.check(FirstError):
        assert isinstance(failure.value, FirstError)
        return failure.value.subFailure
    return failure


def _name(topic: Topic) -> str:
    return topic.name


def _message(offset: int, payload: bytes | None, compacted: bool = False) -> dict[str, Any]:
    if payload is None:
        # In a compacted topic, a message compaction dropped (a gap).
        return {"offset": offset, "gap" if compacted else "corrupt": True}
    shown: dict[str, Any] = {"offset": offset, "size": len(payload)}
    headers = Headers.of(payload)
    if headers:
        shown["headers"] = [list(pair) for pair in headers.pairs()]
    try:
        shown["data"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        shown["data_base64"] = base64.b64encode(payload).decode("ascii")
    return shown
