"""The blocking client: the asyncio client (broker.aio) run on an event loop
of its own, in a background thread, behind plain method calls. For scripts,
notebooks and any program without an event loop; it imports no Twisted."""

from __future__ import annotations

import asyncio
import queue
import ssl as _ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, TypeVar

from broker.aio.client import (
    DEFAULT_MAX_QUEUED,
    Client,
    Delivery,
    Subscription,
    answer_all,
    backoff,
)
from broker.aio.client import connect as aio_connect
from broker.aio.kv import KeyValue
from broker.sansio.kv import Entry
from broker.sansio.messages import Publish
from broker.sansio.requests import DEFAULT_RESPONDERS, Reply
from broker.wire import StartAt
from broker.wire.headers import HeaderPairs, Headers

T = TypeVar("T")

_END = object()


class _Answers:
    """Acks and nacks made in the caller's thread, handed to the client's
    loop in batches: one wake-up of the loop for all those made meanwhile,
    not one each; kept as runs of like answers, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[list[Delivery], bool]] = []

    def add(self, delivery: Delivery, acked: bool) -> None:
        with self._lock:
            pending = self._pending
            first = not pending
            if pending and pending[-1][1] == acked:
                pending[-1][0].append(delivery)
            else:
                pending.append(([delivery], acked))
        if first:
            self._loop.call_soon_threadsafe(self._send)

    def add_many(self, deliveries: list[Delivery], acked: bool) -> None:
        if not deliveries:
            return
        with self._lock:
            first = not self._pending
            self._pending.append((deliveries, acked))
        if first:
            self._loop.call_soon_threadsafe(self._send)

    def _send(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for deliveries, acked in pending:
            answer_all(deliveries, acked)


class Message:
    """One delivered message: `topic`, `data`, `offset` (None from a broker
    without extensions), `attempt`; `ack()` or `nack()` it once handled."""

    __slots__ = ("_answers", "_delivery")

    def __init__(self, delivery: Delivery, answers: _Answers) -> None:
        self._delivery = delivery
        self._answers = answers

    @property
    def topic(self) -> str:
        return self._delivery.topic

    @property
    def data(self) -> bytes:
        return self._delivery.data

    @property
    def offset(self) -> int | None:
        return self._delivery.offset

    @property
    def attempt(self) -> int:
        return self._delivery.attempt

    @property
    def headers(self) -> Headers:
        """Its headers (case-insensitive names; empty if it has none)."""
        return self._delivery.headers

    def ack(self) -> None:
        """The message is handled: the broker will not send it again."""
        self._answers.add(self._delivery, True)

    def nack(self) -> None:
        """The message is given back: the broker sends it again later."""
        self._answers.add(self._delivery, False)

    def __repr__(self) -> str:
        return f"<Message {self.topic!r} offset={self.offset} attempt={self.attempt}>"


class SyncSubscription:
    """A subscription's deliveries, one at a time: iterate over it (ending
    once none came for `timeout` seconds, if it was given), or call
    `next()`. A context manager: unsubscribed on exit."""

    def __init__(
        self, client: SyncClient, subscription: Subscription, timeout: float | None
    ) -> None:
        self._client = client
        self._subscription = subscription
        self._timeout = timeout
        self._received: queue.Queue[Any] = queue.Queue()
        """Batches of deliveries from the client's loop (then _END)."""
        self._taken: deque[Delivery] = deque()
        """Deliveries of the last batch not handed out yet."""
        self._answers = _Answers(client._loop)
        self._forwarding: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe, then hand each delivery over to the caller's thread."""
        await self._subscription
        self._forwarding = asyncio.get_running_loop().create_task(self._forward())

    async def _forward(self) -> None:
        # What came meanwhile goes in one batch: one hand-over between the
        # threads for many deliveries, not one each.
        async for delivery in self._subscription:
            self._received.put([delivery, *self._subscription.ready()])
        self._received.put(_END)

    @property
    def topics(self) -> list[str]:
        return self._subscription.topics

    def next(self, timeout: float | None = None) -> Message:
        """The next message; TimeoutError if none comes within `timeout`
        seconds (None: wait for ever), StopIteration once unsubscribed."""
        self._wait(timeout)
        return Message(self._taken.popleft(), self._answers)

    def batch(self, max_size: int = 1000, timeout: float | None = None) -> list[Message]:
        """The messages that are here, up to `max_size`, waiting up to
        `timeout` seconds for the first (TimeoutError, or StopIteration once
        unsubscribed, as `next`): the fastest way to consume, with `ack_all`."""
        self._wait(timeout)
        taken, answers = self._taken, self._answers
        return [Message(taken.popleft(), answers) for _ in range(min(max_size, len(taken)))]

    def _wait(self, timeout: float | None) -> None:
        if self._taken:
            return
        try:
            batch = self._received.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout} s") from None
        if batch is _END:
            self._received.put(_END)
            raise StopIteration
        self._taken.extend(batch)

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.next(self._timeout)
            except (TimeoutError, StopIteration):
                return

    def batches(self, max_size: int = 1000) -> Iterator[list[Message]]:
        """Lists of messages, as `batch` gives them, until the subscription
        ends (or none came for the subscription's `timeout`)."""
        while True:
            try:
                yield self.batch(max_size, self._timeout)
            except (TimeoutError, StopIteration):
                return

    def ack_all(self, messages: Iterable[Message]) -> None:
        """Ack every one of `messages` (one hand-over to the client's loop)."""
        self._answers.add_many([message._delivery for message in messages], True)

    def nack_all(self, messages: Iterable[Message]) -> None:
        """Give every one of `messages` back: the broker sends them again."""
        self._answers.add_many([message._delivery for message in messages], False)

    def unsubscribe(self) -> None:
        """Stop the deliveries (those not acked are sent again)."""
        self._client._run(self._subscription.unsubscribe())

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._client.closed:
            self.unsubscribe()


