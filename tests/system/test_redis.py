"""Broker nodes sharing topics through Redis: real `twistd -r asyncio broker
--store ...` nodes on a real Redis Cluster (three primaries, one replica
each) and a real standalone Redis, talked to through the Twisted client and
raw sockets; and the pure pieces (URLs, key names, batch packing)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from broker.client import (
    BrokerError,
    KeyChanged,
    Message,
    NoResponders,
    OutcomeUnknown,
    RequestTimedOut,
    connect,
)
from broker.log.redis import layout_refusal
from broker.log.redis_settings import (
    PASSWORD_VARIABLE,
    pack_batch,
    parse_redis_url,
    topic_keys,
    unpack_batch,
)
from broker.wire import StartAt
from broker.wire.headers import encode_headers, header_block, with_headers
from tests import redis_servers as servers
from tests.conftest import Inbox
from tests.process import free_port, spawn_broker
from tests.redis_nodes import Node, start_nodes, unique_prefix
from tests.system.test_monitoring import get, get_json

# The pure pieces.


def test_urls_name_one_redis_or_a_cluster():
    one = parse_redis_url("redis://db.example:6380/2", environ={})
    assert (one.seeds, one.cluster, one.tls, one.db) == ((("db.example", 6380),), False, False, 2)
    cluster = parse_redis_url("rediss+cluster://u:p%40ss@a:7000,b:7001,[::1]:7002?ca=/ca.pem", {})
    assert cluster.seeds == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert (cluster.cluster, cluster.tls, cluster.ca_file) == (True, True, "/ca.pem")
    assert (cluster.username, cluster.password) == ("u", "p@ss")
    assert "p@ss" not in cluster.describe()
    assert parse_redis_url("redis://h", {}).seeds == (("h", 6379),)
    # The password is better kept in the environment than on the command line.
    assert parse_redis_url("redis://h:1", {PASSWORD_VARIABLE: "s3"}).password == "s3"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h:1", "not a Redis URL"),
        ("redis://", "not a Redis URL"),
        ("redis://a:1,b:2", "redis+cluster://"),
        ("redis://h:99999", "port must be"),
        ("redis://h:x", "port must be"),
        ("redis://h:1/zero", "not a number"),
        ("redis+cluster://h:1/3", "one database"),
        ("redis://h:1?ca=/x", "rediss://"),
        ("redis://h:1?tls=1", "unknown Redis URL option"),
        ("redis://::1:5", "brackets"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_redis_url(url, {})


@given(st.text(min_size=1, max_size=40))
def test_a_topics_keys_share_one_slot_and_no_other_topics(name):
    keys = topic_keys("broker", name)
    slots = {key_slot(key.encode("utf-8", "surrogatepass")) for key in vars(keys).values()}
    assert len(slots) == 1
    other = topic_keys("broker", name + "x")
    assert not set(vars(keys).values()) & set(vars(other).values())


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=50))
def test_batches_unpack_to_what_was_packed(payloads):
    assert unpack_batch(len(payloads), pack_batch(payloads)) == payloads


# Nodes on Redis.


@given(st.lists(st.tuples(st.binary(max_size=300), st.booleans()), min_size=1, max_size=30))
def test_batches_with_headers_unpack_to_what_was_packed(messages):
    block = encode_headers({"k": "v", "Trace": "ü"})
    payloads = [with_headers(payload, block) if headed else payload for payload, headed in messages]
    unpacked = unpack_batch(len(payloads), pack_batch(payloads))
    assert unpacked == payloads
    assert [header_block(p) for p in unpacked] == [header_block(p) for p in payloads]


class Received(Inbox):
    """Deliveries of one subscriber, each acked; `pairs` are (offset, payload)."""

    def wait(self, count: int, timeout: float = 20) -> Deferred:
        return super().wait(count, timeout)

    @property
    def pairs(self) -> list[tuple[int, bytes]]:
        return [(message.offset, message.payload) for message in self.messages]


@pytest.mark.skipif(not servers.available(), reason="redis-server is not installed")
def test_the_test_cluster_starts_with_every_replica_in_sync(tmp_path):
    """Once `start` returns (CI's servers, and the suite's own), a WAIT for
    one replica is answered at once: every replica's link is up and synced.
    Before, "cluster ok" was all it waited for, and the first replicated
    publishes of a run on a busy machine were refused ("0 of 1 Redis
    replica(s) acknowledged it within 2.5 s")."""
    servers.start(tmp_path)
    try:
        nodes = servers.ports(tmp_path)["cluster"]
        linked = {port: servers.replicas_linked(port) for port in nodes}
        assert all(linked.values()), linked
    finally:
        servers.stop(tmp_path)


@pytest_twisted.ensureDeferred
async def test_a_publish_on_one_node_reaches_subscribers_on_both(redis_servers, tmp_path):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2, "--redis-replicas", "1")
    clients = []

    def client(node: Node):
        made = connect(reactor, node.endpoint, extensions=True, prefetch=256)
        clients.append(made)
        return made

    try:
        on_a, on_b = Received(), Received()
        await client(a).subscribe(["shared"], on_a)
        await client(b).subscribe(["shared"], on_b)
        publisher = client(a)
        offsets = await gatherResults(
            [publisher.publish("shared", b"m%d" % i) for i in range(2000)]
        )
        assert offsets == list(range(2000))  # dense from 0, assigned by Redis
        await gatherResults([on_a.wait(2000), on_b.wait(2000)])
        expected = [(i, b"m%d" % i) for i in range(2000)]
        assert on_a.pairs == expected
        assert on_b.pairs == expected
        # Replay from the other node: from the beginning, from an offset (u32
        # and u64 forms), the same offsets and messages.
        for start, offset, first in (
            (StartAt.BEGINNING, 0, 0),
            (StartAt.FROM, 1500, 1500),
            (StartAt.FROM64, 1999, 1999),
        ):
            replay = Received()
            await client(b).subscribe(["shared"], replay, start=start, offset=offset)
            await replay.wait(2000 - first)
            assert replay.pairs == expected[first:], start
    finally:
        await gatherResults([made.close() for made in clients])
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_headers_published_on_one_node_reach_a_subscriber_on_the_other(
    redis_servers, tmp_path
):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    publisher = connect(reactor, a.endpoint, extensions=True)
    subscriber = connect(reactor, b.endpoint, extensions=True)
    received = Received()
    try:
        await subscriber.subscribe(["headed"], received)
        pairs = [("Content-Type", "text/plain"), ("traceparent", "00-ab-01")]
        assert await publisher.publish("headed", b"one", headers=pairs) == 0
        assert await publisher.publish("headed", b"two") == 1
        await received.wait(2)
        got = [(m.payload, m.headers.pairs()) for m in received.messages]
        assert got == [(b"one", tuple(pairs)), (b"two", ())]
        # Read back from Redis, not from what the node heard announced.
        late = Received()
        reader = connect(reactor, a.endpoint, extensions=True)
        await reader.subscribe(["headed"], late, start=StartAt.BEGINNING)
        await late.wait(2)
        assert [m.headers.pairs() for m in late.messages] == [tuple(pairs), ()]
        await reader.close()
    finally:
        await gatherResults([c.close() for c in (publisher, subscriber)])
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_a_message_id_is_stored_once_whichever_node_it_is_published_on(
    redis_servers, tmp_path
):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    on_a = connect(reactor, a.endpoint, extensions=True)
    on_b = connect(reactor, b.endpoint, extensions=True)
    reader = connect(reactor, b.endpoint, extensions=True)
    try:
        assert await on_a.publish("once", b"x", headers={"Msg-Id": "k1"}) == 0
        assert await on_b.publish("once", b"x again", headers={"Msg-Id": "k1"}) == 0
        assert await on_a.publish("once", b"x again", headers={"Msg-Id": "k1"}) == 0
        assert await on_b.publish("once", b"y", headers={"Msg-Id": "k2"}) == 1
        both = await gatherResults(
            [
                on_a.publish("once", b"z", headers={"Msg-Id": "k3"}),
                on_b.publish("once", b"z", headers={"Msg-Id": "k3"}),
            ]
        )
        assert both == [2, 2]
        assert await on_a.publish("once", b"plain") == 3  # (an id of the client's own)
        everything = Received()
        await reader.subscribe(["once"], everything, start=StartAt.BEGINNING)
        await everything.wait(4)
        assert everything.pairs == [(0, b"x"), (1, b"y"), (2, b"z"), (3, b"plain")]
    finally:
        await gatherResults([made.close() for made in (on_a, on_b, reader)])
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_a_request_on_one_node_is_answered_by_a_responder_on_the_other(
    redis_servers, tmp_path
):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    requester = connect(reactor, a.endpoint, extensions=True)
    responder = connect(reactor, b.endpoint, extensions=True)
    try:
        await responder.reply("rpc.echo", lambda asked: b"echo: " + asked.payload)
        # The responder's group shows on a once b has read with it.
        deadline = reactor.seconds() + 15
        while True:
            try:
                first = await requester.request("rpc.echo", b"ping", timeout=5)
                break
            except RequestTimedOut:
                raise AssertionError(a.child.output[-3000:] + b.child.output[-3000:]) from None
            except NoResponders:
                assert reactor.seconds() < deadline, "a never saw b's responders"
                await deferLater(reactor, 0.1, lambda: None)
        assert first.payload == b"echo: ping", a.child.output[-3000:]
        # The reply crossed from b to a's inbox through Redis, stored nowhere.
        replies = await gatherResults(
            [requester.request("rpc.echo", b"%d" % n, timeout=5) for n in range(20)]
        )
        assert [reply.payload for reply in replies] == [b"echo: %d" % n for n in range(20)]
        with pytest.raises(NoResponders):
            await requester.request("rpc.nobody", b"anyone?", timeout=5)
    finally:
        await gatherResults([c.close() for c in (requester, responder)])
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_the_key_value_view_is_one_for_every_node(redis_servers, tmp_path):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    on_a = connect(reactor, a.endpoint, extensions=True)
    on_b = connect(reactor, b.endpoint, extensions=True)
    try:
        config_a, config_b = on_a.kv("config"), on_b.kv("config")
        first = await config_a.put("colour", b"red")
        # b reads what a wrote, from the revisions Redis keeps, and writes on.
        entry = await config_b.get("colour")
        assert entry is not None and (entry.value, entry.revision) == (b"red", first)
        second = await config_b.update("colour", b"green", first)
        assert second is not None and second > first
        # a's compare-and-set against the revision it saw fails: b moved on.
        with pytest.raises(KeyChanged, match=f"it is {second}"):
            await config_a.update("colour", b"blue", first)
        # Two nodes racing to create one key: exactly one wins.
        created = await gatherResults(
            [
                config_a.create("owner", b"a").addErrback(lambda failure: failure.value),
                config_b.create("owner", b"b").addErrback(lambda failure: failure.value),
            ]
        )
        assert sorted(type(outcome).__name__ for outcome in created) == ["KeyChanged", "int"]
        winner = b"a" if isinstance(created[0], int) else b"b"
        owner = await config_a.get("owner")
        assert owner is not None and owner.value == winner
        await config_a.put("size", b"9")
        await config_b.delete("size")
        assert await config_a.get("size") is None
        assert await config_b.keys() == ["colour", "owner"]
        history = await config_a.history("colour")
        assert [(h.value, h.revision) for h in history] == [(b"red", first), (b"green", second)]
    finally:
        await gatherResults([made.close() for made in (on_a, on_b)])
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_publishers_on_both_nodes_get_dense_offsets_in_their_own_order(
    redis_servers, tmp_path
):
    nodes = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    publishers = [connect(reactor, node.endpoint, extensions=True) for node in nodes]
    reader = connect(reactor, nodes[1].endpoint, extensions=True)
    try:
        count = 3000

        async def publish_all(number: int) -> list[int]:
            sends = []
            for sequence in range(count):
                sends.append(publishers[number].publish("race", b"%d:%d" % (number, sequence)))
                if sequence % 500 == 499:
                    await deferLater(reactor, 0, lambda: None)  # interleave the two
            return await gatherResults(sends)

        offsets = await gatherResults([ensureDeferred(publish_all(n)) for n in (0, 1)])
        # Dense, no duplicates: together they are exactly 0 .. 2 * count - 1.
        assert sorted(offsets[0] + offsets[1]) == list(range(2 * count))
        # Each publisher's messages got increasing offsets, in its order.
        for mine in offsets:
            assert mine == sorted(mine)
        everything = Received()
        await reader.subscribe(["race"], everything, start=StartAt.BEGINNING)
        await everything.wait(2 * count)
        assert [offset for offset, _ in everything.pairs] == list(range(2 * count))
        for number in (0, 1):
            mine = [p for _, p in everything.pairs if p.startswith(b"%d:" % number)]
            assert mine == [b"%d:%d" % (number, s) for s in range(count)]
            # and each sits at the offset its confirm named
            at = dict(everything.pairs)
            assert all(at[o] == b"%d:%d" % (number, s) for s, o in enumerate(offsets[number]))
    finally:
        await gatherResults([made.close() for made in [*publishers, reader]])
        await gatherResults([node.stop() for node in nodes])


