"""A broker-wide budget for the bytes held in incomplete frames.

Each connection may hold one incomplete frame of up to --max-message-size;
a thousand connections that each stop one byte short of a 1 MiB frame would
hold a gigabyte between them. The budget caps the sum:

- Past the limit, a connection whose read leaves it holding part of a frame
  is no longer read from, so the total grows by at most one read (64 KiB)
  per connection beyond the limit.
- Paused connections are read again closest to completion first, while the
  bytes they still miss fit under the limit; and when no holder is being
  read at all, the one closest to completion is read anyway, so that frames
  keep completing (and freeing their bytes) under a legitimate burst. That
  overdraft is one frame at most.
- Paused frames still age: --frame-timeout closes those that never complete,
  which is how an attack's share of the budget is given back.

So the bytes held stay under the limit plus one frame plus one read per
connection.
"""

from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

log = Logger()


class InputReader(Protocol):
    """A connection whose reading the budget can pause."""

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...


class InputBudget:
    """Bytes held in incomplete frames across connections, kept near `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        # reader -> (bytes held, bytes its frame still misses)
        self._held: dict[InputReader, tuple[int, int]] = {}
        self._paused: set[InputReader] = set()

    @property
    def paused(self) -> int:
        """Connections not read from because of the budget."""
        return len(self._paused)

    def update(self, reader: InputReader, held: int, missing: int = 0) -> None:
        """After a read, `reader` holds `held` bytes of a frame that still
        misses `missing` bytes (0 and 0: it holds no incomplete frame)."""
        before = self._held.pop(reader, (0, 0))[0]
        if held:
            self._held[reader] = (held, missing)
        self.total += held - before
        if held and self.total > self.limit and reader not in self._paused:
            if not self._paused:
                log.warn(
                    "incomplete frames hold {total} bytes, over --max-pending-input "
                    "({limit}); pausing the connections that hold them",
                    total=self.total,
                    limit=self.limit,
                )
            self._paused.add(reader)
            reader.pause_input()
        if self._paused and (held < before or reader in self._paused):
            self._resume_closest()

    def remove(self, reader: InputReader) -> None:
        """`reader` is gone: what it held is free."""
        self._paused.discard(reader)
        self.update(reader, 0)

    def _resume_closest(self) -> None:
        held = self._held
        paused = self._paused
        reading = [item for reader, item in held.items() if reader not in paused]
        # What the connections still read from will add before they complete.
        expected = self.total + sum(missing for _, missing in reading)
        anyone_reading = bool(reading)
        for reader in sorted(paused, key=lambda r: held.get(r, (0, 0))[1]):
            missing = held.get(reader, (0, 0))[1]
            if expected + missing > self.limit and anyone_reading:
                break
            paused.discard(reader)
            expected += missing
            anyone_reading = True
            reader.resume_input()
