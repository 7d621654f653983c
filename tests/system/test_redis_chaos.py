"""At-least-once across broker nodes on a Redis Cluster, under fire: 100,000
confirmed messages through `--redis-replicas 1`, a node killed with SIGKILL
and restarted, the subscriber moved from one node to the other, and the
Redis primary holding the topic killed with SIGKILL (its replica promoted),
all while publishing goes on. Every confirmed message must be delivered at
its confirmed offset, and first deliveries must come in offset order."""

from __future__ import annotations

import itertools
import os
import signal

import pytest
import pytest_twisted
from redis.crc import key_slot
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from broker.client import BrokerError, Message, connect
from broker.log.redis_settings import topic_keys
from broker.wire import StartAt
from tests import redis_servers as servers
from tests.process import free_port
from tests.redis_nodes import Node, start_nodes
from tests.system.test_monitoring import get

MESSAGES = 100_000
TOPIC = "chaos"


async def until(check, what: str, timeout: float = 60.0) -> None:
    waited = 0.0
    while not check():
        assert waited < timeout, f"timed out waiting for {what}"
        await deferLater(reactor, 0.1, lambda: None)
        waited += 0.1


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_nothing_confirmed_is_lost_across_node_and_redis_failures(redis_servers, tmp_path):
    directory = redis_servers["dir"]
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2, "--redis-replicas", "1")
    slot = key_slot(topic_keys(a.prefix, TOPIC).log.encode())
    publisher = connect(reactor, a.endpoint, extensions=True, max_queued=MESSAGES)
    subscribers = [connect(reactor, a.endpoint, extensions=True, prefetch=256)]
    deliveries: dict[int, set[bytes]] = {}  # offset -> payloads delivered there
    first_deliveries: list[int] = []
    confirmed: dict[int, int] = {}  # sequence -> offset
    refused: list[str] = []
    failed: list[str] = []  # failures that are not the broker's answer
    killed_primary = None

    def receive(message: Message) -> bool:
        if message.offset not in deliveries:
            first_deliveries.append(message.offset)
        deliveries.setdefault(message.offset, set()).add(message.payload)
        return True

    def highest_contiguous() -> int:
        offset = 0
        while offset in deliveries:
            offset += 1
        return offset

    try:
        await subscribers[0].subscribe([TOPIC], receive, start=StartAt.BEGINNING)
        sequence = 0
        done = set()
        for turn in range(12000):  # 240 s at most
            in_flight = sequence - len(confirmed) - len(refused) - len(failed)
            if len(confirmed) < MESSAGES and in_flight < 20_000:
                for _ in range(1000):  # in a loop, whatever is up or down
                    sent = publisher.publish(TOPIC, b"seq %d" % sequence)
                    sent.addCallbacks(
                        lambda offset, s=sequence: confirmed.__setitem__(s, offset),
                        lambda failure: (
                            refused.append(str(failure.value))
                            if failure.check(BrokerError)
                            else failed.append(repr(failure.value))
                        ),
                    )
                    sequence += 1
            if "node" not in done and len(confirmed) >= 20_000:
                done.add("node")
                await a.kill()  # the publisher's and first subscriber's node
                await a.start()
            if "move" not in done and len(confirmed) >= 45_000:
                done.add("move")
                moved = connect(reactor, b.endpoint, extensions=True, prefetch=256)
                subscribers.append(moved)
                await moved.subscribe(
                    [TOPIC], receive, start=StartAt.FROM, offset=highest_contiguous()
                )
                await subscribers[0].close()
            if "redis" not in done and len(confirmed) >= 60_000:
                done.add("redis")
                killed_primary = servers.primary_for_slot(directory, slot)
                servers.kill(directory, killed_primary)
            if "redis" in done and "replica" not in done and turn % 20 == 0:
                # Once its replica is promoted, the old primary comes back as
                # the new one's replica: until then nothing can be replicated.
                try:
                    promoted = servers.primary_for_slot(directory, slot) != killed_primary
                except RuntimeError:
                    promoted = False
                if promoted:
                    done.add("replica")
                    servers.restart(directory, killed_primary)
            if len(confirmed) >= MESSAGES and set(confirmed.values()) <= deliveries.keys():
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert done == {"node", "move", "redis", "replica"}
        assert len(confirmed) >= MESSAGES, (
            f"{len(confirmed)} confirmed of {sequence} sent, {len(refused)} refused "
            f"(last: {refused[-3:]}), {len(failed)} failed otherwise (last: {failed[-3:]}); "
            f"the publisher's node said:\n{a.child.output[-6000:]}"
        )
        # Every confirmed message was delivered, at the offset it was confirmed at.
        missing = [s for s, o in confirmed.items() if b"seq %d" % s not in deliveries.get(o, set())]
        assert not missing, f"{len(missing)} confirmed messages lost, e.g. {missing[:5]}"
        # And each stored once: a publish sent again after a lost confirm
        # carried its message id, and Redis knew it.
        offsets_of: dict[bytes, set[int]] = {}
        for offset, payloads in deliveries.items():
            for payload in payloads:
                offsets_of.setdefault(payload, set()).add(offset)
        twice = {payload: at for payload, at in offsets_of.items() if len(at) > 1}
        assert not twice, f"{len(twice)} messages stored twice, e.g. {list(twice.items())[:3]}"
        assert first_deliveries == sorted(first_deliveries)
        # What was refused during the failover was refused with a reason,
        # which says whether it may have been stored.
        assert all(
            text.startswith(("could not store message", "outcome unknown")) for text in refused
        )
    finally:
        await publisher.close()
        await gatherResults([subscriber.close() for subscriber in subscribers])
        await gatherResults([a.stop(), b.stop()])
        if killed_primary is not None:
            if servers.pid(directory, killed_primary) is None:
                servers.restart(directory, killed_primary)  # it comes back as a replica
            await until(lambda: servers.cluster_healthy(directory), "the cluster to heal")


