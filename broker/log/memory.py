"""A log kept in memory: fast, and lost when the broker stops."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from broker.log.interface import IMessageLog


@implementer(IMessageLog)
class MemoryLog:
    """Payloads in a list; a stored message exists once, here."""

    def __init__(self) -> None:
        self._messages: list[bytes] = []
        self.first_offset = 0

    @property
    def next_offset(self) -> int:
        return self.first_offset + len(self._messages)

    def append(self, payloads: Sequence[bytes]) -> int:
        first = self.next_offset
        self._messages.extend(payloads)
        return first

    def read(self, offset: int, max_messages: int) -> list[bytes]:
        start = offset - self.first_offset
        if start < 0:
            raise IndexError(f"offset {offset} is before the log's start {self.first_offset}")
        return self._messages[start : start + max_messages]

    def flush(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> None:
        self._messages = []