@pytest_twisted.ensureDeferred
async def test_the_legacy_transcripts_replay_byte_for_byte_on_redis(redis_servers, tmp_path):
    from tests.integration.test_transcripts import replay

    scale = 0.25
    node = await Node(
        tmp_path,
        redis_servers["standalone"],
        unique_prefix(),
        "--ack-delay",
        str(1.0 * scale),
        "--ack-timeout",
        str(2.0 * scale),
    ).start()
    try:
        await replay(node.port, scale)
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_without_the_asyncio_reactor_the_broker_says_how_to_start(tmp_path):
    child = spawn_broker(tmp_path, "--port", str(free_port()), "--store", "redis://127.0.0.1:1")
    assert await child.ended == 1
    assert "twistd -r asyncio broker --store" in child.output
    assert "Traceback" not in child.output


@pytest_twisted.ensureDeferred
async def test_bad_redis_options_are_one_line_errors(tmp_path):
    for options, complaint in (
        (["--store", "redis://a:1,b:2"], "redis+cluster://"),
        (["--redis-replicas", "1"], "--redis-replicas needs --store"),
        (["--store", "redis://h:1", "--data-dir", str(tmp_path)], "give one"),
    ):
        child = spawn_broker(tmp_path, "--port", str(free_port()), *options, reactor="asyncio")
        assert await child.ended == 1, options
        assert complaint in child.output, child.output
        assert "Traceback" not in child.output