class SyncClient:
    """Publishes and subscribes through one broker, with blocking calls; see
    `connect`. Thread-safe: any thread may call it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._loop = loop
        self._thread = thread
        self._client: Client | None = None
        self.closed = False
        self.timeout: float | None = None
        """Seconds a call waits for the broker before TimeoutError (None: for ever)."""
        self._replies: _Answers | None = None

    def _run(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking call from the client's own thread would never return")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(timeout if timeout is not None else self.timeout)
        except FutureTimeout:
            if future.done():  # the call's own TimeoutError (RequestTimedOut, say)
                raise
            future.cancel()
            raise TimeoutError("the broker did not answer in time") from None

    @property
    def client(self) -> Client:
        assert self._client is not None
        return self._client

    def publish(
        self,
        topic: str,
        data: bytes,
        headers: HeaderPairs | None = None,
        *,
        delay: float | None = None,
        ttl: float | None = None,
    ) -> int | None:
        """Send one message (with `headers`, pairs or a mapping, if given);
        return its offset once the broker confirms it (None from a broker
        without extensions), or raise BrokerError. With `delay`, subscribers
        get it that many seconds from now, not before; with `ttl`, not once
        that many seconds have passed."""
        return self._run(self.client.publish(topic, data, headers, delay=delay, ttl=ttl))

    def publish_many(self, messages: Iterable[Publish]) -> list[int | None]:
        """Send many messages at once (one round trip for all, not one
        each); return their offsets, in order."""

        batch = list(messages)
        return self._run(self.client.publish_many(batch))

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
        timeout: float | None = None,
    ) -> SyncSubscription:
        """Subscribe (see broker.aio.Client.subscribe); returns once the broker
        confirms. Iterating over the result ends after `timeout` seconds
        without a message (None: never)."""
        names = list(topics)

        async def subscribe() -> Subscription:
            return self.client.subscribe(
                names, start=start, offset=offset, group=group, durable=durable
            )

        subscription = SyncSubscription(self, self._run(subscribe()), timeout)
        self._run(subscription.start())
        return subscription

    # Request and reply.

    def request(
        self,
        topic: str,
        data: bytes,
        headers: HeaderPairs | None = None,
        timeout: float = 5.0,
    ) -> Message:
        """Publish a request to `topic` and return its reply, or raise
        NoResponders (nobody reads the topic) or RequestTimedOut (no reply
        within `timeout` seconds)."""
        reply = self._run(
            self.client.request(topic, data, headers=headers, timeout=timeout), timeout + 5
        )
        return Message(reply, self._answers_of_replies())

    def _answers_of_replies(self) -> _Answers:
        # A reply is acked by the client as it arrives: its ack() does nothing.
        if self._replies is None:
            self._replies = _Answers(self._loop)
        return self._replies

    def reply(
        self,
        topic: str,
        handler: Callable[[Message], Reply],
        group: str | None = DEFAULT_RESPONDERS,
    ) -> Responder:
        """Answer the requests published to `topic`: `handler(request)`,
        run in a thread of its own (it may block), gives the reply's data,
        or (data, headers), or None for none. Responders share a consumer
        group (`group`, "responders" by default). Returns once subscribed;
        `stop()` the result to stop answering."""
        answers = self._answers_of_replies()
        loop = self._loop

        async def answer(request: Delivery) -> Reply:
            return await loop.run_in_executor(None, handler, Message(request, answers))

        async def subscribe() -> Subscription:
            subscription = self.client.reply(topic, answer, group=group)
            await subscription
            return subscription

        return Responder(self, self._run(subscribe()))

    def kv(self, bucket: str, timeout: float = 5.0) -> SyncKeyValue:
        """The key-value view of `bucket` (the compacted topic `kv.BUCKET`)."""
        return SyncKeyValue(self, self.client.kv(bucket, timeout))

    def close(self) -> None:
        """Close the connections and stop the client's thread."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._client is not None:
                self._run(self._client.close(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncKeyValue:
    """The key-value view of one bucket with blocking calls (see
    broker.aio.kv.KeyValue, which it runs on the client's loop)."""

    def __init__(self, owner: SyncClient, view: KeyValue) -> None:
        self._owner = owner
        self._view = view
        self.bucket = view.bucket

    def put(self, key: str, value: bytes) -> int | None:
        return self._owner._run(self._view.put(key, value))

    def update(self, key: str, value: bytes, revision: int) -> int | None:
        return self._owner._run(self._view.update(key, value, revision))

    def create(self, key: str, value: bytes) -> int | None:
        return self._owner._run(self._view.create(key, value))

    def delete(self, key: str) -> int | None:
        return self._owner._run(self._view.delete(key))

    def get(self, key: str) -> Entry | None:
        return self._owner._run(self._view.get(key))

    def keys(self, prefix: str = "") -> list[str]:
        return self._owner._run(self._view.keys(prefix))

    def history(self, key: str) -> list[Entry]:
        return self._owner._run(self._view.history(key))

    def watch(self, prefix: str = "", timeout: float | None = None) -> Iterator[Entry]:
        """Each key's current value, then every change; the iteration ends
        after `timeout` seconds without one (None: never)."""
        changes = self._view.watch(prefix)
        try:
            while True:
                try:
                    yield self._owner._run(_next_of(changes), timeout)
                except (TimeoutError, StopAsyncIteration):
                    return
        finally:
            self._owner._run(changes.aclose(), 10)


async def _next_of(changes: AsyncIterator[Entry]) -> Entry:
    return await changes.__anext__()


class Responder:
    """What `SyncClient.reply` gives: `stop()` ends the answering."""

    def __init__(self, owner: SyncClient, subscription: Subscription) -> None:
        self._owner = owner
        self._subscription = subscription

    def stop(self) -> None:
        self._owner._run(self._subscription.unsubscribe())


def connect(
    url: str = "tcp://localhost:3000",
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    extensions: bool = True,
    prefetch: int = 256,
    max_queued: int = DEFAULT_MAX_QUEUED,
    timeout: float | None = 10.0,
    retry_policy: Callable[[int], float] = backoff,
    retry_on_auth_failure: bool = False,
) -> SyncClient:
    """A blocking client connected to the broker at `url` (see
    broker.aio.connect for every argument); BrokerUnreachable after
    `timeout` seconds, AuthenticationFailed if the broker refuses the
    credentials. `timeout` also bounds each later call."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()
        # As asyncio.run ends: what is left (a close cut short by an
        # interrupt) is cancelled and waited for, never destroyed pending.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name=f"broker.sync {url}", daemon=True)
    thread.start()
    ready.wait()
    client = SyncClient(loop, thread)
    try:
        client._client = client._run(
            aio_connect(
                url,
                user=user,
                password=password,
                token=token,
                ssl=ssl,
                extensions=extensions,
                prefetch=prefetch,
                max_queued=max_queued,
                timeout=timeout,
                retry_policy=retry_policy,
                retry_on_auth_failure=retry_on_auth_failure,
            )
        )
    except BaseException:
        client.close()
        raise
    client.timeout = timeout
    return client
