"""The incremental decoder's engine: one buffer walked with an offset by a
small state machine, so that a frame split across reads in any way, or
many frames in one read, decode the same and no frame costs a copy. A
length beyond its limit is skipped as it arrives, never buffered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# A state reads what it needs at `pos` of `data` and returns the new position.
# It runs only when at least `_need` bytes are there (the skipping state
# consumes whatever part of its remainder has arrived).
DecoderState = Callable[[bytes, int], int]


class FrameDecoder:
    """One buffer walked by a small state machine."""

    _state: DecoderState
    _need: int

    def __init__(self) -> None:
        self._held = bytearray()
        self.progress = 0
        """Counts the reads that completed at least one step of a frame."""
        self._skip_left = 0
        self._after_skip: tuple[DecoderState, int] | None = None
        self._on_hold: tuple[DecoderState, int] | None = None

    def feed(self, data: bytes) -> None:
        """Decode as much as `data` (appended to what is held) allows."""
        held = self._held
        if held:
            held += data
            if len(held) < self._need:
                return
            data = bytes(held)
            held.clear()
        elif len(data) < self._need:
            held += data
            return
        self.progress += 1
        pos = 0
        end = len(data)
        while end - pos >= self._need:
            pos = self._state(data, pos)
        if pos < end:
            held += memoryview(data)[pos:]

    def discard(self) -> None:
        """Let go at once of what is held: the connection is gone. A decoder
        is in a reference cycle of its own (its state is one of its bound
        methods), so its buffer would otherwise wait for a garbage
        collection, which an idle process may not run for a long time."""
        self._held = bytearray()
        self._on_hold = None
        self._goto(self._state, sys.maxsize)

    def hold(self) -> None:
        """Decode nothing after the current step until `release`: what comes
        meanwhile is kept as it is. Costs the decoding loop nothing: the
        step waited for is one no input can complete."""
        if self._on_hold is None:
            self._on_hold = (self._state, self._need)
            self._goto(self._state, sys.maxsize)

    def release(self) -> None:
        """Decode again, starting with what was kept."""
        if self._on_hold is not None:
            self._goto(*self._on_hold)
            self._on_hold = None
            self.feed(b"")

    @property
    def on_hold(self) -> bool:
        return self._on_hold is not None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (bounded by the limits)."""
        return len(self._held)

    @property
    def missing(self) -> int:
        """Bytes the step being decoded still waits for (0 if none is held)."""
        held = len(self._held)
        return self._need - held if held and self._on_hold is None else 0

    def _goto(self, state: DecoderState, need: int) -> None:
        self._state = state
        self._need = need

    def _skip(self, count: int, then: DecoderState, need: int) -> None:
        """Drop the next `count` bytes as they arrive, then go to `then`."""
        if count == 0:
            self._goto(then, need)
            return
        self._skip_left = count
        self._after_skip = (then, need)
        self._goto(self._skipping, 1)

    def _skipping(self, data: bytes, pos: int) -> int:
        taken = min(self._skip_left, len(data) - pos)
        self._skip_left -= taken
        if self._skip_left == 0:
            assert self._after_skip is not None
            self._goto(*self._after_skip)
            self._after_skip = None
        return pos + taken
