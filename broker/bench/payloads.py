"""Bench payloads (sequence number and send time) and the figures of a run:
latency histogram and result."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from broker import wire

HEADER = struct.Struct(">Qd")  # sequence number, send time (perf_counter)
READ_SIZE = 4096  # bytes a subscriber reads at a time (see BenchSubscriber)
ACK_FRAME = wire.encode_u16(wire.ACK)


def make_payload(sequence: int, size: int, sent: float) -> bytes:
    """A payload whose body is derived from its sequence number, to check integrity."""
    return HEADER.pack(sequence, sent) + payload_body(sequence, size)


def payload_body(sequence: int, size: int) -> bytes:
    body_size = max(0, size - HEADER.size)
    return (sequence.to_bytes(8, "big") * (body_size // 8 + 1))[:body_size]


class Histogram:
    """Latencies in log-linear buckets: two significant digits (about 1%),
    bounded memory whatever the number of samples."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        if micros < 1:
            key = 0
        else:
            exponent = int(math.log10(micros))
            key = exponent * 1000 + int(micros / 10 ** (exponent - 1))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    @classmethod
    def from_counts(cls, counts: dict[int, int]) -> Histogram:
        """A histogram of buckets another one gave (`counts`, as in JSON)."""
        histogram = cls()
        histogram.counts = dict(counts)
        histogram.total = sum(counts.values())
        return histogram

    def merge(self, other: Histogram) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.total += other.total

    def percentile(self, fraction: float) -> float:
        """The upper bound of the bucket holding that fraction, in seconds."""
        if not self.total:
            return float("nan")
        wanted = fraction * self.total
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= wanted:
                if key == 0:
                    return 1e-6
                exponent, mantissa = divmod(key, 1000)
                return (mantissa + 1) * 10 ** (exponent - 1) / 1e6
        return float("nan")


@dataclass
class Result:
    scenario: str
    messages: int
    delivered: int = 0
    seconds: float = 0.0
    msgs_per_sec: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")
    broker_rss_mb: float = float("nan")
    broker_cpu_us_per_msg: float = float("nan")
    """The broker's CPU time over the run per message delivered (or stored)."""
    bench_cpu_percent: float = float("nan")
    complete: bool = True
    out_of_order: int = 0
    corrupt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
