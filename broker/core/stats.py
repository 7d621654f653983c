"""The broker's own counters: plain integers, bumped once per batch where
the hot paths already batch, read by the metrics and the JSON endpoints.

Counting costs an integer addition per read or per pump, not a lock or a
call per message; prometheus_client reads these at scrape time. They live
in the core because the hot paths write them; monitoring only reads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram

# Buckets (seconds) for publish-to-delivery latency and fsync durations.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class BrokerStats:
    """Totals since the broker started."""

    published_messages: int = 0
    published_bytes: int = 0
    delivered_messages: int = 0
    delivered_bytes: int = 0
    acks: int = 0
    nacks: int = 0
    redeliveries: int = 0
    ack_timeouts: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    compacted: int = 0
    """Messages compaction dropped (older messages of their keys, old deletions)."""
    no_responders: int = 0
    """Requests the broker answered itself: nobody read their topic."""
    """Publishes not stored again: their message id was stored lately."""
    connections_accepted: int = 0
    authentication_failures: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    """By reason: the Error's text up to its first colon, a bounded set."""
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    """This broker's Prometheus registry (one per broker, so that several
    brokers in one process keep apart)."""

    def __post_init__(self) -> None:
        self.latency = Histogram(
            "broker_delivery_latency_seconds",
            "Seconds from a message's append to its delivery "
            "(sampled: each connection at most every 10 ms)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fsync = Histogram(
            "broker_store_fsync_seconds",
            "Seconds each group fsync of the file store took",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def refused(self, text: str) -> None:
        self.refusals[text.partition(":")[0]] += 1
