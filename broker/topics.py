"""The topic registry: each topic's log, and the cursors waiting on it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from broker.log import IMessageLog, MemoryLog
from broker.wire import ERR_TOO_MANY_TOPICS, delivery_prefix, extended_delivery_prefix


class Waiter(Protocol):
    """Something that wants to hear when a topic's log grows."""

    def log_grew(self) -> None: ...


class TooManyTopics(Exception):
    """Creating another topic would pass the broker's limit."""

    def __init__(self) -> None:
        super().__init__(ERR_TOO_MANY_TOPICS)


class Topic:
    """A named log and the cursors that have caught up with its end."""

    __slots__ = ("delivery_prefix", "extended_prefix", "log", "name", "waiting")

    def __init__(self, name: str, log: IMessageLog) -> None:
        self.name = name
        self.log = log
        # Computed once: every delivery of this topic starts with it.
        self.delivery_prefix = delivery_prefix(name)
        self.extended_prefix = extended_delivery_prefix(name)
        # An ordered set, so that waiters are woken in the order they waited.
        self.waiting: dict[Waiter, None] = {}

    def append(self, payloads: Sequence[bytes]) -> int:
        """Store a batch and wake everyone waiting once it can be read; return
        the first offset. May raise StoreError."""
        first = self.log.append(payloads)
        if self.log.committed_offset > first:
            self._wake()
        else:
            # A durable log holds the batch back until it is on disk.
            self.log.flush().addCallbacks(lambda _: self._wake(), lambda _: None)
        return first

    def _wake(self) -> None:
        if self.waiting:
            waiting = self.waiting
            self.waiting = {}
            for waiter in waiting:
                waiter.log_grew()

    def wait(self, waiter: Waiter) -> None:
        """Call `waiter.log_grew()` once, after the next append."""
        self.waiting[waiter] = None

    def stop_waiting(self, waiter: Waiter) -> None:
        self.waiting.pop(waiter, None)


class TopicRegistry:
    """Topic name -> Topic, created on first use, up to `max_topics`."""

    def __init__(
        self,
        make_log: Callable[[str], IMessageLog] = lambda name: MemoryLog(),
        max_topics: int = 100_000,
        existing: Iterable[str] = (),
    ) -> None:
        self._make_log = make_log
        self._max_topics = max_topics
        self._topics: dict[str, Topic] = {}
        # Topics a durable store already holds are reopened (and recovered) now.
        for name in existing:
            self._topics[name] = Topic(name, make_log(name))

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._topics.values())

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def get(self, name: str) -> Topic:
        """The topic called `name`, created if need be; may raise TooManyTopics."""
        topic = self._topics.get(name)
        if topic is None:
            if len(self._topics) >= self._max_topics:
                raise TooManyTopics()
            topic = self._topics[name] = Topic(name, self._make_log(name))
        return topic

    def get_all(self, names: Sequence[str]) -> list[Topic]:
        """All the named topics, or none: TooManyTopics before creating any."""
        new = sum(1 for name in set(names) if name not in self._topics)
        if new and len(self._topics) + new > self._max_topics:
            raise TooManyTopics()
        return [self.get(name) for name in names]

    def publish(self, name: str, payloads: Sequence[bytes]) -> int:
        """Append a batch to a topic; return the offset of the first."""
        return self.get(name).append(payloads)

    def close(self) -> None:
        for topic in self._topics.values():
            topic.log.close()
        self._topics.clear()
