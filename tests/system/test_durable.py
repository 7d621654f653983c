"""Durable consumers kept by the broker: a consumer that acks half and goes
is resumed at its first unacked message by whoever comes back with its
name, across a restart of the broker with --data-dir (and a SIGKILL under
--fsync always); the positions file stays small whatever the number of
acks; idle positions are forgotten."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from broker.app.service import BrokerService
from broker.client import Message, connect
from broker.core.delivery import DeliverySettings
from broker.log import FileStoreSettings, FsyncPolicy, Retention
from broker.log.positions import COMPACT_AT, POSITIONS_FILE, Position, PositionStore
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker
from broker.wire import StartAt
from tests.conftest import HeldAnswers, Inbox
from tests.process import free_port, start_durable_broker


def acks_below(limit: int, seen: list[Message]):
    """A handler that acks offsets below `limit` and leaves the rest unanswered."""

    def handle(message: Message):
        seen.append(message)
        return True if message.offset < limit else Deferred()

    return handle


def test_a_new_consumer_with_the_name_resumes_at_the_first_unacked():
    broker = InMemoryBroker(BrokerSettings(delivery=DeliverySettings(ack_delay=0.5)))
    publisher = broker.client(extensions=True)
    sent = [publisher.publish("invoices", b"%d" % n) for n in range(10)]
    first: list[Message] = []
    consumer = broker.client(extensions=True, prefetch=10)
    consumer.subscribe(
        ["invoices"], acks_below(5, first), start=StartAt.BEGINNING, durable="billing"
    )
    broker.flush()
    assert [broker.result(each) for each in sent] == list(range(10))
    assert len(first) == 10
    closing = consumer.close()
    broker.advance(0.5)
    broker.result(closing)
    second: list[Message] = []
    again = broker.client(extensions=True, prefetch=10)
    again.subscribe(["invoices"], second.append, start=StartAt.CURRENT, durable="billing")
    broker.advance(1)
    assert sorted(m.offset for m in second) == [5, 6, 7, 8, 9]
    assert {m.attempt for m in second} == {2}  # handed out before: redeliveries
    position = broker.core.groups.positions.get("invoices", "billing")
    assert position is not None and position.low == 10


async def ten_acked_half(client, seen: list[Message]) -> None:
    """Publish ten to "ledger"; durable "audit" acks the first five of them."""
    for n in range(10):
        await client.publish("ledger", b"%d" % n)
    await client.subscribe(
        ["ledger"], acks_below(5, seen), start=StartAt.BEGINNING, durable="audit"
    )


async def resume_audit(port: int):
    """A new client as durable "audit" on "ledger", once it has had five."""
    resumed = Inbox()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=10)
    await client.subscribe(["ledger"], resumed, durable="audit")
    await resumed.wait(5)
    return client, resumed


@pytest_twisted.ensureDeferred
async def test_a_durable_position_survives_a_broker_restart(tmp_path):
    async def broker_on(port: int) -> BrokerService:
        service = BrokerService(
            [f"tcp:{port}:interface=127.0.0.1"],
            BrokerSettings(),
            data_dir=tmp_path / "data",
            file_settings=FileStoreSettings(fsync=FsyncPolicy.ALWAYS),
        )
        service.privilegedStartService()
        service.startService()
        return service

    port = free_port()
    service = await broker_on(port)
    seen: list[Message] = []
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=10)
    try:
        await ten_acked_half(client, seen)
        while len(seen) < 10:
            await deferLater(reactor, 0.01, lambda: None)
    finally:
        await client.close()
        await service.stopService()
    service = await broker_on(port)
    client, resumed = await resume_audit(port)
    try:
        assert sorted(m.offset for m in resumed.messages) == [5, 6, 7, 8, 9]
        assert {m.attempt for m in resumed.messages} == {2}
    finally:
        await client.close()
        await service.stopService()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_durable_position_survives_a_sigkill_under_fsync_always(tmp_path):
    port = free_port()
    broker = await start_durable_broker(tmp_path, port)
    seen: list[Message] = []
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=10)
    try:
        await ten_acked_half(client, seen)
        positions = tmp_path / "data" / POSITIONS_FILE
        for _ in range(1000):  # the acks are on disk once the file says so
            lines = positions.read_text().splitlines() if positions.exists() else []
            if lines and json.loads(lines[-1])["low"] == 5:
                break
            await deferLater(reactor, 0.01, lambda: None)
        broker.signal("KILL")
        await broker.ended
    finally:
        await client.close()
    again = await start_durable_broker(tmp_path, port)
    client, resumed = await resume_audit(port)
    try:
        assert sorted(m.offset for m in resumed.messages) == [5, 6, 7, 8, 9]
    finally:
        await client.close()
        again.signal("TERM")
        await again.ended


def opened(directory, fsync=FsyncPolicy.NEVER) -> PositionStore:
    """The positions kept in `directory`, read as a starting broker reads them."""
    store = PositionStore(directory, fsync)
    store.open()
    return store


@pytest.mark.slow
def test_the_positions_file_stays_small_after_a_million_acks(tmp_path):
    store = opened(tmp_path, FsyncPolicy.NEVER)
    positions = [Position(0), Position(0)]
    for offset in range(1_000_000):
        # Two consumers; acks arrive a little out of order, as with prefetch.
        done = offset ^ 1
        for number, position in enumerate(positions):
            position.done(done)
            store.put("t", f"c{number}", position)
        if offset % 1000 == 999:
            store.flush()
    store.flush()
    assert [p.low for p in positions] == [1_000_000, 1_000_000]
    assert store.size < COMPACT_AT + 4096
    store.close()
    reopened = opened(tmp_path)
    assert reopened.get("t", "c1").low == 1_000_000
    assert (tmp_path / POSITIONS_FILE).stat().st_size < 200


def test_idle_positions_are_forgotten_and_a_cut_last_line_is_skipped(tmp_path):
    store = opened(tmp_path, FsyncPolicy.ALWAYS)
    store.put("t", "old", Position(3, touched=100.0))
    store.put("t", "new", Position(7, touched=1000.0))
    store.flush()
    assert store.forget_idle(now=1100.0, idle=500.0) == [("t", "old")]
    store.flush()
    store.close()
    with (tmp_path / POSITIONS_FILE).open("a") as damaged:
        damaged.write('{"topic": "t", "name": "new", "lo')  # cut by a crash
    reopened = opened(tmp_path)
    assert reopened.get("t", "old") is None and reopened.get("t", "new").low == 7


@pytest_twisted.ensureDeferred
async def test_retention_by_count_keeps_what_a_durable_consumer_has_not_acked():
    port = free_port()
    service = BrokerService(
        [f"tcp:{port}:interface=127.0.0.1"], BrokerSettings(retention=Retention(max_messages=5))
    )
    service.privilegedStartService()
    service.startService()
    held = HeldAnswers()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=2)
    try:
        await client.subscribe(["kept"], held, start=StartAt.BEGINNING, durable="slow")
        service.apply_retention()  # the durable consumer's floor: offset 0
        for n in range(20):
            await client.publish("kept", b"%d" % n)
        topic = service.factory.broker.registry.get("kept")
        service.apply_retention()
        assert topic.log.first_offset == 0  # nothing it has not acked is gone
        while len(held.messages) < 20:
            held.answer_all()
            await deferLater(reactor, 0.01, lambda: None)
        held.answer_all()
        while service.factory.broker.groups.positions.get("kept", "slow").low < 20:
            await deferLater(reactor, 0.01, lambda: None)
        service.apply_retention()
        assert topic.log.first_offset == 15  # acked: the count limit applies again
    finally:
        held.answer_all()
        await client.close()
        await service.stopService()


def test_a_limit_that_forces_removal_moves_a_durable_consumer_past_it(log_lines):
    broker = InMemoryBroker(BrokerSettings(retention=Retention(max_bytes=50)))
    publisher = broker.client(extensions=True)
    held: list[Message] = []
    consumer = broker.client(extensions=True, prefetch=1)
    consumer.subscribe(["tiny"], held.append, start=StartAt.BEGINNING, durable="behind")
    broker.flush()
    published = [publisher.publish("tiny", b"x" * 20) for _ in range(10)]
    broker.advance(1)
    for each in published:
        broker.result(each)
    assert log_lines.matching("durable consumer 'behind' of 'tiny' skips ahead")
    position = broker.core.groups.positions.get("tiny", "behind")
    assert position.low == 10 and not position.acked


def test_a_full_disk_under_the_positions_file_loses_no_line_and_writes_again(tmp_path):
    """Found by the simulator: a write that fails part way is cut back to
    the last whole line, nothing is raised, and the position is written at
    the next flush, so a restart reads it."""
    from tests.disks import FillableDisk

    disk = FillableDisk()
    store = PositionStore(tmp_path, FsyncPolicy.ALWAYS, disk)
    store.open()
    store.put("t", "d", Position(3))
    store.flush()
    size = (tmp_path / POSITIONS_FILE).stat().st_size
    disk.full, disk.written_when_full = True, 0.5
    store.put("t", "d", Position(7))
    store.flush()  # half a line landed, then ENOSPC: cut back, kept to write again
    assert (tmp_path / POSITIONS_FILE).stat().st_size == size
    disk.full = False
    store.flush()
    store.close()
    assert opened(tmp_path).get("t", "d").low == 7