@pytest.fixture
def own_redis(tmp_path):
    """A standalone Redis of this test's own (append-only, so a restart keeps
    what it held), which the test may stop and start."""
    if not servers.available():
        pytest.skip("redis-server is not installed")
    port = free_port()
    directory = tmp_path / "own-redis"
    config = servers._config(directory, port, cluster=False)
    config.write_text(config.read_text().replace("appendonly no", "appendonly yes"))
    servers.start_server(config)
    yield directory, port
    servers.kill(directory, port, signal.SIGTERM)


def stop_redis(directory: Path, port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "shutdown"], capture_output=True, check=False)
    servers.kill(directory, port)  # if it was still up


@pytest_twisted.ensureDeferred
async def test_redis_stopped_and_started_under_load(own_redis, tmp_path):
    directory, port = own_redis
    monitor = free_port()
    node = await Node(
        tmp_path,
        f"redis://127.0.0.1:{port}",
        unique_prefix(),
        "--redis-timeout",
        "1",
        "--monitor",
        f"tcp:{monitor}:interface=127.0.0.1",
    ).start()
    errors: list[str] = []
    publisher = connect(reactor, node.endpoint, extensions=True, on_publish_error=errors.append)
    plain = connect(reactor, node.endpoint)  # no confirms: refused with an Error
    subscriber = connect(reactor, node.endpoint, extensions=True)
    received = Received()
    confirmed: dict[int, bytes] = {}
    refused: list[str] = []
    sends: list[Deferred[None]] = []

    def publish(payload: bytes) -> None:
        def stored(offset: int) -> None:
            confirmed[offset] = payload

        def failed(failure) -> None:
            failure.trap(BrokerError)
            refused.append(str(failure.value))

        sends.append(publisher.publish("load", payload).addCallbacks(stored, failed))

    try:
        await subscriber.subscribe(["load"], received, start=StartAt.BEGINNING)
        sequence = 0
        for _ in range(20):
            for _ in range(100):
                publish(b"before %d" % sequence)
                sequence += 1
            await deferLater(reactor, 0.01, lambda: None)
        await received.wait(2000)
        store = (await get_json(monitor, "/varz"))["store"]
        assert (store["kind"], store["connected"], store["followed_topics"]) == ("redis", True, 1)
        assert (await get(monitor, "/healthz"))[0] == 200
        assert b"broker_redis_connected 1.0" in (await get(monitor, "/metrics"))[1]
        before = node.rss_kib()
        stop_redis(directory, port)
        # Publishing on while Redis is away: refusals, with a clear reason.
        highest = before
        for _ in range(40):
            for _ in range(250):
                publish(b"during %d" % sequence)
                sequence += 1
            plain.publish("load", b"plain while away")
            await deferLater(reactor, 0.05, lambda: None)
            highest = max(highest, node.rss_kib())
        while len(refused) < 5000:
            await deferLater(reactor, 0.05, lambda: None)
        # Orchestrators see it: 503 while the node cannot reach Redis.
        assert await get(monitor, "/healthz") == (503, b'{"status": "waiting for Redis"}')
        assert refused
        # (those in flight as Redis stopped may have been stored, and say so)
        assert all(
            reason.startswith(("could not store message: Redis", "outcome unknown: "))
            for reason in refused
        )
        assert highest - before < 64 * 1024, f"memory grew from {before} to {highest} KiB"
        servers.restart(directory, port)
        # Back: the node reconnects by itself, publishes are confirmed again
        # at the next offsets, and the waiting subscriber gets them.
        after = sequence
        for _ in range(3000):
            publish(b"after %d" % sequence)
            sequence += 1
            if len(confirmed) > 2000:
                break
            if sequence % 100 == 0:
                await deferLater(reactor, 0.02, lambda: None)
        await gatherResults(sends)  # every publish answered, one way or the other
        assert any(p.startswith(b"after") for p in confirmed.values())
        total = max(confirmed) + 1
        await received.wait(total, timeout=30)
        delivered = dict(received.pairs)
        wrong = {o: (p, delivered.get(o)) for o, p in confirmed.items() if delivered.get(o) != p}
        assert not wrong, (
            f"{len(wrong)} confirmed offsets delivered otherwise: {list(wrong.items())[:3]}"
        )
        assert [o for o, _ in received.pairs] == list(range(total))
        assert sequence > after
        assert "could not store message: Redis" in node.child.output
        # The node's own reconnection (with its backoff) brings /healthz back.
        for _ in range(100):
            if (await get(monitor, "/healthz"))[0] == 200:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert (await get(monitor, "/healthz"))[0] == 200
        assert "Redis reconnected" in node.child.output
        assert "Traceback" not in node.child.output
    finally:
        await gatherResults([c.close() for c in (publisher, plain, subscriber)])
        await node.stop()


