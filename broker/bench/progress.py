"""A progress bar on a terminal, for long bench runs."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall

if TYPE_CHECKING:
    from broker.bench.protocols import BenchSubscriber


class Progress:
    """A progress bar on stderr while messages arrive, if stderr is a terminal."""

    def __init__(self, reactor: Any, subscribers: list[BenchSubscriber]) -> None:
        self._subscribers = subscribers
        self._total = sum(s.expected for s in subscribers)
        self._loop = LoopingCall(self._show)
        self._loop.clock = reactor
        self._started = time.perf_counter()
        self._on = sys.stderr.isatty() and self._total > 0

    def __enter__(self) -> Progress:
        if self._on:
            self._loop.start(0.25)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._on:
            self._loop.stop()
            self._show()
            sys.stderr.write("\n")

    def _show(self) -> None:
        done = sum(s.received for s in self._subscribers)
        fraction = done / self._total
        rate = done / max(1e-9, time.perf_counter() - self._started)
        bar = "#" * int(fraction * 30)
        sys.stderr.write(f"\r[{bar:<30}] {fraction:6.1%} {done}/{self._total} {rate:,.0f} msg/s")
        sys.stderr.flush()
