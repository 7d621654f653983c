"""Exactly-once publishing: each topic remembers the message ids (Msg-Id
headers) of its recent publishes, with the offset each was stored at, so
that a publish sent again (a client resending what a lost connection left
unconfirmed) is not stored twice but confirmed with the first copy's offset.

A window keeps an id for `span` seconds after it was stored, and at most
`max_ids` ids (the oldest go first), so that its memory is bounded whatever
publishers send. After a restart a local store's window is recalled from
the log's tail (see `recall`); the Redis store keeps its own, shared by
every node (broker.log.redis)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from broker.wire.headers import message_id

DEFAULT_DEDUP_WINDOW = 120.0
DEFAULT_DEDUP_MAX_IDS = 1_000_000


class DedupWindow:
    """One topic's recent message ids and their offsets."""

    __slots__ = ("_batches", "_order", "max_ids", "offsets", "span")

    def __init__(self, span: float, max_ids: int) -> None:
        self.span = span
        self.max_ids = max_ids
        self.offsets: dict[bytes, int] = {}
        """Each id remembered, and the offset of the message that carried it."""
        self._order: deque[bytes] = deque()
        """The ids, oldest first."""
        self._batches: deque[list[float | int]] = deque()
        """[time, how many ids] per remembered batch, oldest first."""

    def __len__(self) -> int:
        return len(self.offsets)

    def remember(self, ids: Sequence[tuple[bytes, int]], now: float) -> None:
        """Remember `ids`, (id, offset) pairs stored at `now`."""
        if not ids:
            return
        offsets = self.offsets
        order = self._order
        added = 0
        for mid, offset in ids:
            if mid not in offsets:  # (the first copy's offset stands)
                offsets[mid] = offset
                order.append(mid)
                added += 1
        if not added:
            return
        batches = self._batches
        if batches and batches[-1][0] == now:
            batches[-1][1] += added
        else:
            batches.append([now, added])
        excess = len(order) - self.max_ids
        if excess > 0:
            self._forget_oldest(excess)

    def expire(self, now: float) -> None:
        """Forget the ids stored more than `span` seconds before `now`."""
        batches = self._batches
        cutoff = now - self.span
        while batches and batches[0][0] < cutoff:
            self._forget_oldest(int(batches[0][1]))

    def _forget_oldest(self, count: int) -> None:
        offsets = self.offsets
        order = self._order
        batches = self._batches
        for _ in range(count):
            offsets.pop(order.popleft(), None)
            head = batches[0]
            head[1] -= 1
            if head[1] <= 0:
                batches.popleft()


@dataclass(slots=True)
class Deduplicated:
    """A batch with the publishes already stored taken out: `fresh`, the
    payloads to append; `slots`, for each publish of the batch in order, its
    index among the fresh, or -1 - the offset of the copy already stored."""

    fresh: list[bytes]
    slots: list[int]
    ids: list[tuple[bytes, int]]
    """(id, index among the fresh) of the fresh publishes that carry one."""

    @property
    def duplicates(self) -> int:
        return len(self.slots) - len(self.fresh)

    def offsets(self, first: int) -> list[int | str]:
        """Each publish's offset, once the fresh were appended from `first`."""
        return [first + slot if slot >= 0 else -1 - slot for slot in self.slots]

    def stored_ids(self, first: int) -> list[tuple[bytes, int]]:
        """(id, offset) of the fresh publishes, appended from `first`."""
        return [(mid, first + index) for mid, index in self.ids]


def deduplicate(payloads: Sequence[bytes], window: DedupWindow) -> Deduplicated:
    """Split a batch into what is new and what `window` (or the batch
    itself, earlier on) has stored already."""
    known = window.offsets
    fresh: list[bytes] = []
    slots: list[int] = []
    ids: list[tuple[bytes, int]] = []
    in_batch: dict[bytes, int] = {}
    for payload in payloads:
        mid = message_id(payload)
        if mid is not None:
            offset = known.get(mid)
            if offset is not None:
                slots.append(-1 - offset)
                continue
            index = in_batch.get(mid)
            if index is not None:
                slots.append(index)
                continue
            in_batch[mid] = len(fresh)
            ids.append((mid, len(fresh)))
        slots.append(len(fresh))
        fresh.append(payload)
    return Deduplicated(fresh, slots, ids)


def recall(window: DedupWindow, payloads: Sequence[bytes | None], first: int, now: float) -> None:
    """Remember the ids of stored messages read back from offset `first`
    (a restarted broker reading its log's tail); they are kept for a whole
    span from `now`."""
    window.remember(
        [
            (mid, offset)
            for offset, payload in enumerate(payloads, first)
            if payload is not None and (mid := message_id(payload)) is not None
        ],
        now,
    )