async def first_offset_from_beginning(node: Node, topic: str, marker_offset: int) -> int:
    """Where a new subscriber from Beginning starts: the oldest message held."""
    client = connect(reactor, node.endpoint, extensions=True)
    received = Received()
    try:
        await client.subscribe([topic], received, start=StartAt.BEGINNING)
        await received.wait(1)
        return received.pairs[0][0]
    finally:
        await client.close()


async def publish_batches(node: Node, topic: str, batches: int, size: int) -> int:
    """`batches` batches of `size` 100-byte messages, each confirmed before
    the next goes, so that each is appended apart; the next offset."""
    client = connect(reactor, node.endpoint, extensions=True)
    try:
        last = 0
        for number in range(batches):
            sent = [client.publish(topic, b"%099d" % (number * size + i)) for i in range(size)]
            last = max(await gatherResults(sent))
        return last + 1
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("option", "value"), [("--retention-messages", "100"), ("--retention-bytes", "10000")]
)
@pytest_twisted.ensureDeferred
async def test_retention_by_count_and_bytes_keeps_the_newest_whole_batches(
    redis_servers, tmp_path, option, value
):
    node = await Node(tmp_path, redis_servers["standalone"], unique_prefix(), option, value).start()
    try:
        end = await publish_batches(node, "kept", 10, 50)
        assert end == 500
        first = await first_offset_from_beginning(node, "kept", end)
        # About 100 messages (10,000 bytes of 100-byte ones) stay, in whole
        # batches: never fewer, and at most one batch more.
        assert 500 - 100 - 50 <= first <= 400, first
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_retention_by_age_drops_what_is_older(redis_servers, tmp_path):
    from redis import Redis

    prefix = unique_prefix()
    node = await Node(tmp_path, redis_servers["standalone"], prefix, "--retention-age", "1").start()
    host, port = parse_redis_url(redis_servers["standalone"], {}).seeds[0]
    meta = topic_keys(prefix, "aging").meta
    try:
        subscriber = connect(reactor, node.endpoint, extensions=True)
        await subscriber.subscribe(["aging"], Received())  # the node serves the topic
        end = await publish_batches(node, "aging", 2, 25)
        with Redis(host=host, port=port) as redis:
            held = lambda: int(redis.hget(meta, "first") or 0)  # noqa: E731
            assert held() == 0
            waited = 0.0
            while held() < end:  # the sweep runs every second
                assert waited < 10, "nothing expired"
                await deferLater(reactor, 0.1, lambda: None)
                waited += 0.1
            assert waited > 0.5  # not before it was a second old
            assert redis.xlen(topic_keys(prefix, "aging").log) == 0
        await subscriber.close()
        # A new message is all a reader from the beginning finds.
        await publish_batches(node, "aging", 1, 1)
        assert await first_offset_from_beginning(node, "aging", end) == end
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_group_shares_its_messages_between_members_on_two_nodes(redis_servers, tmp_path):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    members = [connect(reactor, node.endpoint, extensions=True, prefetch=32) for node in (a, b)]
    publisher = connect(reactor, a.endpoint, extensions=True)
    everyone = Received()
    mine: list[list[int]] = [[], []]

    def member(number: int):
        def handle(message: Message) -> bool:
            mine[number].append(message.offset)
            return everyone(message)

        return handle

    try:
        for number, client in enumerate(members):
            await client.subscribe(["jobs"], member(number), group="workers")
        for chunk in range(30):
            await gatherResults(
                [publisher.publish("jobs", b"%d" % (chunk * 100 + i)) for i in range(100)]
            )
        await everyone.wait(3000)
        await deferLater(reactor, 0.3, lambda: None)  # nothing more may come
        offsets = mine[0] + mine[1]
        assert sorted(offsets) == list(range(3000))  # each message once
        assert mine[0] and mine[1]  # both nodes' members had a share
    finally:
        await gatherResults([c.close() for c in (*members, publisher)])
        await gatherResults([a.stop(), b.stop()])


