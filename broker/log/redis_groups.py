"""A consumer group's cursor kept in Redis, so that a group's members on
different broker nodes share its messages, and a durable consumer's place
survives any node.

Each group of a topic is a Redis Streams consumer group on the topic's log;
each node is one consumer in it (named after the node, so a restarted node
takes back what it had claimed). A node claims whole batches with
XREADGROUP as its members have room, hands their messages to its members
(broker.core.groups does that), and acknowledges a batch with XACK once every
message of it is done. What a node that died had claimed is claimed by
another with XAUTOCLAIM once it has been idle `claim_idle` seconds; a node
keeps its own claims fresh meanwhile. Delivery is at least once: a batch
claimed again is delivered again whole.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.log.redis_settings import RedisStoreSettings, TopicKeys, unpack_batch

log = Logger()

# Batches claimed at once.
CLAIM_BATCHES = 8


class GrowingTopic(Protocol):
    """The topic a group cursor reads (broker.core.topics.Topic, in the layer
    above the logs): it wakes its waiters when it grows."""

    def wait(self, waiter: Any) -> None: ...

    def stop_waiting(self, waiter: Any) -> None: ...


class GroupCalls(Protocol):
    """What a group cursor asks of the Redis store (broker.log.redis.RedisStore,
    which builds on this module: named here, so that it need not import it)."""

    @property
    def settings(self) -> RedisStoreSettings: ...

    def read_group(
        self, topic_log: GroupedLog, group: str, from_id: bytes, count: int, start: tuple[str, int]
    ) -> Deferred[list]: ...

    def ack_group(self, topic_log: GroupedLog, group: str, entry_ids: list[bytes]) -> None: ...

    def claim_group(
        self, topic_log: GroupedLog, group: str, held: list[bytes], count: int
    ) -> Deferred[list]: ...


class GroupedLog(Protocol):
    """What a group cursor knows of its topic's log (broker.log.redis.RedisLog)."""

    @property
    def name(self) -> str: ...

    @property
    def keys(self) -> TopicKeys: ...

    @property
    def store(self) -> GroupCalls: ...


@dataclass(eq=False)
class _Claimed:
    """A batch this node claimed: what it has handed out and what is done."""

    entry_id: bytes
    first: int
    payloads: list[bytes]
    handed: int = 0
    open: set[int] = field(default_factory=set)


def entry_first(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0]) - 1


class RedisGroupCursor:
    """Takes the next message of a group's batches claimed by this node."""

    def __init__(
        self,
        topic: GrowingTopic,
        topic_log: GroupedLog,
        group: str,
        start: tuple[str, int],
        wake: Callable[[], None],
        clock: IReactorTime,
    ) -> None:
        self._topic = topic
        self._log = topic_log
        self._store = topic_log.store
        self.group = group
        self._start = start
        """Where a group that does not exist yet starts: ("beginning"|"current"|"from", offset)."""
        skip_below = start[1] if start[0] == "from" else 0
        self._skip_below = skip_below
        self._wake = wake
        self._clock = clock
        self.position = skip_below
        """The offset after the last message handed out (for lag)."""
        self._queue: deque[_Claimed] = deque()  # claimed, not all handed out
        self._held: dict[int, _Claimed] = {}  # claimed, not all done, by first offset
        self._firsts: list[int] = []  # sorted keys of _held
        self._reading_from: bytes | None = b"0"  # our own pending first, then ">"
        self._fetching = False
        self._closed = False
        self._timer: IDelayedCall | None = None
        self._schedule_claims()

    # What the group asks.

    def take(self) -> tuple[int, bytes] | None:
        queue = self._queue
        while queue:
            claimed = queue[0]
            while claimed.handed < len(claimed.payloads):
                index = claimed.handed
                claimed.handed += 1
                offset = claimed.first + index
                if offset < self._skip_below:
                    self._finish(claimed, offset)
                    continue
                self.position = max(self.position, offset + 1)
                return offset, claimed.payloads[index]
            queue.popleft()
        self._fetch()
        return None

    def done(self, offset: int) -> None:
        """The message at `offset` was acked (or given up on)."""
        index = bisect_right(self._firsts, offset) - 1
        if index >= 0:
            claimed = self._held.get(self._firsts[index])
            if claimed is not None:
                self._finish(claimed, offset)

    def log_grew(self) -> None:
        self._fetch()

    def close(self) -> None:
        """Stop claiming; what is claimed and not done stays pending in Redis
        (this node takes it back if it joins again; others after claim_idle)."""
        self._closed = True
        self._topic.stop_waiting(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Claiming.

    def _fetch(self) -> None:
        if self._fetching or self._closed:
            return
        self._fetching = True
        reading = self._store.read_group(
            self._log, self.group, self._reading_from or b">", CLAIM_BATCHES, self._start
        )
        reading.addCallbacks(self._fetched, self._fetch_failed)

    def _fetched(self, entries: list) -> None:
        self._fetching = False
        if self._closed:
            return
        taken = self._take_entries(entries)
        if self._reading_from is not None:
            # Paging through our own pending claims (a restart): then new ones.
            self._reading_from = entries[-1][0] if entries else None
            if entries:
                self._fetch()
            if taken:
                self._wake()
            elif not entries:
                self._fetch()
            return
        if taken:
            self._wake()
        else:
            self._topic.wait(self)  # nothing new: until the topic grows

    def _take_entries(self, entries: list) -> int:
        taken = 0
        for entry_id, fields in entries:
            if not fields:  # retention removed it while it was pending
                self._store.ack_group(self._log, self.group, [entry_id])
                continue
            first = entry_first(entry_id)
            if first in self._held:
                continue  # ours already (a claim that came back to us)
            payloads = unpack_batch(int(fields[b"n"]), fields[b"b"])
            claimed = _Claimed(entry_id, first, payloads, open=set(range(len(payloads))))
            self._held[first] = claimed
            insort(self._firsts, first)
            self._queue.append(claimed)
            taken += 1
        return taken

    def _fetch_failed(self, failure: Failure) -> None:
        self._fetching = False
        log.warn(
            "group {group!r} of {topic!r}: claiming from Redis failed: {error}",
            group=self.group,
            topic=self._log.name,
            error=failure.value,
        )
        if not self._closed:
            self._topic.wait(self)  # tried again when the topic grows or Redis is back

    def _finish(self, claimed: _Claimed, offset: int) -> None:
        claimed.open.discard(offset - claimed.first)
        if not claimed.open and claimed.handed >= len(claimed.payloads):
            del self._held[claimed.first]
            self._firsts.remove(claimed.first)
            self._store.ack_group(self._log, self.group, [claimed.entry_id])

    # What other nodes left behind, and keeping our own claims.

    def _schedule_claims(self) -> None:
        interval = self._store.settings.claim_idle / 2
        self._timer = self._clock.callLater(interval, self._claims_due)

    def _claims_due(self) -> None:
        self._timer = None
        if self._closed:
            return
        held = [claimed.entry_id for claimed in self._held.values()]
        claiming = self._store.claim_group(self._log, self.group, held, CLAIM_BATCHES)
        claiming.addCallbacks(self._claimed, self._fetch_failed)
        claiming.addBoth(lambda _: self._schedule_claims() if not self._closed else None)

    def _claimed(self, entries: list) -> None:
        if self._closed:
            return
        if self._take_entries(entries):
            log.info(
                "group {group!r} of {topic!r}: took over {n} batch(es) another node left",
                group=self.group,
                topic=self._log.name,
                n=len(entries),
            )
            self._wake()
