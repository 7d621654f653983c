"""At-least-once, and stored exactly once, under fire: a durable broker killed with SIGKILL and
subscriber connections dropped, during a 100,000-message run with confirms
published in a loop (so publishes also arrive while the broker is down).
Every confirmed offset is checked against what was delivered and against
the records the store holds on disk afterwards."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from broker.client import Message, connect
from broker.log import FileStore, FileStoreSettings
from broker.wire import StartAt
from tests.process import free_port, start_durable_broker

MESSAGES = 100_000


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_nothing_confirmed_is_lost_across_kills_and_dropped_subscribers(tmp_path):
    port = free_port()
    endpoint = f"tcp:127.0.0.1:{port}"
    broker = await start_durable_broker(tmp_path, port)
    publisher = connect(reactor, endpoint, extensions=True, max_queued=MESSAGES)
    subscriber = connect(reactor, endpoint, extensions=True, prefetch=256)
    delivered: dict[int, bytes] = {}  # offset -> payload, as received
    first_deliveries: list[int] = []
    confirmed: dict[int, int] = {}  # sequence -> offset

    def receive(message: Message) -> bool:
        if message.offset not in delivered:
            first_deliveries.append(message.offset)
        previous = delivered.setdefault(message.offset, message.payload)
        assert previous == message.payload, "an offset changed its message"
        return True

    try:
        await subscriber.subscribe(["chaos"], receive, start=StartAt.BEGINNING)
        publishes = []

        def publish_more(count: int) -> None:
            for sequence in range(len(publishes), min(len(publishes) + count, MESSAGES)):
                sent = publisher.publish("chaos", b"seq %d" % sequence)
                sent.addCallback(
                    lambda offset, sequence=sequence: confirmed.__setitem__(sequence, offset)
                )
                publishes.append(sent)

        kills = [20_000, 45_000, 70_000]
        drops = [15_000, 40_000, 65_000, 90_000]
        kills_done = drops_done = 0
        for _ in range(6000):  # 120 s at most
            publish_more(1000)  # in a loop, whether the broker is up or not
            if kills and len(confirmed) >= kills[0]:
                kills.pop(0)
                broker.signal("KILL")
                assert await broker.ended == "signal 9"
                kills_done += 1
                broker = await start_durable_broker(tmp_path, port)
            if drops and len(delivered) >= drops[0]:
                drops.pop(0)
                connection = await subscriber.subscriber_connected()
                connection.transport.abortConnection()
                drops_done += 1
            if len(confirmed) == MESSAGES and set(confirmed.values()) <= delivered.keys():
                break
            await deferLater(reactor, 0.02, lambda: None)
        await gatherResults(publishes)
        assert (kills_done, drops_done) == (3, 4)
        assert len(confirmed) == MESSAGES
        # Every confirmed message was delivered, at the offset it was confirmed at.
        missing = [s for s, o in confirmed.items() if delivered.get(o) != b"seq %d" % s]
        assert not missing, f"{len(missing)} confirmed messages lost, e.g. {missing[:5]}"
        # First deliveries came in the topic's order.
        assert first_deliveries == sorted(first_deliveries)
        assert len(set(first_deliveries)) == len(first_deliveries)
    finally:
        await publisher.close()
        await subscriber.close()
        broker.signal("TERM")
        await broker.ended
    # The records on disk: each confirmed offset holds its own message.
    store = FileStore(tmp_path / "data", FileStoreSettings(), reactor)
    store.start()
    try:
        log = store.open("chaos")
        wrong = [s for s, o in confirmed.items() if log.read(o, 1) != [b"seq %d" % s]]
        assert not wrong, f"{len(wrong)} confirmed offsets hold another message: {wrong[:5]}"
        # And each message once: a publish whose confirm a kill cut off was
        # sent again under its message id, and not stored again.
        held: list[bytes] = []
        while log.first_offset + len(held) < log.next_offset:
            held += log.read(log.first_offset + len(held), 4096)
        assert len(held) == MESSAGES, f"{len(held) - MESSAGES} messages stored twice"
        assert len(set(held)) == MESSAGES
    finally:
        store.close()
