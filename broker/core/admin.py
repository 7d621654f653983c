"""What an operator may do to a running broker, whatever asks (the admin
API on the monitor port today): create, inspect, peek into, purge and
delete topics; list consumer groups and durable consumers, and reset or
delete a durable one. Each action is logged with who asked.

Refusals are `AdminRefused` with an HTTP-like status: 404 nothing of that
name, 409 in use (a topic being read, a durable consumer with members), 400
a bad request, 503 the store cannot (the Redis store does not delete
topics yet).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from broker.core.topics import TooManyTopics, Topic
from broker.log import StoreError
from broker.log.positions import Position
from broker.wire import topic_name_problem

if TYPE_CHECKING:
    from broker.core.broker import Broker

log = Logger()

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
    """An operator's actions on one Broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    # Topics.

    def topic(self, name: str) -> Topic:
        """The topic open here, or 404."""
        registry = self.broker.registry
        if name not in registry:
            if registry.exists(name):  # another node's, on a shared store
                return registry.get(name)
            raise AdminRefused(404, f"no topic {name!r}")
        return registry.get(name)

    def topics(self) -> list[dict[str, Any]]:
        """Every topic, by name: its offsets, size and readers."""
        return [self._summary(topic) for topic in sorted(self.broker.registry, key=_name)]

    def _summary(self, topic: Topic) -> dict[str, Any]:
        topic_log = topic.log
        return {
            "name": topic.name,
            "first": topic_log.first_offset,
            "next": topic_log.next_offset,
            "messages": topic_log.next_offset - topic_log.first_offset,
            "bytes": topic_log.bytes_held,
            "readers": self.readers(topic.name),
        }

    def readers(self, name: str) -> int:
        """Subscriptions and live consumer groups reading topic `name`."""
        broker = self.broker
        subscribed = sum(1 for consumer in broker.consumers if consumer.reads(name))
        return subscribed + sum(1 for group in broker.groups.of_topic(name) if group.members)

    def info(self, name: str) -> dict[str, Any]:
        """A topic's summary, with its groups and durable consumers."""
        topic = self.topic(name)
        groups = self.broker.groups
        return {
            **self._summary(topic),
            "committed": topic.log.committed_offset,
            "groups": [
                {
                    "name": group.name,
                    "durable": group.durable,
                    "members": len(group.members),
                }
                for group in groups.of_topic(name)
            ],
            "durables": [self._durable(name, kept) for kept in groups.positions.of_topic(name)],
        }

    def _durable(self, topic: str, name: str) -> dict[str, Any]:
        position = self.broker.groups.positions.get(topic, name)
        assert position is not None
        topic_log = self.broker.registry.get(topic).log if topic in self.broker.registry else None
        end = topic_log.next_offset if topic_log is not None else position.low
        return {
            "name": name,
            "position": position.low,
            "lag": max(0, end - position.low),
            "touched": position.touched,
        }

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
                messages.append(_message(at, payload))
                total += len(payload or b"")
            return {"topic": name, "messages": messages, "next": start + len(messages)}

        return maybeDeferred(topic_log.read, start, count).addCallback(shown)

    def purge(self, name: str, who: str) -> Deferred[int]:
        """Drop every message of a topic (offsets go on); how many went."""
        topic = self.topic(name)

        def purged(dropped: int) -> int:
            log.warn(
                "{who} purged topic {topic!r}: {dropped} message(s) dropped",
                who=who,
                topic=name,
                dropped=dropped,
            )
            return dropped

        return maybeDeferred(topic.log.purge).addCallback(purged)

    def delete(self, name: str, who: str) -> Deferred[None]:
        """Remove a topic nobody reads, with its messages and its durable
        consumers' positions; 409 while anything reads it."""
        self.topic(name)
        readers = self.readers(name)
        if readers:
            raise AdminRefused(
                409, f"topic {name!r} has {readers} reader(s): end their subscriptions first"
            )
        store = self.broker.store
        registry = self.broker.registry
        groups = self.broker.groups
        for group in groups.of_topic(name):  # none reads: each only holds work to redo
            groups.drop(name, group.name, group.durable)
        topic = registry.remove(name)
        try:
            deleting = maybeDeferred(store.delete, name)
        except StoreError as error:  # pragma: no cover - maybeDeferred catches it
            raise AdminRefused(503, str(error)) from None

        def deleted(_: object) -> None:
            positions = self.broker.groups.positions
            for kept in positions.of_topic(name):
                positions.remove(name, kept)
            positions.flush()
            log.warn("{who} deleted topic {topic!r}", who=who, topic=name)

        def refused(failure: Any) -> None:
            if topic is not None:
                registry.reopen([name])  # still the store's: open it again
            if failure.check(StoreError):
                raise AdminRefused(503, str(failure.value))
            failure.raiseException()

        return deleting.addCallbacks(deleted, refused)

    # Consumers.

    def consumers(self) -> list[dict[str, Any]]:
        """Every consumer group and durable consumer, by topic and name."""
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

    def reset_durable(self, topic: str, name: str, offset: int, who: str) -> dict[str, Any]:
        """Move a durable consumer with no member to `offset` (clamped to
        what the topic holds): it resumes there when it subscribes again."""
        topic_log = self.topic(topic).log
        positions = self.broker.groups.positions
        if positions.get(topic, name) is None:
            raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
        self._refuse_if_live(topic, name)
        at = min(max(offset, topic_log.first_offset), topic_log.next_offset)
        clock = self.broker.clock.seconds()
        positions.put(topic, name, Position(at, delivered=at, touched=clock))
        positions.flush()
        log.warn(
            "{who} reset durable consumer {name!r} of {topic!r} to offset {offset}",
            who=who,
            name=name,
            topic=topic,
            offset=at,
        )
        return self._durable(topic, name)

    def delete_durable(self, topic: str, name: str, who: str) -> None:
        """Forget a durable consumer with no member: its name starts anew."""
        positions = self.broker.groups.positions
        if positions.get(topic, name) is None:
            raise AdminRefused(404, f"no durable consumer {name!r} of topic {topic!r}")
        self._refuse_if_live(topic, name)
        positions.remove(topic, name)
        positions.flush()
        log.warn(
            "{who} deleted durable consumer {name!r} of {topic!r}", who=who, name=name, topic=topic
        )

    def _refuse_if_live(self, topic: str, name: str) -> None:
        """409 while members read the durable consumer; else forget its group
        held here, so that the next member starts from its kept position."""
        groups = self.broker.groups
        for group in groups.of_topic(topic):
            if group.name == name and group.durable and group.members:
                raise AdminRefused(
                    409, f"durable consumer {name!r} has {len(group.members)} member(s) reading"
                )
        groups.drop(topic, name, durable=True)


def _name(topic: Topic) -> str:
    return topic.name


def _message(offset: int, payload: bytes | None) -> dict[str, Any]:
    if payload is None:
        return {"offset": offset, "corrupt": True}
    try:
        return {"offset": offset, "size": len(payload), "data": payload.decode("utf-8")}
    except UnicodeDecodeError:
        encoded = base64.b64encode(payload).decode("ascii")
        return {"offset": offset, "size": len(payload), "data_base64": encoded}
