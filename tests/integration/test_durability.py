"""Durability end to end: SIGKILL and restart, From64, a full disk, retention."""

from __future__ import annotations

import random
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater

from broker import wire
from broker.client import Message, connect
from broker.log import FileStore, FileStoreSettings, FsyncPolicy, Retention
from broker.log import file as file_module
from broker.log.disk import OS_DISK
from broker.server import BrokerFactory, BrokerSettings
from broker.testing import RunningBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox
from tests.disks import FillableDisk
from tests.process import free_port, start_durable_broker
from tests.raw import connect_raw


class UntilMarker:
    """A handler that keeps every payload until it sees `marker`."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.payloads: list[bytes] = []
        self.done: Deferred[None] = Deferred()
        self.done.addTimeout(60, reactor)

    def __call__(self, message: Message) -> bool:
        self.payloads.append(message.payload)
        if message.payload == self.marker and not self.done.called:
            self.done.callback(None)
        return True


async def recovered_sequences(endpoint: str, marker: bytes) -> list[int]:
    """Everything the broker holds, read from Beginning up to a fresh marker;
    checked intact (each payload exact), dense and in order."""
    checker = connect(reactor, endpoint)
    reader = UntilMarker(marker)
    try:
        await checker.subscribe(["durable"], reader, start=StartAt.BEGINNING)
        await checker.publish("durable", marker)
        await reader.done
    finally:
        await checker.close()
    assert reader.payloads.count(marker) == 1
    sequences = [int(p.split()[1]) for p in reader.payloads if p.startswith(b"seq ")]
    assert [b"seq %d" % n for n in sequences] == [
        p for p in reader.payloads if p.startswith(b"seq ")
    ]
    assert sequences == list(range(len(sequences))), "not dense or not in order"
    return sequences


async def publish_until_killed(broker, port: int, first: int, seconds: float) -> int:
    """Publish numbered messages from `first` while a live subscriber
    watches; SIGKILL the broker `seconds` after the first delivery. Return the highest number
    the subscriber received (under --fsync always, it was on disk)."""
    seen: list[int] = []
    first_seen: Deferred[None] = Deferred()

    def watch(message: Message) -> None:
        if message.payload.startswith(b"seq "):
            seen.append(int(message.payload.split()[1]))
            if not first_seen.called:
                first_seen.callback(None)

    watcher = connect(reactor, f"tcp:127.0.0.1:{port}")
    await watcher.subscribe(["durable"], watch, start=StartAt.CURRENT)
    publisher = await connect_raw(port)
    publisher.send(wire.encode_u16(wire.ACTION_PUBLISH))
    sequence = iter(range(first, 10**9))

    def publish_some() -> None:
        publisher.send(
            b"".join(wire.encode_publish("durable", b"seq %d" % next(sequence)) for _ in range(20))
        )

    loop = LoopingCall(publish_some)
    loop.start(0.002)
    await first_seen.addTimeout(30, reactor)  # a slow disk may take a while to sync
    await deferLater(reactor, seconds, lambda: None)  # the random moment of the crash
    broker.signal("KILL")
    assert await broker.ended == "signal 9"
    loop.stop()
    publisher.transport.abortConnection()
    await watcher.close()
    return max(seen)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigkill_at_random_points_loses_nothing_delivered_and_keeps_offsets_dense(tmp_path):
    rng = random.Random(20261127)
    port = free_port()
    delivered_before_kill = -1
    for round_number in range(4):
        broker = await start_durable_broker(
            tmp_path, port, "--segment-bytes", "30000", "--ack-timeout", "30"
        )
        sequences = await recovered_sequences(f"tcp:127.0.0.1:{port}", b"marker %d" % round_number)
        assert len(sequences) - 1 >= delivered_before_kill, "a delivered message was lost"
        delivered_before_kill = await publish_until_killed(
            broker, port, len(sequences), rng.uniform(0.3, 1.0)
        )


@pytest_twisted.ensureDeferred
async def test_a_subscriber_can_start_at_offset_70000():
    running = start_broker()
    try:
        publisher = await connect_raw(running.port)
        publisher.send(
            wire.encode_u16(wire.ACTION_PUBLISH)
            + b"".join(wire.encode_publish("big", b"%d" % i) for i in range(70_010))
        )
        topic_log = None
        for _ in range(500):  # until the broker has taken the burst in
            await deferLater(reactor, 0.01, lambda: None)
            if "big" in running.factory.broker.registry:
                topic_log = running.factory.broker.registry.get("big").log
                if topic_log.next_offset == 70_010:
                    break
        assert topic_log is not None and topic_log.next_offset == 70_010
        client = connect(reactor, running.endpoint)
        inbox = Inbox()
        try:
            await client.subscribe(["big"], inbox, start=StartAt.FROM, offset=70_000)
            await inbox.wait(10)
            assert inbox.payloads == [b"%d" % i for i in range(70_000, 70_010)]
        finally:
            await client.close()
        # On the wire: start-at 3, then a u64.
        assert wire.encode_subscribe(["big"], StartAt.FROM64, 70_000).endswith(
            b"\x00\x03" + (70_000).to_bytes(8, "big")
        )
    finally:
        await running.stop()


def file_broker(tmp_path, disk=OS_DISK, **settings) -> RunningBroker:
    factory = BrokerFactory(
        BrokerSettings(),
        store=FileStore(tmp_path, FileStoreSettings(**settings), reactor, disk=disk),
    )
    factory.broker.start()
    return RunningBroker(factory, reactor.listenTCP(0, factory, interface="127.0.0.1"))


@pytest_twisted.ensureDeferred
async def test_a_full_disk_answers_publishers_with_errors_and_keeps_serving(tmp_path):
    disk = FillableDisk()
    running = file_broker(tmp_path, disk)
    try:
        client = connect(reactor, running.endpoint)
        inbox = Inbox()
        await client.subscribe(["d"], inbox, start=StartAt.BEGINNING)
        publisher = await connect_raw(running.port)
        publisher.send(wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_publish("d", b"kept"))
        await inbox.wait(1)  # stored before the disk fills

        disk.full = True
        publisher.send(wire.encode_publish("d", b"lost 1") + wire.encode_publish("d", b"lost 2"))
        expected = wire.encode_error("could not store message: No space left on device")
        assert await publisher.read(2 * len(expected)) == expected * 2
        disk.full = False
        publisher.send(wire.encode_publish("d", b"also kept"))
        await inbox.wait(2)
        assert inbox.payloads == [b"kept", b"also kept"]
        await client.close()
    finally:
        await running.stop()
        running.factory.broker.registry.close()


@pytest_twisted.ensureDeferred
async def test_an_offset_removed_by_retention_starts_at_the_oldest_held():
    running = start_broker(BrokerSettings(retention=Retention(max_messages=10)))
    client = connect(reactor, running.endpoint)
    try:
        for i in range(100):
            await client.publish("r", b"%d" % i)
        inbox = Inbox()
        probe = Inbox()
        await client.subscribe(["probe"], probe)
        await client.publish("probe", b"barrier")  # publishes are handled in order
        await probe.wait(1)
        await client.subscribe(["r"], inbox, start=StartAt.FROM, offset=5)
        await inbox.wait(10)
        assert inbox.payloads == [b"%d" % i for i in range(90, 100)]
    finally:
        await client.close()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_fsync_always_delivers_only_what_is_on_disk(tmp_path, monkeypatch):
    on_disk = threading.Event()
    real = file_module._fsync_all

    def slow_disk(disk, fds):  # runs in the thread pool
        on_disk.wait(10)
        real(disk, fds)

    running = file_broker(tmp_path, fsync=FsyncPolicy.ALWAYS)
    # Plain: publish fires once written, before the broker has it on disk.
    client = connect(reactor, running.endpoint, extensions=False)
    try:
        inbox = Inbox()
        await client.subscribe(["a"], inbox)
        monkeypatch.setattr(file_module, "_fsync_all", slow_disk)
        await client.publish("a", b"durable")
        await deferLater(reactor, 0.3, lambda: None)
        assert inbox.payloads == []  # written, but not yet synced: not delivered
        on_disk.set()
        await inbox.wait(1)
        assert inbox.payloads == [b"durable"]
    finally:
        on_disk.set()
        await client.close()
        await running.stop()
        running.factory.broker.registry.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_fsync_refuses_the_topic_until_a_restart_and_says_so(tmp_path):
    """A publish whose fsync failed is refused, not confirmed, and so is
    every later one to that topic (the disk may have dropped what the fsync
    was to write); the metric and /varz's store report name it; other
    topics go on; a restarted broker serves what the disk holds."""
    from prometheus_client import CollectorRegistry, generate_latest

    from broker.client import BrokerError
    from broker.monitoring.metrics import BrokerCollector

    disk = FillableDisk()
    running = file_broker(tmp_path, disk, fsync=FsyncPolicy.ALWAYS)
    client = connect(reactor, running.endpoint, extensions=True)
    try:
        assert await client.publish("orders", b"kept") == 0
        disk.failing = True
        with pytest.raises(BrokerError, match="sync to disk failed"):
            await client.publish("orders", b"in doubt")
        disk.failing = False
        with pytest.raises(BrokerError, match="restart the broker"):
            await client.publish("orders", b"refused")
        assert await client.publish("other", b"fine") == 0
        registry = CollectorRegistry()
        registry.register(BrokerCollector(running.factory))
        assert b"broker_store_failed_topics 1.0" in generate_latest(registry)
        assert running.factory.broker.store.status()["failed_topics"] == ["orders"]
    finally:
        await client.close()
        await running.stop()
        running.factory.broker.registry.close()
    again = file_broker(tmp_path, fsync=FsyncPolicy.ALWAYS)
    try:
        log = again.factory.broker.registry.get("orders").log
        assert log.read(0, 10) == [b"kept"] and log.next_offset == 1
    finally:
        await again.stop()
        again.factory.broker.registry.close()