def _topic_on_each_primary(directory, prefix: str) -> dict[int, str]:
    """A topic name per primary port whose keys that primary holds."""
    ranges = servers.slot_ranges(directory)
    names: dict[int, str] = {}
    candidate = 0
    while len(names) < len(ranges):
        name = f"shard-topic-{candidate}"
        slot = key_slot(topic_keys(prefix, name).log.encode())
        for port, served in ranges.items():
            if port not in names and any(low <= slot <= high for low, high in served):
                names[port] = name
        candidate += 1
    return names


def _owner_now(directory, prefix: str, topic: str) -> int | None:
    """The port of the primary serving `topic`, None while none does."""
    try:
        return servers.primary_for_slot(directory, key_slot(topic_keys(prefix, topic).log.encode()))
    except RuntimeError:
        return None


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without an event between start and end."""
    inside = [start] + [t for t in times if start < t < end] + [end]
    return max(later - earlier for earlier, later in itertools.pairwise(inside))


@pytest_twisted.ensureDeferred
async def test_one_shards_failover_stops_only_its_own_topics(redis_servers, tmp_path):
    """A primary SIGKILLed under a confirming publisher on node A and
    subscribers on node B (a topic on each of the three shards): the healthy
    shards' topics go on being delivered and confirmed throughout, B's
    /healthz stays "serving", the dead shard's topics come back once its
    replica is promoted, and every refusal says whether the message may have
    been stored."""
    directory = redis_servers["dir"]
    monitor = free_port()
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2, "--redis-replicas", "1")
    await b.stop()
    b = await Node(
        tmp_path / "node1",
        redis_servers["cluster"],
        a.prefix,
        "--redis-replicas",
        "1",
        "--monitor",
        f"tcp:{monitor}:interface=127.0.0.1",
    ).start()
    by_primary = _topic_on_each_primary(directory, a.prefix)
    killed = servers.primary_for_slot(directory, key_slot(topic_keys(a.prefix, "x").log.encode()))
    dead = by_primary[killed]
    healthy = [name for port, name in by_primary.items() if port != killed]
    topics = [dead, *healthy]
    publisher = connect(reactor, a.endpoint, extensions=True, max_queued=100_000)
    subscriber = connect(reactor, b.endpoint, extensions=True, prefetch=256)
    delivered: dict[str, list[float]] = {topic: [] for topic in topics}
    confirmed_at: dict[str, list[float]] = {topic: [] for topic in topics}
    confirmed: dict[tuple[str, int], bytes] = {}
    deliveries: dict[tuple[str, int], set[bytes]] = {}
    refusals: list[str] = []
    health: list[tuple[int, bytes]] = []
    restarted = False

    def receive(message: Message) -> bool:
        delivered[message.topic].append(reactor.seconds())
        deliveries.setdefault((message.topic, message.offset), set()).add(message.payload)
        return True

    def publish_round(sequence: int) -> None:
        for topic in topics:
            payload = b"%s %d" % (topic.encode(), sequence)

            def stored(offset: int, topic: str = topic, payload: bytes = payload) -> None:
                confirmed_at[topic].append(reactor.seconds())
                confirmed[(topic, offset)] = payload

            def failed(failure) -> None:
                failure.trap(BrokerError)
                refusals.append(str(failure.value))

            publisher.publish(topic, payload).addCallbacks(stored, failed)

    async def run_for(seconds: float, sequence: int) -> int:
        until_time = reactor.seconds() + seconds
        while reactor.seconds() < until_time:
            publish_round(sequence)
            sequence += 1
            await deferLater(reactor, 0.02, lambda: None)
        return sequence

    try:
        await subscriber.subscribe(topics, receive)
        sequence = await run_for(1.0, 0)
        await until(lambda: all(delivered[t] and confirmed_at[t] for t in topics), "deliveries")
        killed_at = reactor.seconds()
        servers.kill(directory, killed)
        # Publish on through the promotion; B's health asked meanwhile.
        promoted_at = None
        while promoted_at is None:
            sequence = await run_for(0.2, sequence)
            health.append(await get(monitor, "/healthz"))
            owner = await deferToThread(_owner_now, directory, a.prefix, dead)
            if owner not in (None, killed):
                promoted_at = reactor.seconds()
            assert reactor.seconds() - killed_at < 30, "no replica promoted"
        # The old primary comes back as the new one's replica: the dead
        # shard's topics are then written again (min-replicas-to-write 1).
        await deferToThread(servers.restart, directory, killed)
        restarted = True
        back = len(delivered[dead])
        while len(delivered[dead]) <= back:
            sequence = await run_for(0.2, sequence)
            assert reactor.seconds() - killed_at < 60, "the dead shard's topic never came back"
        sequence = await run_for(1.0, sequence)
        ended_at = reactor.seconds()
        await until(lambda: confirmed.keys() <= deliveries.keys(), "every confirmed delivery")
        gaps = {
            topic: (
                _longest_gap(delivered[topic], killed_at, ended_at),
                _longest_gap(confirmed_at[topic], killed_at, ended_at),
            )
            for topic in topics
        }
        print(
            f"\nfailover: promoted after {promoted_at - killed_at:.2f} s; longest gaps "
            "(delivery on B, confirm on A) after the kill: "
            + ", ".join(
                f"{'dead' if topic == dead else 'healthy'} {topic} {d:.2f} s / {c:.2f} s"
                for topic, (d, c) in gaps.items()
            )
        )
        # The dead shard's topic stops for about the promotion time (and its
        # old primary's restart and sync, which min-replicas-to-write 1 needs).
        promotion = promoted_at - killed_at
        assert gaps[dead][0] < promotion + 4.0, f"{dead}: stopped {gaps[dead][0]:.2f} s"
        for topic in healthy:
            delivery_gap, confirm_gap = gaps[topic]
            assert delivery_gap < 1.5, f"{topic}: no delivery for {delivery_gap:.2f} s"
            assert confirm_gap < 1.5, f"{topic}: no confirm for {confirm_gap:.2f} s"
        assert all(entry == (200, b'{"status": "serving"}') for entry in health), health
        missing = [key for key, payload in confirmed.items() if payload not in deliveries[key]]
        assert not missing
        assert all(
            text.startswith(("could not store message", "outcome unknown")) for text in refusals
        ), refusals[:5]
    finally:
        await publisher.close()
        await subscriber.close()
        await gatherResults([a.stop(), b.stop()])
        if not restarted and servers.pid(directory, killed) is None:
            await deferToThread(servers.restart, directory, killed)
        await until(lambda: servers.cluster_healthy(directory), "the cluster to heal")


@pytest_twisted.ensureDeferred
async def test_a_hanging_shard_holds_back_no_other_topics_confirms(redis_servers, tmp_path):
    """The primary of one topic stops answering (SIGSTOP): a publish to it
    hangs, yet a publish to a topic of another shard, sent after it on the
    same connection, is confirmed meanwhile (the client asks for confirms
    per topic); the hanging one is answered once its primary is back."""
    directory = redis_servers["dir"]
    (node,) = await start_nodes(tmp_path, redis_servers["cluster"], 1, "--redis-timeout", "30")
    by_primary = _topic_on_each_primary(directory, node.prefix)
    hanging_port, hanging = next(iter(by_primary.items()))
    healthy = next(name for port, name in by_primary.items() if port != hanging_port)
    publisher = connect(reactor, node.endpoint, extensions=True)
    stopped = servers.pid(directory, hanging_port)
    assert stopped is not None
    try:
        # Both topics exist and are followed before the primary stops.
        assert await publisher.publish(hanging, b"before") == 0
        assert await publisher.publish(healthy, b"before") == 0
        os.kill(stopped, signal.SIGSTOP)
        held = publisher.publish(hanging, b"held")
        outcome: list[object] = []
        held.addBoth(outcome.append)
        assert await publisher.publish(healthy, b"after").addTimeout(20, reactor) == 1
        assert not outcome, f"the hanging topic was answered first: {outcome}"
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        await until(lambda: bool(outcome), "the held publish's answer")
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await publisher.close()
        await node.stop()
        await until(lambda: servers.cluster_healthy(directory), "the cluster to heal")
