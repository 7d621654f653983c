"""At-least-once across broker nodes on a Redis Cluster, under fire: 100,000
confirmed messages through `--redis-replicas 1`, a node killed with SIGKILL
and restarted, the subscriber moved from one node to the other, and the
Redis primary holding the topic killed with SIGKILL (its replica promoted),
all while publishing goes on. Every confirmed message must be delivered at
its confirmed offset, and first deliveries must come in offset order."""

from __future__ import annotations

import pytest
import pytest_twisted
from redis.crc import key_slot
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from broker.client import BrokerError, Message, connect
from broker.log.redis_settings import topic_keys
from broker.wire import StartAt
from tests import redis_servers as servers
from tests.redis_nodes import start_nodes

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
            in_flight = sequence - len(confirmed) - len(refused)
            if len(confirmed) < MESSAGES and in_flight < 20_000:
                for _ in range(1000):  # in a loop, whatever is up or down
                    sent = publisher.publish(TOPIC, b"seq %d" % sequence)
                    sent.addCallbacks(
                        lambda offset, s=sequence: confirmed.__setitem__(s, offset),
                        lambda failure: (
                            refused.append(str(failure.value))
                            if failure.check(BrokerError)
                            else None
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
        assert len(confirmed) >= MESSAGES
        # Every confirmed message was delivered, at the offset it was confirmed at.
        missing = [s for s, o in confirmed.items() if b"seq %d" % s not in deliveries.get(o, set())]
        assert not missing, f"{len(missing)} confirmed messages lost, e.g. {missing[:5]}"
        assert first_deliveries == sorted(first_deliveries)
        # What was refused during the failover was refused with a reason.
        assert all(text.startswith("could not store message") for text in refused)
    finally:
        await publisher.close()
        await gatherResults([subscriber.close() for subscriber in subscribers])
        await gatherResults([a.stop(), b.stop()])
        if killed_primary is not None:
            if servers.pid(directory, killed_primary) is None:
                servers.restart(directory, killed_primary)  # it comes back as a replica
            await until(lambda: servers.cluster_healthy(directory), "the cluster to heal")
