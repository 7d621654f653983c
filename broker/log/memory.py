"""Logs kept in memory: fast, bounded by their retention, lost when the
broker stops; and the store that makes them."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from broker.log.header_table import HeaderTable
from broker.log.interface import IMessageLog, IMessageStore, OneNodeStore, Retention
from broker.log.positions import PositionStore
from broker.wire import total_size

# Bounds the memory store when the operator sets no limit: 256 MiB of
# payloads per topic (about two million 100-byte messages).
DEFAULT_MEMORY_RETENTION = Retention(max_bytes=256 * 1024 * 1024)


@implementer(IMessageLog)
class MemoryLog:
    """Payloads in a list; a stored message exists once, here (its header
    block, if it has one, beside it in a HeaderTable).

    The head is trimmed by advancing an index, and the list is compacted
    only once the dead part is large, so trimming stays O(1) per message.
    """

    def __init__(
        self,
        retention: Retention = DEFAULT_MEMORY_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._retention = retention
        self._clock = clock
        self._messages: list[bytes | None] = []
        """Payloads by offset (None: dropped by compaction, a gap)."""
        self._headers = HeaderTable()
        self.headered = False
        self.keyed = False
        """Whether it ever held a message with headers."""
        self._start = 0  # index in _messages of the oldest message held
        self._base = 0  # offset of _messages[0]
        self.bytes_held = 0
        self.keep_from: int | None = None
        self.opening: Deferred[None] | None = None
        """Retention by count keeps messages from here on (durable consumers)."""
        # (first offset, time) of each appended batch held: for retention by
        # age and for finding an offset by time.
        self._batches: deque[tuple[int, float]] = deque()

    @property
    def first_offset(self) -> int:
        return self._base + self._start

    @property
    def next_offset(self) -> int:
        return self._base + len(self._messages)

    committed_offset = next_offset

    def append(self, payloads: Sequence[bytes], headered: bool = True) -> int:
        first = self.next_offset
        if headered:
            headers = self._headers
            held_before = headers.bytes
            payloads = headers.take(first, payloads)
            self.bytes_held += headers.bytes - held_before
            self.headered = self.headered or bool(headers)
        self._messages.extend(payloads)
        self.bytes_held += total_size(payloads)
        self._batches.append((first, self._clock()))
        self._trim_to_limits()
        return first

    def read(self, offset: int, max_messages: int) -> list[bytes | None]:
        start = offset - self._base
        if start < self._start:
            raise IndexError(f"offset {offset} is before the log's start {self.first_offset}")
        read = self._messages[start : start + max_messages]
        return self._headers.give(offset, read) if self.headered else read

    def watch(self, grew: Callable[[], None]) -> None:
        """Nothing else appends to this log."""

    def flush(self) -> Deferred[None]:
        return succeed(None)

    def apply_retention(self, now: float) -> int:
        before = self.first_offset
        max_age = self._retention.max_age
        if max_age is not None:
            batches = self._batches
            while batches and batches[0][1] < now - max_age:
                batches.popleft()
                self._drop_until(batches[0][0] if batches else self.next_offset)
        self._trim_to_limits()
        return self.first_offset - before

    def offset_at(self, when: float) -> int:
        batches = self._batches
        index = bisect_left(batches, when, key=_batch_time)
        if index == len(batches):
            return self.next_offset
        return max(batches[index][0], self.first_offset)

    def compact(self, dropped: Sequence[int], now: bool = False) -> list[int]:
        """In place: each dropped message's slot holds None from now on."""
        messages = self._messages
        headers = self._headers
        done: list[int] = []
        freed = 0
        for offset in dropped:
            index = offset - self._base
            if index < self._start or index >= len(messages):
                continue
            payload = messages[index]
            if payload is None:
                continue
            messages[index] = None
            freed += len(payload) + headers.discard(offset)
            done.append(offset)
        self.bytes_held -= freed
        return done

    def purge(self) -> int:
        dropped = self.next_offset - self.first_offset
        self._drop_until(self.next_offset)
        self._batches.clear()
        return dropped

    def close(self) -> None:
        self._messages = []
        self._headers.clear()
        self._start = 0
        self.bytes_held = 0

    def _trim_to_limits(self) -> None:
        retention = self._retention
        held = len(self._messages) - self._start
        if retention.max_messages is not None and held > retention.max_messages:
            until = self.next_offset - retention.max_messages
            if self.keep_from is not None:
                until = min(until, self.keep_from)  # what durable consumers have not acked
            self._drop_until(until)
        if retention.max_bytes is not None and self.bytes_held > retention.max_bytes:
            messages = self._messages
            index = self._start
            excess = self.bytes_held - retention.max_bytes
            headers = self._headers
            while excess > 0:
                kept = messages[index]
                excess -= len(kept) if kept is not None else 0
                if headers:
                    excess -= headers.size_at(self._base + index)
                index += 1
            self._drop_until(self._base + index)

    def _drop_until(self, offset: int) -> None:
        """Forget every message before `offset`."""
        end = offset - self._base
        if end <= self._start:
            return
        messages = self._messages
        headers = self._headers
        self.bytes_held -= (
            sum(len(held) for held in messages[self._start : end] if held is not None)
            + headers.bytes
        )
        headers.drop_before(offset)
        self.bytes_held += headers.bytes
        for index in range(self._start, end):
            messages[index] = b""  # release the payload now
        self._start = end
        batches = self._batches
        while len(batches) > 1 and batches[1][0] <= offset:
            batches.popleft()  # held no message any more
        if self._start > 4096 and self._start * 2 > len(messages):
            del messages[: self._start]
            self._base += self._start
            self._start = 0


def _batch_time(batch: tuple[int, float]) -> float:
    return batch[1]


@implementer(IMessageStore)
class MemoryStore(OneNodeStore):
    """Every topic in memory, each log bounded by `retention`; durable
    positions in memory too."""

    kind = "memory"

    def __init__(
        self,
        retention: Retention = DEFAULT_MEMORY_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._retention = retention
        self._clock = clock
        self.positions = PositionStore()

    def start(self) -> None:
        pass

    def open(self, name: str) -> MemoryLog:
        return MemoryLog(self._retention, clock=self._clock)

    def held_topics(self) -> Iterable[str]:
        return ()

    def sync(self) -> None:
        pass

    def delete(self, name: str) -> None:
        pass  # its log held everything, and is gone with its topic

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def close(self) -> Deferred[None]:
        return succeed(None)
