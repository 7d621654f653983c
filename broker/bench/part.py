"""One of the subscriber processes of `broker-bench fanout --processes N`:
so that the bench's own Python is not the limit it measures, the parent
publishes and each part subscribes its share, in a process of its own.

    python -m broker.bench.part HOST PORT TOPIC SUBSCRIBERS MESSAGES SIZE PREFETCH TIMEOUT

It prints `ready` once all its subscribers are subscribed, then, when all
have every message (or the timeout passes), one JSON line of what they got:
counts, the time of the last delivery and the latency histogram's buckets.
Times are `time.perf_counter()`, the machine's monotonic clock on Linux, so
the parent compares them with its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure

from broker.bench.payloads import Histogram
from broker.bench.protocols import BenchSubscriber


def summary(subscribers: list[BenchSubscriber]) -> dict[str, Any]:
    """What the parent needs of this part's subscribers, as JSON."""
    latencies = Histogram()
    for subscriber in subscribers:
        latencies.merge(subscriber.latencies)
    return {
        "received": sum(s.received for s in subscribers),
        "expected": sum(s.expected for s in subscribers),
        "out_of_order": sum(s.out_of_order for s in subscribers),
        "corrupt": sum(s.corrupt for s in subscribers),
        "last_at": max(s.last_at for s in subscribers),
        "latencies": latencies.counts,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.bench.part")
    for name in ("host", "port", "topic", "subscribers", "messages", "size", "prefetch"):
        parser.add_argument(name)
    parser.add_argument("timeout", type=float)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    async def part() -> None:
        endpoint = TCP4ClientEndpoint(reactor, args.host, int(args.port))
        subscribers = []
        for _ in range(int(args.subscribers)):
            subscriber = BenchSubscriber(
                args.topic, int(args.messages), int(args.size), int(args.prefetch)
            )
            connected = await connectProtocol(endpoint, subscriber)
            connected.transport.setTcpNoDelay(True)
            subscribers.append(connected)
        for subscriber in subscribers:
            await subscriber.subscribed
        print("ready", flush=True)
        for subscriber in subscribers:
            subscriber.done.addTimeout(args.timeout, reactor)
            await subscriber.done
        print(json.dumps(summary(subscribers)), flush=True)

    outcome: list[object] = []

    def start() -> None:
        done = ensureDeferred(part())
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome or isinstance(outcome[0], Failure):
        print(f"subscriber part failed: {outcome[0] if outcome else 'no outcome'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
