"""Delays and expiry: a message may say when it may be delivered (a
`Not-Before` header) and until when (`Expires`), both in seconds since the
epoch. A delivery window (broker.core.delivery) looks at them as it hands
a message out: an expired one is skipped, a delayed one is held in `Later`
until it is due. One heap and one timer hold every delayed delivery of the
broker, so a million of them cost a million small entries, not a million
timers."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from broker.wire.headers import EXPIRES, MAY_BE_TIMED, NOT_BEFORE, Headered, Headers, block_facts

NEVER = math.inf


def timing_of(payload: bytes) -> tuple[float, float] | None:
    """(not before, expires) of a message, 0 and NEVER where it says
    nothing; None for one that says neither (most: quick for them). A value
    that is not a number is ignored."""
    if type(payload) is not Headered:
        return None
    if not block_facts(payload.headers) & MAY_BE_TIMED:
        return None
    headers = Headers.of(payload)
    not_before = _seconds(headers.get(NOT_BEFORE), 0.0)
    expires = _seconds(headers.get(EXPIRES), NEVER)
    if not_before == 0.0 and expires == NEVER:
        return None
    return not_before, expires


def any_timed(payloads: Sequence[bytes | None]) -> bool:
    """Whether a run of payloads has a delayed or expiring message."""
    return Headered in map(type, payloads) and any(
        timing_of(payload) is not None for payload in payloads if payload is not None
    )


def _seconds(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) else default


class Later:
    """Deliveries held until they are due, in order of due time (then of
    arrival), under one timer; each is handed to `due(delivery)` then."""

    def __init__(self, clock: IReactorTime, due: Callable[[Any], None]) -> None:
        self._clock = clock
        self._due = due
        self._heap: list[tuple[float, int, Any]] = []
        self._added = 0
        self._call: IDelayedCall | None = None
        self._call_at = NEVER

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, delivery: Any) -> None:
        self._added += 1
        heapq.heappush(self._heap, (when, self._added, delivery))
        if when < self._call_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call_at = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._call_at = NEVER
        heap = self._heap
        now = self._clock.seconds()
        while heap and heap[0][0] <= now:
            _, _, delivery = heapq.heappop(heap)
            self._due(delivery)
        if heap:
            self._arm(heap[0][0])

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_at = NEVER
        self._heap.clear()
