"""The topic registry: each topic's log, and the cursors waiting on it."""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from broker.log import IMessageLog, MemoryLog
from broker.names import is_inbox
from broker.subjects import PatternIndex
from broker.wire import ERR_TOO_MANY_TOPICS, delivery_prefix, extended_delivery_prefix


class Waiter(Protocol):
    """Something that wants to hear when a topic's log grows."""

    def log_grew(self) -> None: ...


class PatternHolder(Protocol):
    """Something that wants to hear of every new topic its pattern matches."""

    def __hash__(self) -> int: ...

    def topic_created(self, topic: Topic) -> None: ...


class TooManyTopics(Exception):
    """Creating another topic would pass the broker's limit."""

    def __init__(self) -> None:
        super().__init__(ERR_TOO_MANY_TOPICS)


# Batches whose append time a topic remembers (for lag in seconds and rates).
APPEND_TIMES = 1024


class Topic:
    """A named log, the cursors that have caught up with its end, and when
    its recent batches were appended."""

    __slots__ = (
        "_batch_offsets",
        "_batch_times",
        "_clock",
        "compacted",
        "delivery_prefix",
        "extended_prefix",
        "log",
        "name",
        "waiting",
        "watched",
    )

    def __init__(self, name: str, log: IMessageLog, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.log = log
        self._clock = clock
        # First offset and time of recent batches, oldest first (at most
        # twice APPEND_TIMES, trimmed by halves).
        self._batch_offsets: list[int] = []
        self._batch_times: list[float] = []
        # Computed once: every delivery of this topic starts with it.
        self.delivery_prefix = delivery_prefix(name)
        self.extended_prefix = extended_delivery_prefix(name)
        # An ordered set, so that waiters are woken in the order they waited.
        self.waiting: dict[Waiter, None] = {}
        self.watched = False
        """Whether the log was asked to tell of appends made elsewhere."""
        self.compacted = False
        """Whether the latest message of each key is what it keeps (broker.core.keys)."""

    def append(self, payloads: Sequence[bytes], headered: bool = True) -> int | Deferred[int]:
        """Store a batch and wake everyone waiting once it can be read; return
        the first offset, or a Deferred of it (a networked store). May raise
        StoreError, or fail with it."""
        first = self.log.append(payloads, headered)
        if isinstance(first, int):  # (not of Deferred: an ABC's check costs more)
            return self._appended(first)
        return first.addCallback(self._appended_later)

    def _appended_later(self, outcome: int | list[int]) -> int | list[int]:
        """A networked store's answer: the first offset, or each payload's
        (some were stored already: their message ids)."""
        if isinstance(outcome, list):
            self._wake()
            return outcome
        return self._appended(outcome)

    def _appended(self, first: int) -> int:
        offsets = self._batch_offsets
        offsets.append(first)
        self._batch_times.append(self._clock())
        if len(offsets) > 2 * APPEND_TIMES:
            del offsets[:APPEND_TIMES], self._batch_times[:APPEND_TIMES]
        if self.log.committed_offset > first:
            self._wake()
        else:
            # A durable log holds the batch back until it is on disk.
            self.log.flush().addCallbacks(lambda _: self._wake(), lambda _: None)
        return first

    def appended_at(self, offset: int) -> float | None:
        """When the message at `offset` was appended, as far as the recent
        batches tell: for an older one, the oldest time known (a lower
        bound of its age); None if no batch is known."""
        index = bisect_right(self._batch_offsets, offset) - 1
        if not self._batch_times:
            return None
        return self._batch_times[max(index, 0)]

    def rate(self, seconds: float = 10.0) -> float:
        """Messages per second appended over the last `seconds`."""
        times = self._batch_times
        if not times:
            return 0.0
        since = self._clock() - seconds
        index = bisect_right(times, since)
        if index >= len(times):
            return 0.0
        return (self.log.next_offset - self._batch_offsets[index]) / seconds

    def _wake(self) -> None:
        if self.waiting:
            waiting = self.waiting
            self.waiting = {}
            for waiter in waiting:
                waiter.log_grew()

    def wait(self, waiter: Waiter) -> None:
        """Call `waiter.log_grew()` once, after the next append (here or,
        with a shared store, on another node)."""
        self.waiting[waiter] = None
        if not self.watched:
            self.watched = True
            self.log.watch(self._wake)

    def stop_waiting(self, waiter: Waiter) -> None:
        self.waiting.pop(waiter, None)


class TopicRegistry:
    """Topic name -> Topic, created on first use, up to `max_topics`."""

    def __init__(
        self,
        make_log: Callable[[str], IMessageLog] = lambda name: MemoryLog(),
        max_topics: int = 100_000,
        existing: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        shared_names: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self._make_log = make_log
        self.is_compacted: Callable[[str], bool] = lambda name: False
        """Whether a topic made now is compacted (the broker says)."""
        self._shared_names = shared_names
        """Every topic a shared store holds, whichever node made it."""
        self._max_topics = max_topics
        self._clock = clock
        self._topics: dict[str, Topic] = {}
        self.patterns: PatternIndex[PatternHolder] = PatternIndex()
        """Pattern subscriptions, told of each topic created that they match."""
        self._awaited: dict[str, dict[PatternHolder, None]] = {}
        """Subscriptions to topics that do not exist yet, by name: they cost
        no topic, and are told when a publish creates theirs."""
        self.reopen(existing)

    def reopen(self, names: Iterable[str]) -> None:
        """Open the topics a durable store holds (recovering each), whatever
        the limit on topics: they exist already."""
        for name in names:
            if name not in self._topics:
                self._topics[name] = self._made(name)

    def _made(self, name: str) -> Topic:
        topic = Topic(name, self._make_log(name), self._clock)
        topic.compacted = topic.log.keyed = self.is_compacted(name)
        return topic

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
            topic = self._topics[name] = self._made(name)
            if len(self.patterns) and not is_inbox(name):  # (no pattern reads an inbox)
                for holder in self.patterns.match(name):
                    holder.topic_created(topic)
            awaiting = self._awaited.pop(name, None)
            if awaiting:
                for holder in awaiting:
                    holder.topic_created(topic)
        return topic

    def exists(self, name: str) -> bool:
        """Whether topic `name` is open here or held by a shared store (an
        inbox always is: subscribing makes it, so that replies find it)."""
        return name in self._topics or is_inbox(name) or name in self._shared_names()

    def await_topic(self, name: str, holder: PatternHolder) -> None:
        """Tell `holder` when topic `name` (which does not exist) is created."""
        self._awaited.setdefault(name, {})[holder] = None

    def stop_awaiting(self, name: str, holder: PatternHolder) -> None:
        awaiting = self._awaited.get(name)
        if awaiting is not None:
            awaiting.pop(holder, None)
            if not awaiting:
                del self._awaited[name]

    @property
    def awaited(self) -> int:
        """Names subscribed to that no topic has yet."""
        return len(self._awaited)

    def discover(self, name: str) -> None:
        """Another node made topic `name` in the shared store: open it here
        if a pattern or a subscription here waits for it (which then takes
        it from its start)."""
        if name in self._topics:
            return
        if name in self._awaited or (len(self.patterns) and self.patterns.match(name)):
            self._open_quietly(name)

    def open_shared(self, index: PatternIndex) -> None:
        """Open the topics of the shared store that `index` matches and that
        are not open here yet (before new patterns walk the topics)."""
        for name in list(self._shared_names()):
            if name not in self._topics and index.match(name):
                self._open_quietly(name)

    def _open_quietly(self, name: str) -> None:
        # A pattern takes topics up to the limit, as any subscribe does.
        with contextlib.suppress(TooManyTopics):
            self.get(name)

    def get_all(self, names: Sequence[str]) -> list[Topic]:
        """All the named topics, or none: TooManyTopics before creating any."""
        new = sum(1 for name in set(names) if name not in self._topics)
        if new and len(self._topics) + new > self._max_topics:
            raise TooManyTopics()
        return [self.get(name) for name in names]

    def publish(self, name: str, payloads: Sequence[bytes]) -> int | Deferred[int]:
        """Append a batch to a topic; return the offset of the first (or a
        Deferred of it)."""
        return self.get(name).append(payloads)

    def remove(self, name: str) -> Topic | None:
        """Forget topic `name` and close its log (an operator deleted it;
        nothing may read it any more); the topic, or None if there was none."""
        topic = self._topics.pop(name, None)
        if topic is not None:
            topic.log.close()
        return topic

    def close(self) -> None:
        for topic in self._topics.values():
            topic.log.close()
        self._topics.clear()
