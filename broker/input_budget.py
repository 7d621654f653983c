"""A broker-wide budget for the bytes held in incomplete frames.

Each connection may hold one incomplete frame of up to --max-message-size;
a thousand connections that each stop one byte short of a 1 MiB frame would
hold a gigabyte between them. The budget caps the sum: past it, the broker
stops reading from the connections holding the largest incomplete frames,
until the ones still reading hold at most half the budget; once the total
is back under half, every paused connection reads again. Paused frames
still age: --frame-timeout closes those that never complete, which is how
an attack's share of the budget is freed.
"""

from __future__ import annotations

from typing import Protocol


class InputReader(Protocol):
    """A connection whose reading the budget can pause."""

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...


class InputBudget:
    """Bytes held in incomplete frames across connections, kept near `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[InputReader, int] = {}
        self._paused: set[InputReader] = set()

    @property
    def paused(self) -> int:
        """Connections not read from because of the budget."""
        return len(self._paused)

    def held_by(self, reader: InputReader) -> int:
        return self._held.get(reader, 0)

    def update(self, reader: InputReader, held: int) -> None:
        """`reader` now holds `held` bytes of an incomplete frame."""
        before = self._held.pop(reader, 0)
        if held:
            self._held[reader] = held
        self.total += held - before
        if self.total > self.limit:
            self._shed()
        elif self._paused and self.total <= self.limit // 2:
            self._resume_all()

    def remove(self, reader: InputReader) -> None:
        """`reader` is gone: what it held is free."""
        self._paused.discard(reader)
        self.update(reader, 0)

    def _shed(self) -> None:
        held = self._held
        reading = [reader for reader in held if reader not in self._paused]
        reading.sort(key=held.__getitem__, reverse=True)
        still = sum(held[reader] for reader in reading)
        for reader in reading:
            if still <= self.limit // 2:
                break
            still -= held[reader]
            self._paused.add(reader)
            reader.pause_input()

    def _resume_all(self) -> None:
        paused, self._paused = self._paused, set()
        for reader in paused:
            reader.resume_input()
