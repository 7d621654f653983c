"""BrokerService in Twisted's order: listen, open the store, run the upkeep;
on stop, connections close before the store."""

from __future__ import annotations

import pytest_twisted
from twisted.application.internet import TimerService
from twisted.internet import reactor
from twisted.internet.task import Clock

from broker.app.service import BrokerService
from broker.client import connect
from broker.log import FileStoreSettings, FsyncPolicy, Retention
from broker.server import BrokerFactory, BrokerSettings
from tests.process import free_port


@pytest_twisted.ensureDeferred
async def test_the_store_opens_at_start_and_closes_after_the_connections(tmp_path):
    port = free_port()
    service = BrokerService(
        f"tcp:{port}:interface=127.0.0.1",
        BrokerSettings(),
        data_dir=tmp_path / "data",
        file_settings=FileStoreSettings(fsync=FsyncPolicy.INTERVAL),
    )
    assert not (tmp_path / "data").exists()  # nothing opened yet
    timers = [child for child in service if isinstance(child, TimerService)]
    assert len(timers) == 5  # rates, lag, idle consumers, retention and fsync
    service.privilegedStartService()
    service.startService()
    assert service.factory.broker.store.status() == {
        "kind": "file",
        "data_dir": str((tmp_path / "data").resolve()),
        "damaged_records": 0,
        "failed_topics": [],
    }
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    await client.publish("kept", b"one")
    await client.subscriber_connected()
    registry = service.factory.broker.registry
    open_at_close: list[int] = []
    close = registry.close
    registry.close = lambda: (open_at_close.append(len(service.factory.connections)), close())
    await service.stopService()
    assert open_at_close == [0]  # every connection was gone before the store closed
    await client.close()
    # What was published is on disk.
    again = BrokerService(
        f"tcp:{port}:interface=127.0.0.1", BrokerSettings(), data_dir=tmp_path / "data"
    )
    again.startService()
    try:
        log = again.factory.broker.registry.get("kept").log
        assert log.read(0, 1) == [b"one"]
    finally:
        await again.stopService()


def test_memory_logs_take_their_time_from_the_reactor():
    clock = Clock()
    clock.advance(1_000)
    factory = BrokerFactory(BrokerSettings(retention=Retention(max_age=60)), clock=clock)
    topic = factory.broker.registry.get("aging")
    topic.append([b"old"])
    clock.advance(61)
    topic.append([b"new"])
    assert topic.log.apply_retention(clock.seconds()) == 1
    assert topic.log.read(topic.log.first_offset, 1) == [b"new"]
