"""What the asyncio client adds to the behaviour every client shares
(tests/system/test_clients.py): its handler form, cancellation, bounds and
the reasons it gives, against a real `twistd broker` or none at all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import broker.aio
from broker.aio import BrokerUnreachable, QueueFull, StartAt
from tests.clients import BrokerProcess, in_thread
from tests.process import free_port


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("aio")).start()
    yield process
    process.stop()


def quick(attempt: int) -> float:
    return 0.05


@in_thread
def test_no_broker_within_the_timeout_says_why():
    async def attempt() -> str:
        with pytest.raises(BrokerUnreachable) as unreachable:
            await broker.aio.connect(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
        return str(unreachable.value)

    said = asyncio.run(attempt())
    assert "within 0.5 s" in said and "Connect call failed" in said


@in_thread
def test_publishes_wait_for_a_connection_up_to_a_bound_and_a_cancelled_one_is_withdrawn():
    async def scenario() -> None:
        client = broker.aio.Client(
            "127.0.0.1", free_port(), max_queued=2, retry_policy=quick
        )  # nothing listens: every publish waits
        first = asyncio.ensure_future(client.publish("t", b"1"))
        second = asyncio.ensure_future(client.publish("t", b"2"))
        await asyncio.sleep(0)  # both queued
        assert client.unconfirmed == 2
        with pytest.raises(QueueFull):
            await client.publish("t", b"3")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert client.unconfirmed == 1  # withdrawn: it will never be sent
        await client.close()
        with pytest.raises(broker.aio.ConnectionLost):
            await second

    asyncio.run(scenario())


@in_thread
def test_a_handler_acks_by_its_result_and_nacks_by_false_or_an_error(running):
    async def scenario() -> list[tuple[int | None, int]]:
        client = await broker.aio.connect(running.url, retry_policy=quick)
        seen: list[tuple[int | None, int]] = []
        done = asyncio.Event()

        async def handle(delivery: broker.aio.Delivery) -> bool:
            seen.append((delivery.offset, delivery.attempt))
            if delivery.offset == 1 and delivery.attempt == 1:
                return False  # nacked: comes again
            if delivery.offset == 2 and delivery.attempt == 1:
                raise RuntimeError("a handler that fails nacks")
            if len(seen) >= 5:
                done.set()
            return True

        for n in range(3):
            await client.publish("aio.handled", f"m{n}".encode())
        await client.subscribe(["aio.handled"], start=StartAt.BEGINNING, handler=handle)
        await asyncio.wait_for(done.wait(), 15)
        await client.close()
        return seen

    seen = asyncio.run(scenario())
    assert sorted(seen) == [(0, 1), (1, 1), (1, 2), (2, 1), (2, 2)]


@in_thread
def test_iteration_ends_when_the_subscription_or_the_client_does(running):
    async def scenario() -> None:
        client = await broker.aio.connect(running.url, retry_policy=quick)
        await client.publish("aio.ends", b"x")
        subscription = await client.subscribe(["aio.ends"], start=StartAt.BEGINNING)
        got = [delivery async for delivery in _until_closed(subscription, client)]
        assert [d.data for d in got] == [b"x"]

    asyncio.run(scenario())


async def _until_closed(subscription: broker.aio.Subscription, client: broker.aio.Client) -> object:
    async for delivery in subscription:
        await delivery.ack()
        yield delivery
        await client.close()  # ends the iteration: no more deliveries, no hang


@in_thread
def test_a_batch_takes_what_is_here_at_once_and_ends_with_the_subscription(running):
    async def scenario() -> list[list[int | None]]:
        client = await broker.aio.connect(running.url, retry_policy=quick)
        await client.publish_many([("aio.batch", b"m%d" % n) for n in range(5)])
        subscription = await client.subscribe(["aio.batch"], start=StartAt.BEGINNING)
        taken: list[list[int | None]] = []
        while sum(map(len, taken)) < 5:
            batch = await subscription.batch(max_size=3, timeout=10)
            assert 1 <= len(batch) <= 3
            taken.append([delivery.offset for delivery in batch])
            for delivery in batch:
                await delivery.ack()
        with pytest.raises(asyncio.TimeoutError):
            await subscription.batch(timeout=0.2)  # nothing more: waits, then says so
        await subscription.unsubscribe()
        with pytest.raises(StopAsyncIteration):
            await subscription.batch()
        await client.close()
        return taken

    taken = asyncio.run(scenario())
    assert [offset for batch in taken for offset in batch] == [0, 1, 2, 3, 4]