def _wait_until_acked_in_redis(
    directory: Path, prefix: str, topic: str, group: str, below: int, timeout: float = 10.0
) -> None:
    """Until no batch holding only offsets below `below` is pending in the
    group (each was XACKed): read from the primary that holds the topic."""
    key = topic_keys(prefix, topic).log
    with redis.Redis(port=servers.primary_for_slot(directory, key_slot(key.encode()))) as client:
        done = {
            entry_id
            for entry_id, fields in client.xrange(key)
            if int(entry_id.split(b"-")[0]) - 1 + int(fields[b"n"]) <= below
        }
        deadline = time.monotonic() + timeout
        while done & {
            row["message_id"] for row in client.xpending_range(key, group, "-", "+", 10_000)
        }:
            assert time.monotonic() < deadline, "the acked batches stayed pending in Redis"
            time.sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_a_durable_consumer_resumes_on_another_node_when_its_node_dies(
    redis_servers, tmp_path
):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2, "--redis-claim-idle", "1")
    first = connect(reactor, a.endpoint, extensions=True, prefetch=50)
    publisher = connect(reactor, a.endpoint, extensions=True)
    second = None
    on_a = Received()
    never: list[Deferred[bool]] = []

    def ack_the_first_500(message: Message):
        on_a(message)
        if message.offset < 500:
            return True
        waiting: Deferred[bool] = Deferred()  # never answered: its node dies
        never.append(waiting)
        return waiting

    try:
        await first.subscribe(["audit"], ack_the_first_500, durable="auditor")
        for chunk in range(10):
            await gatherResults(
                [publisher.publish("audit", b"%d" % (chunk * 100 + i)) for i in range(100)]
            )
        await on_a.wait(550)  # 500 acked, 50 in flight unanswered
        # The node acks a batch in Redis (XACK) once all of it is acked, in
        # the background: killed before that, it would be delivered again.
        await deferToThread(
            _wait_until_acked_in_redis,
            redis_servers["dir"],
            a.prefix,
            "audit",
            "durable:auditor",
            500,
        )
        await a.kill()
        second = connect(reactor, b.endpoint, extensions=True, prefetch=50)
        on_b = Received()
        await second.subscribe(["audit"], on_b, durable="auditor")
        await on_b.wait(500, timeout=30)
        offsets = [offset for offset, _ in on_b.pairs]
        # What the dead node's consumer had acked stays done; the rest,
        # claimed and unanswered or never handed out, comes on the other node.
        assert set(offsets) == set(range(500, 1000))
        payloads = dict(on_b.pairs)
        assert all(payloads[o] == b"%d" % o for o in offsets)
    finally:
        await publisher.close()
        await first.close()
        if second is not None:
            await second.close()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_patterns_find_topics_other_nodes_made(redis_servers, tmp_path):
    a, b = await start_nodes(tmp_path, redis_servers["cluster"], 2)
    publisher = connect(reactor, a.endpoint, extensions=True)
    readers = []
    try:
        # Made on A before anyone on B asks: a pattern from the beginning finds it.
        await gatherResults([publisher.publish("orders.us", b"us %d" % i) for i in range(3)])
        history = Received()
        readers.append(connect(reactor, b.endpoint, extensions=True))
        await readers[-1].subscribe(["orders.>"], history, start=StartAt.BEGINNING)
        await history.wait(3)
        # Made on A after B's pattern subscribed: B hears of it and takes it
        # from its first message; a pattern from now leaves old topics' history.
        live = Received()
        readers.append(connect(reactor, b.endpoint, extensions=True))
        await readers[-1].subscribe(["orders.*"], live)
        await gatherResults([publisher.publish("orders.eu", b"eu %d" % i) for i in range(3)])
        await publisher.publish("orders.us", b"us 3")
        await gatherResults([live.wait(4), history.wait(7)])
        assert sorted(p for _, p in live.pairs) == [b"eu 0", b"eu 1", b"eu 2", b"us 3"]
        assert sorted(p for _, p in history.pairs) == sorted(
            [b"us 0", b"us 1", b"us 2", b"us 3", b"eu 0", b"eu 1", b"eu 2"]
        )
    finally:
        await gatherResults([c.close() for c in (publisher, *readers)])
        await gatherResults([a.stop(), b.stop()])


