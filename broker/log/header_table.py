"""Header blocks kept beside a log's payloads, by offset, so that what a log
holds for a long time is plain bytes.

A payload with headers travels as a `Headered` (a bytes subclass carrying
its block), and every instance of a Python subclass is watched by the
cyclic garbage collector: a million of them held in a log made each new
object cost five times as much (1.75 µs instead of 0.36 µs, measured).
So a log takes them apart as it stores them (the payload's plain bytes
in its list, the block here) and puts them together again as it reads,
for the short while a delivery lives."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from broker.wire.headers import Headered, is_lone_id


class HeaderTable:
    """offset -> header block, for the offsets of a log that have one."""

    __slots__ = ("_blocks", "_offsets", "bytes")

    def __init__(self) -> None:
        self._blocks: dict[int, bytes] = {}
        self._offsets: deque[int] = deque()
        """The same offsets, ascending: the oldest are dropped first."""
        self.bytes = 0
        """Bytes of the blocks held."""

    def __bool__(self) -> bool:
        return bool(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def take(self, first: int, payloads: Sequence[bytes]) -> Sequence[bytes]:
        """`payloads` (appended from offset `first`) as plain bytes, their
        blocks kept here; the same sequence if none has headers. A block
        that is only a message id is not kept: the id has done its work (the
        topic's dedup window holds it), and its message reads as plain bytes."""
        if Headered not in map(type, payloads):
            return payloads
        plain: list[bytes] = []
        blocks = self._blocks
        offsets = self._offsets
        for offset, payload in enumerate(payloads, first):
            if type(payload) is Headered:
                block = payload.headers
                if not is_lone_id(block):
                    blocks[offset] = block
                    offsets.append(offset)
                    self.bytes += len(block)
                payload = bytes(payload)
            plain.append(payload)
        return plain

    def give(self, first: int, payloads: list[bytes | None]) -> list[bytes | None]:
        """Payloads read from offset `first`, with their headers again (a
        gap, None, has none)."""
        blocks = self._blocks
        if not blocks:
            return payloads
        given = list(payloads)  # (the caller's list may be the log's own slice)
        found = blocks.get
        for offset, payload in enumerate(payloads, first):
            block = found(offset)
            if block is not None and payload is not None:
                headered = Headered(payload)  # (with_headers, inline: once per read message)
                headered.headers = block
                given[offset - first] = headered
        return given

    def size_at(self, offset: int) -> int:
        """Bytes of the block at `offset` (0 if none)."""
        block = self._blocks.get(offset)
        return 0 if block is None else len(block)

    def drop_before(self, offset: int) -> None:
        """Forget the blocks of offsets before `offset`."""
        offsets = self._offsets
        blocks = self._blocks
        while offsets and offsets[0] < offset:
            self.bytes -= len(blocks.pop(offsets.popleft(), b""))

    def discard(self, offset: int) -> int:
        """Forget the block of `offset` (compaction dropped its message);
        its size (0 if it had none). Its place in the order goes with the
        offsets around it."""
        block = self._blocks.pop(offset, None)
        if block is None:
            return 0
        self.bytes -= len(block)
        return len(block)

    def clear(self) -> None:
        self._blocks.clear()
        self._offsets.clear()
        self.bytes = 0
