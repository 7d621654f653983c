"""The recent batches of one topic's log, as one node holds them: what it
appended itself and what it last read from a shared store. Subscribers of a
topic on one node follow each other closely, so one read from the store
serves them all, and a batch is never fetched again for each slice of it a
cursor takes."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict

from broker.wire.headers import Headered, with_headers


class BatchCache:
    """Batches by first offset, at most `max_bytes` of payloads; the least
    recently used goes first, so a cursor reading history keeps the batch it
    reads while new appends come and go (the batch just added or read always
    stays, however large). A batch's header blocks are kept beside its
    payloads, which are held as plain bytes (see broker.log.header_table)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._firsts: list[int] = []  # sorted
        self._batches: list[list[bytes]] = []
        self._blocks: list[dict[int, bytes] | None] = []
        """Per batch, its header blocks by index in it (None: none)."""
        self._sizes: list[int] = []
        self._recency: OrderedDict[int, None] = OrderedDict()  # first offsets, least recent first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._firsts)

    def add(self, first: int, payloads: list[bytes], evict: bool = True) -> None:
        """Hold the batch of `payloads` starting at offset `first`; with
        `evict` false, leave it to a later `evict()` to come within bounds."""
        # What it overlaps is older news (the same messages, or ones a shared
        # store lost in a failover and gave the offsets of again): it goes.
        end = first + len(payloads)
        index = bisect_left(self._firsts, first)
        if index and self._firsts[index - 1] + len(self._batches[index - 1]) > first:
            index -= 1
        while index < len(self._firsts) and self._firsts[index] < end:
            self._remove(index)
        size = sum(map(len, payloads))
        blocks = None
        if Headered in map(type, payloads):
            blocks = {at: p.headers for at, p in enumerate(payloads) if type(p) is Headered}
            payloads = [bytes(payload) for payload in payloads]
            size += sum(map(len, blocks.values()))
        self._firsts.insert(index, first)
        self._batches.insert(index, payloads)
        self._blocks.insert(index, blocks)
        self._sizes.insert(index, size)
        self._recency[first] = None
        self.bytes += size
        if evict:
            self.evict(keep=first)

    def evict(self, keep: int | None = None) -> None:
        """Come within bounds, least recently used first; the batch starting
        at `keep` (else the one used last) stays, however large."""
        recency = self._recency
        if keep is None and recency:
            keep = next(reversed(recency))
        while self.bytes > self.max_bytes and len(recency) > 1:
            oldest = iter(recency)
            victim = next(oldest)
            if victim == keep:
                victim = next(oldest)
            self._remove(bisect_left(self._firsts, victim))

    def read(self, offset: int, max_messages: int) -> list[bytes] | None:
        """Up to `max_messages` payloads from `offset` on, across batches
        that follow each other; None if the batch holding `offset` is not here."""
        index = bisect_right(self._firsts, offset) - 1
        if index < 0:
            return None
        first, batch = self._firsts[index], self._batches[index]
        if offset >= first + len(batch):
            return None
        taken = self._taken(index, offset - first, max_messages)
        self._recency.move_to_end(first)
        end = first + len(batch)
        index += 1
        while len(taken) < max_messages and index < len(self._firsts):
            if self._firsts[index] != end:
                break
            batch = self._batches[index]
            taken.extend(self._taken(index, 0, max_messages - len(taken)))
            self._recency.move_to_end(end)
            end += len(batch)
            index += 1
        return taken

    def _taken(self, index: int, start: int, count: int) -> list[bytes]:
        """Up to `count` payloads of batch `index` from its `start`th, with
        their headers."""
        taken = self._batches[index][start : start + count]
        blocks = self._blocks[index]
        if blocks is not None:
            for at in range(len(taken)):
                block = blocks.get(start + at)
                if block is not None:
                    taken[at] = with_headers(taken[at], block)
        return taken

    def drop_before(self, offset: int) -> None:
        """Forget batches that end at or before `offset` (retention took them)."""
        while self._firsts and self._firsts[0] + len(self._batches[0]) <= offset:
            self._remove(0)

    def forget_from(self, offset: int) -> None:
        """Forget batches that reach past `offset` (the store lost them)."""
        while self._firsts and self._firsts[-1] + len(self._batches[-1]) > offset:
            self._remove(len(self._firsts) - 1)

    def clear(self) -> None:
        self._firsts.clear()
        self._batches.clear()
        self._blocks.clear()
        self._sizes.clear()
        self._recency.clear()
        self.bytes = 0

    def _remove(self, index: int) -> None:
        self.bytes -= self._sizes.pop(index)
        del self._recency[self._firsts[index]]
        del self._firsts[index], self._batches[index], self._blocks[index]
