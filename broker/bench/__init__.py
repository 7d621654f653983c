"""`broker-bench`: throughput, latency and memory of a broker, over TCP.

    broker-bench fanout --messages 100000                 # one plain subscriber
    broker-bench fanout --prefetch 256 --subscribers 10   # extensions, ten subscribers
    broker-bench latency --rate 1000 --messages 10000
    broker-bench ingest --store file --fsync always --confirms
    broker-bench replay --messages 1000000 --prefetch 256
    broker-bench connections --subscribers 10000
    broker-bench ceiling --prefetch 256                   # the bench's own limit
    broker-bench fanout --broker localhost:3000 --json
    broker-bench clients --runs 3                         # each Python client of ours

Without --broker it starts `twistd broker` on a free loopback port (memory or
file store) and stops it afterwards. Every payload carries its sequence
number and send time: each delivery is checked for order and integrity and
timed from publish to delivery, and every message is acked.
"""

from broker.bench.cli import main

__all__ = ["main"]
