"""Rates over the last minutes, sampled from the broker's counters
(broker.core.stats) once a second for /varz and the dashboard."""

from __future__ import annotations

from collections import deque

from broker.core.stats import BrokerStats


class RateHistory:
    """Totals sampled once a second, for the rates of the last minutes."""

    def __init__(self, seconds: int = 300) -> None:
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=seconds + 1)

    def sample(self, now: float, stats: BrokerStats) -> None:
        self.samples.append((now, stats.published_messages, stats.delivered_messages))

    def rates(self) -> list[dict[str, float]]:
        """Messages per second published and delivered, between samples."""
        rows = []
        previous = None
        for sample in self.samples:
            if previous is not None and sample[0] > previous[0]:
                elapsed = sample[0] - previous[0]
                rows.append(
                    {
                        "time": round(sample[0], 3),
                        "published": round((sample[1] - previous[1]) / elapsed, 1),
                        "delivered": round((sample[2] - previous[2]) / elapsed, 1),
                    }
                )
            previous = sample
        return rows