@pytest.fixture
def tls_redis(tmp_path):
    """A Redis of this test's own that speaks only TLS and wants a password."""
    from tests.certs import Authority

    if not servers.available():
        pytest.skip("redis-server is not installed")
    authority = Authority(tmp_path / "pki")
    pair = authority.issue("redis", "localhost", server=True)
    port = free_port()
    directory = tmp_path / "tls-redis"
    config = servers._config(directory, port, cluster=False)
    text = config.read_text().replace(f"port {port}", f"port 0\ntls-port {port}")
    text += (
        f"tls-cert-file {pair.cert}\ntls-key-file {pair.key}\n"
        f"tls-ca-cert-file {authority.pem}\ntls-auth-clients no\nrequirepass s3cret\n"
    )
    config.write_text(text)
    subprocess.run(["redis-server", str(config)], check=True, capture_output=True)
    yield port, authority.pem
    servers.kill(directory, port, signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_tls_and_a_password_from_the_environment(tls_redis, tmp_path):
    port, ca = tls_redis
    url = f"rediss://localhost:{port}?ca={ca}"
    node = Node(tmp_path, url, unique_prefix(), env={PASSWORD_VARIABLE: "s3cret"})
    await node.start()
    client = connect(reactor, node.endpoint, extensions=True)
    try:
        received = Received()
        await client.subscribe(["secure"], received)
        assert await client.publish("secure", b"over TLS") == 0
        await received.wait(1)
        assert received.pairs == [(0, b"over TLS")]
    finally:
        await client.close()
        await node.stop()
    assert "s3cret" not in node.child.output
    # A wrong password: the node says why, and refuses publishes clearly.
    wrong = Node(tmp_path, url, unique_prefix(), env={PASSWORD_VARIABLE: "guess"})
    wrong.ready_line = "cannot reach Redis at"
    await wrong.start()
    errors: list[str] = []
    client = connect(reactor, wrong.endpoint, extensions=True, on_publish_error=errors.append)
    try:
        with pytest.raises(BrokerError, match="could not store message: Redis"):
            await client.publish("secure", b"refused")
        assert "password" in wrong.child.output.lower()
        assert "guess" not in wrong.child.output
    finally:
        await client.close()
        await wrong.stop()


def _primary_of(directory: Path, prefix: str, topic: str) -> int:
    return servers.primary_for_slot(directory, key_slot(topic_keys(prefix, topic).log.encode()))


async def _refusal(sent: Deferred) -> tuple[BaseException, float]:
    """What a publish failed with, and how long after it was sent."""
    began = reactor.seconds()
    try:
        offset = await sent
    except BrokerError as error:
        return error, reactor.seconds() - began
    raise AssertionError(f"confirmed at {offset}, not refused")


@pytest_twisted.ensureDeferred
async def test_a_publish_redis_refuses_fails_at_once_and_was_not_stored(redis_servers, tmp_path):
    """NOREPLICAS (the topic's primary has lost its replica, as a promoted
    one has until the old primary resynced) is a clean refusal, at once: not
    after WAIT's timeout (half of --redis-timeout, 2.5 s), and nothing of it
    is stored."""
    directory = redis_servers["dir"]
    (node,) = await start_nodes(tmp_path, redis_servers["cluster"], 1, "--redis-replicas", "1")
    primary = _primary_of(directory, node.prefix, "refused")
    replica = servers.replica_of(directory, primary)
    publisher = connect(reactor, node.endpoint, extensions=True)
    subscriber = connect(reactor, node.endpoint, extensions=True)
    stopped = servers.pid(directory, replica)
    assert stopped is not None
    try:
        await publisher.connected(timeout=10)
        servers.config_set(primary, "min-replicas-max-lag", "1")
        os.kill(stopped, signal.SIGSTOP)
        await deferToThread(servers.wait_for_good_replicas, primary, 0)
        for attempt in range(3):
            error, took = await _refusal(publisher.publish("refused", b"refused %d" % attempt))
            assert not isinstance(error, OutcomeUnknown), error
            assert "NOREPLICAS" in str(error)
            assert str(error).startswith("could not store message")
            assert took < 1.0, f"refused after {took:.2f} s"
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        await deferToThread(servers.wait_for_good_replicas, primary, 1)
        assert await publisher.publish("refused", b"stored") == 0  # none before it
        received = Received()
        await subscriber.subscribe(["refused"], received, start=StartAt.BEGINNING)
        await received.wait(1)
        assert received.pairs == [(0, b"stored")]
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        servers.config_set(primary, "min-replicas-max-lag", "10")
        await gatherResults([publisher.close(), subscriber.close()])
        await node.stop()
        servers.wait_until_healthy(directory)


@pytest_twisted.ensureDeferred
async def test_a_publish_that_may_have_been_stored_is_not_a_clean_refusal(redis_servers, tmp_path):
    """The topic's replica stopped (SIGSTOP): the primary stores the append,
    WAIT gets no acknowledgement, and the publisher is told the outcome is
    unknown (OutcomeUnknown), not that it was refused: once the replica is
    back, the message is delivered."""
    directory = redis_servers["dir"]
    (node,) = await start_nodes(
        tmp_path, redis_servers["cluster"], 1, "--redis-replicas", "1", "--redis-timeout", "1"
    )
    replica = servers.replica_of(directory, _primary_of(directory, node.prefix, "unknown"))
    publisher = connect(reactor, node.endpoint, extensions=True)
    subscriber = connect(reactor, node.endpoint, extensions=True)
    stopped = servers.pid(directory, replica)
    assert stopped is not None
    try:
        await publisher.connected(timeout=10)
        os.kill(stopped, signal.SIGSTOP)
        error, _ = await _refusal(publisher.publish("unknown", b"maybe"))
        assert isinstance(error, OutcomeUnknown), error
        assert str(error).startswith("outcome unknown")
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        # It was stored: the next publish comes after it, and both arrive.
        assert await publisher.publish("unknown", b"sure") == 1
        received = Received()
        await subscriber.subscribe(["unknown"], received, start=StartAt.BEGINNING)
        await received.wait(2)
        assert received.pairs == [(0, b"maybe"), (1, b"sure")]
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await gatherResults([publisher.close(), subscriber.close()])
        await node.stop()
        servers.wait_until_healthy(directory)


def test_redis_py_refusals_that_mean_the_cluster_moved_are_known(redis_servers):
    """redis-py turns MOVED into a MovedError whose text is only "SLOT
    HOST:PORT": the store must know it by its class (and say what it was)."""
    directory = redis_servers["dir"]
    slot = key_slot(b"moved-key")
    owner = servers.primary_for_slot(directory, slot)
    other = next(port for port in servers.slot_ranges(directory) if port != owner)
    with redis.Redis(port=other) as wrong, pytest.raises(redis.ResponseError) as caught:
        wrong.set("moved-key", "x")
    assert layout_refusal(caught.value) == f"MOVED: slot {slot} is served by 127.0.0.1:{owner}"
    with redis.Redis(port=owner) as right, pytest.raises(redis.ResponseError) as caught:
        right.execute_command("FCALL", "no_such_function", 0)
    assert layout_refusal(caught.value) is None


@pytest_twisted.ensureDeferred
async def test_a_topic_goes_on_when_its_primary_hands_over_to_its_replica(redis_servers, tmp_path):
    """A manual failover moves the topic's slot while the node still thinks
    the old primary holds it: the old primary answers MOVED, and the node
    must learn the new layout and store there, not refuse every publish."""
    directory = redis_servers["dir"]
    (node,) = await start_nodes(tmp_path, redis_servers["cluster"], 1, "--redis-replicas", "1")
    publisher = connect(reactor, node.endpoint, extensions=True)
    # A topic on another shard than the directory of topics: the node hears
    # nothing of the handover but the MOVED its appends get.
    directory_owner = servers.primary_for_slot(directory, key_slot(b"directory"))
    topic = next(
        name
        for name in (f"handed-{n}" for n in range(1000))
        if _primary_of(directory, node.prefix, name) != directory_owner
    )
    old = _primary_of(directory, node.prefix, topic)
    new = None
    try:
        assert await publisher.publish(topic, b"before") == 0
        new = await deferToThread(servers.hand_over, directory, old)
        await deferToThread(servers.wait_for_good_replicas, new, 1)
        refusals = []
        for _attempt in range(50):
            try:
                offset = await publisher.publish(topic, b"after")
                break
            except BrokerError as error:
                refusals.append(str(error))
                await deferLater(reactor, 0.1, lambda: None)
        else:
            raise AssertionError(f"never stored after the handover: {refusals[-3:]}")
        assert offset == 1
        assert all("MOVED" in text or "NOREPLICAS" in text for text in refusals), refusals
    finally:
        await publisher.close()
        await node.stop()
        if new is not None:  # the layout the other tests expect
            await deferToThread(servers.hand_over, directory, new)
        servers.wait_until_healthy(directory)


def _admin_call(url: str, method: str = "POST", body: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def _admin(
    monitor: int, method: str, path: str, body: dict | None = None
) -> tuple[int, dict]:
    status, said = await deferToThread(
        _admin_call, f"http://127.0.0.1:{monitor}/admin/{path}", method, body
    )
    return status, json.loads(said)


async def _until_answered(monitor: int, method: str, path: str, body: dict | None = None) -> dict:
    """Ask until the answer is not a 409 (a node's reading shows for
    claim_idle after it stops); the answer, which must be a 200."""
    deadline = time.monotonic() + 30
    while True:
        status, said = await _admin(monitor, method, path, body)
        if status != 409 or time.monotonic() > deadline:
            assert status == 200, said
            return said
        await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_purge_on_one_node_empties_the_topic_for_every_node(redis_servers, tmp_path):
    monitor = free_port()
    prefix = unique_prefix()
    store = redis_servers["cluster"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await Node(
        tmp_path / "a", store, prefix, "--monitor", f"tcp:{monitor}:interface=127.0.0.1"
    ).start()
    b = await Node(tmp_path / "b", store, prefix).start()
    try:
        end = await publish_batches(a, "purged", 4, 25)
        assert end == 100
        status, said = await _admin(monitor, "POST", "topics/purged/purge")
        assert status == 200 and said == {"purged": "purged", "messages": 100}
        # Offsets go on; a reader from Beginning, on the other node, starts
        # at the first message published since.
        assert await publish_batches(a, "purged", 1, 1) == 101
        assert await first_offset_from_beginning(b, "purged", 100) == 100
    finally:
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_an_operator_sees_resets_and_deletes_across_nodes(redis_servers, tmp_path):
    """Topics, durable consumers and deletes through one node's admin API
    act on what every node shares: a durable consumer read on the other
    node cannot be reset (409 naming that node) until it stops; a reset
    takes it to the batch holding the offset; a deleted topic closes on the
    other node too, and offsets go on if its name is used again."""
    monitors = free_port(), free_port()
    prefix = unique_prefix()
    store = redis_servers["cluster"]
    nodes = []
    for name, monitor in zip("ab", monitors, strict=True):
        (tmp_path / name).mkdir()
        options = ("--monitor", f"tcp:{monitor}:interface=127.0.0.1", "--node-name", name)
        nodes.append(Node(tmp_path / name, store, prefix, "--redis-claim-idle", "1", *options))
    a, b = await gatherResults([ensureDeferred(node.start()) for node in nodes])
    on_a, on_b = monitors
    reader = connect(reactor, b.endpoint, extensions=True, prefetch=50)
    try:
        assert await publish_batches(a, "ledger", 4, 25) == 100
        assert await publish_batches(b, "only-b", 1, 3) == 3
        # a lists the topic only b opened, from what Redis holds, once b's
        # announcement of the new name has reached it.
        deadline = time.monotonic() + 10
        while True:
            status, listed = await _admin(on_a, "GET", "topics")
            topics = {topic["name"]: topic for topic in listed["topics"]}
            if "only-b" in topics or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert status == 200 and topics["only-b"]["next"] == 3, listed

        received = Received()
        await reader.subscribe(["ledger"], received, durable="auditor", start=StartAt.BEGINNING)
        await received.wait(100)
        status, listed = await _admin(on_a, "GET", "consumers")
        assert status == 200, listed
        (row,) = [c for c in listed["consumers"] if c["topic"] == "ledger"]
        assert (row["name"], row["durable"], row["reading_nodes"]) == ("auditor", True, ["b"])
        resetting = ("POST", "consumers/ledger/auditor/reset", {"offset": 40})
        status, refused = await _admin(on_a, *resetting)
        assert status == 409 and "read on node(s) b" in refused["error"], refused

        await reader.close()
        reset = await _until_answered(on_a, *resetting)
        assert reset["position"] == 25  # the batch holding 40 starts at 25
        again = connect(reactor, b.endpoint, extensions=True, prefetch=50)
        resumed = Received()
        await again.subscribe(["ledger"], resumed, durable="auditor")
        await resumed.wait(75)
        assert [offset for offset, _ in resumed.pairs] == list(range(25, 100))
        await again.close()

        await _until_answered(on_a, "DELETE", "consumers/ledger/auditor")
        status, listed = await _admin(on_a, "GET", "consumers")
        assert [c for c in listed["consumers"] if c["topic"] == "ledger"] == []

        status, deleted = await _admin(on_a, "DELETE", "topics/ledger")
        assert status == 200 and deleted == {"deleted": "ledger"}, deleted
        deadline = time.monotonic() + 10
        while True:  # b hears of it and closes the topic it had open
            status, listed = await _admin(on_b, "GET", "topics")
            if "ledger" not in {topic["name"] for topic in listed["topics"]}:
                break
            assert time.monotonic() < deadline, listed
            await deferLater(reactor, 0.05, lambda: None)
        status, missing = await _admin(on_a, "GET", "topics/ledger")
        assert status == 404, missing
        # The name used again: offsets go on, and nothing old comes back.
        assert await publish_batches(b, "ledger", 1, 1) == 101
        assert await first_offset_from_beginning(a, "ledger", 100) == 100
    finally:
        await reader.close()
        await gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_a_durable_consumer_is_reset_to_a_time_from_the_topics_time_marks(
    redis_servers, tmp_path
):
    """Redis marks a topic's time at most once a second: a time more than a
    second after a batch finds the next batch appended."""
    monitor = free_port()
    options = ("--monitor", f"tcp:{monitor}:interface=127.0.0.1", "--redis-claim-idle", "1")
    node = await Node(tmp_path, redis_servers["cluster"], unique_prefix(), *options).start()
    try:
        assert await publish_batches(node, "timed", 1, 10) == 10
        between = time.time() + 1.1
        while time.time() < between + 0.05:  # the next batch comes after it
            await deferLater(reactor, 0.05, lambda: None)
        assert await publish_batches(node, "timed", 1, 10) == 20
        reader = connect(reactor, node.endpoint, extensions=True)
        received = Received()
        await reader.subscribe(["timed"], received, durable="audit", start=StartAt.BEGINNING)
        await received.wait(20)
        await reader.close()
        reset = await _until_answered(
            monitor, "POST", "consumers/timed/audit/reset", {"time": between}
        )
        assert reset["position"] == 10
        reset = await _until_answered(
            monitor, "POST", "consumers/timed/audit/reset", {"time": between - 3600}
        )
        assert reset["position"] == 0
    finally:
        await node.stop()
