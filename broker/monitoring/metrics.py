"""The broker's Prometheus metrics: a collector over its counters and state,
registered in the broker's own registry beside its histograms and the
process's (memory, CPU, file descriptors).

prometheus_client's Twisted resource collects in a thread of the reactor's
pool; the collector reads the broker's state in the reactor thread (through
`blockingCallFromThread`), so that nothing changes while it is read.
Per-topic series are kept to the busiest `TOPIC_SERIES` topics (by messages
appended); the others are summed under topic="_other", so that a million
topics cannot blow up a scrape.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import PROCESS_COLLECTOR, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

if TYPE_CHECKING:
    from broker.server.factory import BrokerFactory

TOPIC_SERIES = 50
OTHER_TOPICS = "_other"

# (metric name, help, BrokerStats attribute or a path into the factory)
_TOTALS = [
    ("broker_published_messages", "Messages stored from publishers", "published_messages"),
    ("broker_published_bytes", "Payload bytes stored from publishers", "published_bytes"),
    ("broker_delivered_messages", "Deliveries written to subscribers", "delivered_messages"),
    ("broker_delivered_bytes", "Payload bytes written to subscribers", "delivered_bytes"),
    ("broker_acks", "Acks received", "acks"),
    ("broker_nacks", "Nacks received", "nacks"),
    ("broker_dead_letters", "Messages appended to a dead-letter topic", "dead_letters"),
    (
        "broker_compacted_messages",
        "Messages compaction dropped (older messages of their keys, old deletions)",
        "compacted",
    ),
    (
        "broker_no_responders",
        "Requests the broker answered itself: nobody read their topic",
        "no_responders",
    ),
    (
        "broker_duplicate_publishes",
        "Publishes not stored again: their message id was stored lately",
        "duplicates",
    ),
    ("broker_connections_accepted", "Connections accepted", "connections_accepted"),
    (
        "broker_authentication_failures",
        "Sign-ins refused (credentials or certificate)",
        "authentication_failures",
    ),
]


# Gauges read from a snapshot: (name, help, snapshot key).
_GAUGES = [
    ("broker_subscriptions", "Subscriptions open", "subscriptions"),
    ("broker_deliveries_in_flight", "Deliveries awaiting an ack", "in_flight"),
    ("broker_topics", "Topics held", "topics"),
    ("broker_consumer_groups", "Consumer groups with members", "groups"),
    ("broker_durable_consumers", "Durable consumers whose position is kept", "durable_consumers"),
    ("broker_pattern_subscriptions", "Patterns subscribed", "patterns"),
    (
        "broker_store_uncommitted_messages",
        "Messages appended but not yet committed (on disk, under --fsync)",
        "uncommitted",
    ),
]
# On the Redis store: (name, help, key of the store's status).
_REDIS_GAUGES = [
    ("broker_redis_connected", "1 while the Redis store reaches Redis, else 0", "connected"),
    (
        "broker_redis_pending_bytes",
        "Published bytes waiting for Redis to take them",
        "pending_bytes",
    ),
    (
        "broker_redis_followed_topics",
        "Topics whose appends on other nodes this node follows",
        "followed_topics",
    ),
]


def snapshot(factory: BrokerFactory) -> dict[str, Any]:
    """What a scrape reports, read at once (in the reactor thread)."""
    stats = factory.broker.stats
    roles: Counter[str] = Counter()
    doors: Counter[str] = Counter()
    subscriptions = in_flight = 0
    for protocol in factory.broker.connections:
        roles[protocol.role] += 1
        doors[protocol.door] += 1
        window = protocol.window
        if window is not None:
            subscriptions += len(window.subscriptions)
            in_flight += window.in_flight
    topics = list(factory.broker.registry)
    busiest = heapq.nlargest(TOPIC_SERIES, topics, key=lambda topic: topic.log.next_offset)
    shown = {id(topic) for topic in busiest}
    others = [topic for topic in topics if id(topic) not in shown]
    return {
        "totals": {attribute: getattr(stats, attribute) for _, _, attribute in _TOTALS},
        "redeliveries": factory.broker.timers.redeliveries,
        "ack_timeouts": factory.broker.timers.ack_timeouts,
        "expired": factory.broker.timers.expired,
        "delayed": factory.broker.timers.delayed,
        "delayed_waiting": len(factory.broker.timers.later),
        "refusals": dict(stats.refusals),
        "roles": dict(roles),
        "doors": dict(doors),
        "subscriptions": subscriptions,
        "in_flight": in_flight,
        "topics": len(topics),
        "per_topic": [
            (
                topic.name,
                topic.log.next_offset - topic.log.first_offset,
                topic.log.bytes_held,
                topic.log.first_offset,
                topic.log.next_offset,
            )
            for topic in busiest
        ],
        "other_messages": sum(t.log.next_offset - t.log.first_offset for t in others),
        "other_bytes": sum(t.log.bytes_held for t in others),
        "uncommitted": sum(t.log.next_offset - t.log.committed_offset for t in topics),
        "store": factory.broker.store.status(),
        "groups": len(factory.broker.groups),
        "durable_consumers": len(factory.broker.groups.positions),
        "patterns": len(factory.broker.registry.patterns),
    }


class BrokerCollector(Collector):
    """Reports one broker's counters and state to Prometheus."""

    def __init__(self, factory: BrokerFactory) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        if isInIOThread():
            state = snapshot(self._factory)
        else:
            from twisted.internet import reactor

            state = blockingCallFromThread(
                cast(IReactorFromThreads, reactor), snapshot, self._factory
            )
        for name, documentation, attribute in _TOTALS:
            yield CounterMetricFamily(name, documentation, value=state["totals"][attribute])
        yield CounterMetricFamily(
            "broker_redeliveries", "Deliveries made again", value=state["redeliveries"]
        )
        yield CounterMetricFamily(
            "broker_ack_timeouts", "Deliveries that went unanswered", value=state["ack_timeouts"]
        )
        yield CounterMetricFamily(
            "broker_expired_deliveries",
            "Deliveries skipped: their message had expired (Expires)",
            value=state["expired"],
        )
        yield CounterMetricFamily(
            "broker_delayed_deliveries",
            "Deliveries held until their message was due (Not-Before)",
            value=state["delayed"],
        )
        yield GaugeMetricFamily(
            "broker_delayed_waiting",
            "Delayed deliveries held now, until they are due",
            value=state["delayed_waiting"],
        )
        refusals = CounterMetricFamily(
            "broker_refusals", "Errors sent, by reason", labels=["reason"]
        )
        for reason, count in sorted(state["refusals"].items()):
            refusals.add_metric([reason], count)
        yield refusals
        roles = GaugeMetricFamily("broker_connections", "Open connections", labels=["role"])
        for role in ("new", "publisher", "subscriber", "mqtt"):
            roles.add_metric([role], state["roles"].get(role, 0))
        yield roles
        doors = GaugeMetricFamily(
            "broker_door_connections",
            "Open connections, by the door they came through",
            labels=["door"],
        )
        for door in ("tcp", "mqtt"):
            doors.add_metric([door], state["doors"].get(door, 0))
        yield doors
        for name, documentation, key in _GAUGES:
            yield GaugeMetricFamily(name, documentation, value=state[key])
        store = state["store"]
        if "damaged_records" in store:
            yield GaugeMetricFamily(
                "broker_store_damaged_records",
                "Records found damaged when the file store started, set aside (their "
                "offsets read as gaps)",
                value=store["damaged_records"],
            )
        if "failed_topics" in store:
            yield GaugeMetricFamily(
                "broker_store_failed_topics",
                "Topics whose log refuses messages since an fsync failed (until a restart)",
                value=len(store["failed_topics"]),
            )
        if store["kind"] == "redis":
            for name, documentation, key in _REDIS_GAUGES:
                yield GaugeMetricFamily(name, documentation, value=int(store[key]))
        yield from self._per_topic(state)

    def _per_topic(self, state: dict[str, Any]) -> Iterator[Metric]:
        messages = GaugeMetricFamily(
            "broker_topic_messages", "Messages a topic holds", labels=["topic"]
        )
        size = GaugeMetricFamily("broker_topic_bytes", "Bytes a topic holds", labels=["topic"])
        first = GaugeMetricFamily(
            "broker_topic_first_offset", "Offset of a topic's oldest message", labels=["topic"]
        )
        following = GaugeMetricFamily(
            "broker_topic_next_offset", "Offset a topic's next message gets", labels=["topic"]
        )
        for name, held, held_bytes, first_offset, next_offset in state["per_topic"]:
            messages.add_metric([name], held)
            size.add_metric([name], held_bytes)
            first.add_metric([name], first_offset)
            following.add_metric([name], next_offset)
        if state["topics"] > len(state["per_topic"]):
            messages.add_metric([OTHER_TOPICS], state["other_messages"])
            size.add_metric([OTHER_TOPICS], state["other_bytes"])
        yield from (messages, size, first, following)


def register(factory: BrokerFactory) -> None:
    """Add the broker's collector, and the process's, to its registry."""
    registry = factory.broker.stats.registry
    registry.register(BrokerCollector(factory))
    if PROCESS_COLLECTOR is not None:
        ProcessCollector(registry=registry)
