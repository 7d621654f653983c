"""The asyncio client: `Client` and `connect()`.

Each role has its own connection (a connection's role is fixed): the
publisher's opens with the client, the subscriber's with the first
subscribe. Each is kept up by a task that reconnects with backoff; a
connection is *ready* once it has negotiated (and, for the subscriber,
resubscribed from where the last one left off). The protocol itself is
broker.sansio's, which the Twisted client runs too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import random
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from broker.aio.kv import KeyValue
from broker.sansio.connection import ClientConnection, PublisherConnection, SubscriberConnection
from broker.sansio.messages import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    ExtensionsRefused,
    Message,
    Publish,
    check_publish,
    check_topics,
    credentials_of,
    prepared,
    prepared_one,
)
from broker.sansio.publishing import Outbox, Pending
from broker.sansio.requests import (
    DEFAULT_RESPONDERS,
    Reply,
    Requests,
    RequestTimedOut,
    reply_to_request,
)
from broker.sansio.subscriptions import Subscriptions
from broker.wire import ERR_TOO_MANY_CONNECTIONS, StartAt
from broker.wire.headers import HeaderPairs, Headers

log = logging.getLogger("broker.aio")

C = TypeVar("C", bound=ClientConnection)

DEFAULT_PORT = 3000
DEFAULT_MAX_QUEUED = 10_000


def backoff(attempt: int) -> float:
    """Seconds before reconnect attempt `attempt` (0 for the first retry):
    doubling from 0.2 s up to 10 s, with jitter."""
    return min(10.0, 0.2 * 2**attempt) * random.uniform(0.8, 1.2)


class Delivery:
    """One message delivered to a subscription: `topic`, `data`, `offset`
    (None from a broker without extensions) and `attempt`; `ack()` or
    `nack()` it once handled (a nacked message is delivered again)."""

    __slots__ = ("_answered", "_connection", "_delivery_id", "_message")

    def __init__(
        self,
        message: Message,
        delivery_id: int | None,
        connection: SubscriberConnection[_Request],
    ) -> None:
        self._message = message
        self._delivery_id = delivery_id
        self._connection = connection
        self._answered = False

    @property
    def topic(self) -> str:
        return self._message.topic

    @property
    def data(self) -> bytes:
        return self._message.payload

    @property
    def offset(self) -> int | None:
        return self._message.offset

    @property
    def attempt(self) -> int:
        return self._message.attempt

    @property
    def headers(self) -> Headers:
        """Its headers (case-insensitive names; empty if it has none)."""
        return self._message.headers

    @property
    def message(self) -> Message:
        """The delivery as the Twisted client's handlers get it."""
        return self._message

    def answer(self, acked: bool) -> None:
        """Ack (True) or nack (False), once; later answers are ignored, and
        so is an answer after its connection was lost (the broker sends the
        message again)."""
        if self._answered:
            return
        self._answered = True
        self._connection.answer(self._message, self._delivery_id, acked)

    async def ack(self) -> None:
        """The message is handled: the broker will not send it again."""
        self.answer(True)

    async def nack(self) -> None:
        """The message is given back: the broker sends it again later."""
        self.answer(False)

    def __repr__(self) -> str:
        return f"<Delivery {self.topic!r} offset={self.offset} attempt={self.attempt}>"


def answer_all(deliveries: Iterable[Delivery], acked: bool) -> None:
    """Ack (True) or nack (False) many deliveries at once: one write per
    connection (those answered already are left as they are)."""
    by_connection: dict[SubscriberConnection[_Request], list[tuple[Message, int | None]]] = {}
    for delivery in deliveries:
        if delivery._answered:
            continue
        delivery._answered = True
        answered = by_connection.get(delivery._connection)
        if answered is None:
            answered = by_connection[delivery._connection] = []
        answered.append((delivery._message, delivery._delivery_id))
    for connection, answered in by_connection.items():
        connection.answer_many(answered, acked)


class _Link(asyncio.Protocol):
    """One connection: asyncio's transport under a sans-I/O connection."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        """Frames written in this turn of the loop, sent together at its end."""
        loop = self._loop = asyncio.get_running_loop()
        self.negotiated: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        connection.write = self._write
        connection.on_negotiated = self._negotiated
        connection.on_refused = self._refused
        connection.on_broken = self._broken

    def _write(self, data: bytes) -> None:
        # asyncio's transport tries a send() per write: frames written in one
        # turn of the loop (a burst of publishes, a read's acks) go in one.
        outgoing = self._outgoing
        outgoing.append(data)
        if len(outgoing) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connection.start()

    def data_received(self, data: bytes) -> None:
        self.connection.receive(data)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.lost()
        if not self.negotiated.done():
            self.negotiated.set_exception(ConnectionLost(str(exc or "the broker closed it")))
        if not self.closed.done():
            self.closed.set_result(None)

    def _negotiated(self, server: dict[str, Any] | None) -> None:
        if not self.negotiated.done():
            self.negotiated.set_result(server)

    def _refused(self, error: BrokerError) -> None:
        if not self.negotiated.done():
            self.negotiated.set_exception(error)
        self.close()

    def _broken(self, reason: str) -> None:
        log.error("closing a broken connection: %s", reason)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Role:
    """One role's connection, kept up by a task: made by `make`, made ready
    by `prepare` (after Hello), and handed to whoever waits for it."""

    def __init__(
        self,
        client: Client,
        name: str,
        make: Callable[[], ClientConnection],
        prepare: Callable[[_Link], Awaitable[None]],
        lost: Callable[[_Link], None],
    ) -> None:
        self._client = client
        self.name = name
        self._make = make
        self._prepare = prepare
        self._lost = lost
        self.current: _Link | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and not self._client.closed:
            self._task = asyncio.get_running_loop().create_task(self._keep_up())
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: the %s connection broke down",
                self._client.where,
                self.name,
                exc_info=task.exception(),
            )

    async def when_ready(self) -> _Link:
        """The ready connection, now or once the next one is."""
        self.start()
        while True:
            self._client._raise_if_over()
            link = self.current
            if link is not None and not link.closed.done():
                return link
            self._ready.clear()
            waiting: asyncio.Future[Any] = asyncio.ensure_future(self._ready.wait())
            over: asyncio.Future[Any] = self._client._over
            try:
                await asyncio.wait([waiting, over], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        link, self.current = self.current, None
        if link is not None:
            link.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_up(self) -> None:
        client = self._client
        attempt = 0
        while not client.closed:
            link = _Link(self._make())
            try:
                await client._open(link)
                await link.negotiated
                await self._prepare(link)
            except asyncio.CancelledError:
                link.close()
                raise
            except AuthenticationFailed as refused:
                link.close()
                if client._refused_credentials(refused):
                    return
            except ExtensionsRefused as refused:
                link.close()
                client._extensions_refused(refused)
                continue  # at once, plainly
            except (OSError, ConnectionLost, BrokerError, asyncio.TimeoutError) as error:
                link.close()
                client._attempt_failed(error)
            else:
                attempt = 0
                client._now_connected()
                self.current = link
                self._ready.set()
                await link.closed
                self.current = None
                self._lost(link)
                if client.closed:
                    return
                log.info("%s: lost the %s connection; reconnecting", client.where, self.name)
                continue
            await asyncio.sleep(client.retry_policy(attempt))
            attempt += 1


class Subscription:
    """What `Client.subscribe` gives: awaitable (subscribed once the broker
    says so), an async context manager (unsubscribed on exit), and an async
    iterator of its deliveries, unless a handler takes them."""

    def __init__(
        self,
        client: Client,
        names: list[str],
        start: StartAt,
        offset: int,
        group: str | None,
        durable: str | None,
        handler: Callable[[Delivery], Any] | None,
    ) -> None:
        self._client = client
        self.topics = names
        self._start = start
        self._offset = offset
        self._group = group
        self._durable = durable
        self._handler = handler
        self._buffer: collections.deque[Delivery] = collections.deque()
        """Deliveries not taken yet (bounded by the prefetch: the broker sends
        no more until some are acked)."""
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        """Iterations waiting for a delivery (or for the end)."""
        self._subscribed: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Future[Any]] = set()
        self.closed = False
        self._asked: list[str] = []
        """The names sent to the broker (a group's as `$share/GROUP/TOPIC`)."""
        self._needs: str | None = None
        """What the broker must grant for them: "patterns", "groups" or None."""

    def _begin(self) -> asyncio.Task[None]:
        if self._subscribed is None:
            self._subscribed = asyncio.get_running_loop().create_task(self._client._subscribe(self))
        return self._subscribed

    def __await__(self) -> Any:
        yield from self._begin().__await__()
        return self

    async def __aenter__(self) -> Subscription:
        await self._begin()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.unsubscribe()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        if self._subscribed is None:
            await self._begin()
        if not self._buffer:
            await self._arrival()
        return self._buffer.popleft()

    async def _arrival(self) -> None:
        """Return once a delivery is here; StopAsyncIteration once it ended."""
        while not self._buffer:
            if self.closed:
                raise StopAsyncIteration
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:  # cancelled (a timeout)
                    self._waiters.remove(waiter)

    def ready(self) -> list[Delivery]:
        """The deliveries already here, taken at once without waiting (a
        batch for whoever hands them on); none once it has ended."""
        taken = list(self._buffer)
        self._buffer.clear()
        return taken

    async def batch(self, max_size: int = 1000, timeout: float | None = None) -> list[Delivery]:
        """At least one delivery and at most `max_size`, what is here: the
        cheaper way to take many (StopAsyncIteration once it ended,
        asyncio.TimeoutError if none comes within `timeout`)."""
        if self._subscribed is None:
            await self._begin()
        if not self._buffer:
            await asyncio.wait_for(self._arrival(), timeout)
        buffer = self._buffer
        if len(buffer) <= max_size:
            return self.ready()
        return [buffer.popleft() for _ in range(max_size)]

    def ack_all(self, deliveries: Iterable[Delivery]) -> None:
        """Ack every one of `deliveries` (a batch's) in one write."""
        answer_all(deliveries, True)

    def nack_all(self, deliveries: Iterable[Delivery]) -> None:
        """Give every one of `deliveries` back: the broker sends them again."""
        answer_all(deliveries, False)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def next(self, timeout: float | None = None) -> Delivery:
        """The next delivery; asyncio.TimeoutError if none comes in time."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def unsubscribe(self) -> None:
        """Stop the deliveries; those received and not acked are given back
        when the connection learns of it (the broker sends them again)."""
        if self.closed:
            return
        self._end()
        if not self._client.closed:
            await self._client._unsubscribe(self.topics)

    def _end(self) -> None:
        """Deliver nothing more: iterations over it stop."""
        self.closed = True
        self._client._live.discard(self)
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _deliver(self, delivery: Delivery) -> None:
        if self.closed:
            # Between its unsubscribe and the broker's answer: with ids, left
            # unanswered, the broker takes it back; plainly, acked (as the
            # Twisted client does), since it would hold up the deliveries after.
            if delivery._delivery_id is None:
                delivery.answer(True)
            return
        handler = self._handler
        if handler is None:
            self._buffer.append(delivery)
            if self._waiters:
                self._wake_one()
            return
        try:
            result = handler(delivery)
        except Exception:
            log.exception("handler failed on %r; nacking it", delivery)
            delivery.answer(False)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handling.add(task)
            task.add_done_callback(lambda done: self._handled(done, delivery))
        else:
            delivery.answer(result is not False)

    def _handled(self, done: asyncio.Future[Any], delivery: Delivery) -> None:
        self._handling.discard(done)
        if done.cancelled():
            delivery.answer(False)
        elif done.exception() is not None:
            log.error("handler failed on %r; nacking it", delivery, exc_info=done.exception())
            delivery.answer(False)
        else:
            delivery.answer(done.result() is not False)


class Client:
    """Publishes and subscribes through one broker, reconnecting with backoff;
    see `connect`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        credentials: dict[str, str] | None = None,
        extensions: bool = True,
        prefetch: int = 256,
        max_queued: int = DEFAULT_MAX_QUEUED,
        retry_policy: Callable[[int], float] = backoff,
        retry_on_auth_failure: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.where = f"{'tls' if ssl else 'tcp'}://{host}:{port}"
        self._ssl = ssl
        self._credentials = credentials
        # Credentials travel in Hello, so they need the extensions.
        self.extensions = extensions or bool(credentials)
        """True if the client asks for the extensions (until a broker refuses them)."""
        self.prefetch = prefetch
        self.retry_policy = retry_policy
        self.retry_on_auth_failure = retry_on_auth_failure
        self.closed = False
        self.refused: AuthenticationFailed | None = None
        """Why the broker refused the credentials, once it has: every call
        fails with it from then on."""
        self.last_problem: str | None = None
        """Why the last attempt to connect failed, if it did."""
        self._over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connected = asyncio.Event()
        self._outbox: Outbox[asyncio.Future[int | None]] = Outbox(_settle, _fail, max_queued)
        self._subscriptions: Subscriptions[Subscription] = Subscriptions()
        self._live: set[Subscription] = set()
        """Subscriptions not ended."""
        self._publisher = _Role(
            self, "publisher", self._make_publisher, self._adopt, self._publisher_lost
        )
        self._subscriber = _Role(
            self, "subscriber", self._make_subscriber, self._resubscribe, lambda link: None
        )
        self._requests: Requests[asyncio.Future[Delivery]] = Requests()
        self._inbox: Subscription | None = None

    # Connecting.

    async def _open(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: link, self.host, self.port, ssl=self._ssl)

    async def connected(self, timeout: float | None = None) -> None:
        """Return once a connection to the broker is ready (opening the
        publisher's if none is); BrokerUnreachable, saying why, if none is
        by `timeout`. The client keeps trying either way."""
        self._publisher.start()
        try:
            await asyncio.wait_for(self._publisher.when_ready(), timeout)
        except asyncio.TimeoutError:
            reason = self.last_problem or "no answer"
            raise BrokerUnreachable(
                f"cannot reach {self.where} within {timeout} s: {reason}"
            ) from None

    def _raise_if_over(self) -> None:
        if self.refused is not None:
            raise self.refused
        if self.closed:
            raise ConnectionLost("the client is closed")

    def _now_connected(self) -> None:
        if self.last_problem is not None:
            log.info("connected to %s", self.where)
            self.last_problem = None
        self._connected.set()

    def _attempt_failed(self, error: BaseException) -> None:
        problem = str(error) or type(error).__name__
        if isinstance(error, ConnectionLost) and self._ssl is None and self.extensions:
            problem += "; is it a TLS port? then connect to tls://HOST:PORT"
        self.last_problem = problem
        log.warning("%s: %s; retrying", self.where, problem)

    def _extensions_refused(self, error: ExtensionsRefused) -> None:
        if self.extensions:
            log.info(
                "%s refused the extensions (%s); reconnecting with the plain protocol",
                self.where,
                error,
            )
        self.extensions = False

    def _refused_credentials(self, error: AuthenticationFailed) -> bool:
        """Whether to stop: refused credentials would be refused again (and
        count as guessing), unless retries are asked for."""
        text = str(error)
        if self.retry_on_auth_failure or text == ERR_TOO_MANY_CONNECTIONS:
            self._attempt_failed(error)
            return False
        self.refused = AuthenticationFailed(f"{self.where} refused the credentials: {text}")
        self.last_problem = str(self.refused)
        log.error("%s; not retrying", self.refused)
        if not self._over.done():
            self._over.set_result(None)
        self._outbox.fail_all(self.refused)
        return True

    # Publishing.

    def _make_publisher(self) -> PublisherConnection:
        return PublisherConnection(
            _unwired,
            confirms=self.extensions,
            credentials=self._credentials if self.extensions else None,
        )

    async def _adopt(self, link: _Link) -> None:
        assert isinstance(link.connection, PublisherConnection)
        sent = self._outbox.adopt(link.connection)
        if sent:
            log.info("sent %d queued message(s)", sent)

    def _publisher_lost(self, link: _Link) -> None:
        assert isinstance(link.connection, PublisherConnection)
        self._outbox.lost(link.connection)

    async def publish(
        self,
        topic: str,
        data: bytes,
        headers: HeaderPairs | None = None,
        *,
        delay: float | None = None,
        ttl: float | None = None,
    ) -> int | None:
        """Send one message; return the offset the broker stored it at once
        it confirms it (resent after a reconnect until then), or raise
        BrokerError. A broker without extensions confirms nothing: None once
        it is written. Messages published while no connection is up wait for
        one, in order, up to `max_queued`; past that QueueFull. Cancelling a
        publish not yet written withdraws it. With `delay`, subscribers get
        it that many seconds from now, not before; with `ttl`, not once that
        many seconds have passed."""
        data = prepared_one(topic, data, headers, delay, ttl)
        self._raise_if_over()
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        pending = Pending(topic, data, future)
        outbox = self._outbox
        outbox.add(pending)
        if outbox.connection is None:
            self._publisher.start()
        try:
            return await future
        except asyncio.CancelledError:
            outbox.withdraw(pending)
            raise

    async def publish_many(self, messages: Iterable[Publish]) -> list[int | None]:
        """Send many (topic, data) messages at once; return their offsets, in
        order, once all are confirmed (BrokerError for the first refused:
        the others are stored all the same). Cheaper than a publish() each:
        no task per message."""
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        futures: list[asyncio.Future[int | None]] = []
        for topic, data in prepared(messages):
            self._raise_if_over()
            future: asyncio.Future[int | None] = loop.create_future()
            outbox.add(Pending(topic, data, future))
            futures.append(future)
        if outbox.connection is None:
            self._publisher.start()
        return list(await asyncio.gather(*futures))

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed: queued, or written and unanswered."""
        return len(self._outbox)

    # Subscribing.

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
        handler: Callable[[Delivery], Any] | None = None,
    ) -> Subscription:
        """Subscribe to `topics` (names or, with extensions, patterns with
        `*` and `>`), from `start` (StartAt.FROM with `offset`). With `group`,
        each message goes to one member of that consumer group; with
        `durable`, the broker keeps the group's position, so that the same
        name resumes at the first message not acked. Deliveries come through
        `async for` over the subscription, or to `handler` (sync or async;
        its result acks, unless it is False or it raises). Await it, or use
        it as `async with`."""
        self._raise_if_over()
        names = check_topics(topics)
        if start == StartAt.FROM64:
            start = StartAt.FROM
        subscription = Subscription(self, names, start, offset, group, durable, handler)
        self._live.add(subscription)
        # Checked now, so that a wrong call fails in the caller's frame.
        subscription._asked, subscription._needs = self._subscriptions.plan_subscribe(
            names, subscription, start, offset, self.extensions, group, durable
        )
        return subscription

    async def _subscribe(self, subscription: Subscription) -> None:
        asked, needs = subscription._asked, subscription._needs
        while True:
            link = await self._subscriber.when_ready()
            connection = link.connection
            assert isinstance(connection, SubscriberConnection)
            if needs is not None and not (connection.server or {}).get(needs):
                raise BrokerError(
                    "this broker does not take patterns"
                    if needs == "patterns"
                    else "this broker has no consumer groups"
                )
            try:
                # Noted as the answer is read: deliveries may follow it in the same read.
                await _request(
                    connection.subscribe,
                    asked,
                    subscription._start,
                    subscription._offset,
                    then=lambda: self._subscriptions.subscribed_to(asked),
                )
            except ConnectionLost:
                continue  # the next connection asks again
            return

    async def _unsubscribe(self, names: list[str]) -> None:
        sent = self._subscriptions.plan_unsubscribe(names)
        while True:
            link = await self._subscriber.when_ready()
            connection = link.connection
            assert isinstance(connection, SubscriberConnection)

            def unsubscribed(connection: SubscriberConnection[_Request] = connection) -> None:
                connection.forget(name for name in sent if name in connection.topics)
                self._subscriptions.unsubscribed([*names, *sent])

            try:
                await _request(connection.unsubscribe, sent, then=unsubscribed)
            except ConnectionLost:
                continue
            return

    def _make_subscriber(self) -> SubscriberConnection[_Request]:
        connection: SubscriberConnection[_Request] = SubscriberConnection(
            _unwired,
            prefetch=self.prefetch if self.extensions else None,
            credentials=self._credentials if self.extensions else None,
        )
        connection.on_answered = _answered
        connection.on_delivery = lambda message, delivery_id: self._dispatch(
            connection, message, delivery_id
        )
        connection.on_answered_delivery = self._subscriptions.answered
        connection.on_withdrawn = self._subscriptions.withdrawn
        connection.on_error = lambda text: log.warning("broker error: %s", text)
        return connection

    async def _resubscribe(self, link: _Link) -> None:
        connection = link.connection
        assert isinstance(connection, SubscriberConnection)
        link.closed.add_done_callback(lambda _: _fail_requests(connection))
        requests = self._subscriptions.resubscriptions(connection.server)
        if not requests:
            return
        answers = await asyncio.gather(
            *(
                _request(connection.subscribe, names, start, offset)
                for names, start, offset in requests
            ),
            return_exceptions=True,
        )
        for (names, _, _), answer in zip(requests, answers, strict=True):
            if isinstance(answer, ConnectionLost):
                raise answer
            if isinstance(answer, BaseException):
                # Refused now (a right withdrawn meanwhile): the rest go on.
                log.error("%s: resubscribing to %s refused: %s", self.where, names, answer)
                self._subscriptions.withdrawn(names[0])
        log.info("resubscribed to %d topic(s)", len(requests))

    def _dispatch(
        self,
        connection: SubscriberConnection[_Request],
        message: Message,
        delivery_id: int | None,
    ) -> None:
        subscription = self._subscriptions.handler_for(message)
        if subscription is None:
            # Unsubscribed meanwhile: ack, so that it is not sent again.
            connection.answer(message, delivery_id, True)
            return
        subscription._deliver(Delivery(message, delivery_id, connection))

    # Request and reply.

    async def request(
        self,
        topic: str,
        data: bytes,
        *,
        headers: HeaderPairs | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        """Publish a request to `topic` and return its reply, or raise
        NoResponders (nobody reads the topic: the broker says so at once) or
        RequestTimedOut (no reply within `timeout` seconds). Replies come to
        the client's inbox, a topic only it reads."""
        self._raise_if_over()
        check_publish(topic, data)
        requests = self._requests
        answered: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        correlation, payload = requests.prepare(data, headers, answered)

        async def ask() -> Delivery:
            await self._inbox_ready()
            await self.publish(topic, payload)
            return await answered

        try:
            return await asyncio.wait_for(ask(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimedOut(f"no reply from {topic!r} within {timeout:g} s") from None
        finally:
            requests.forget(correlation)

    async def _inbox_ready(self) -> None:
        """Subscribe to the inbox at the first request (kept for the client's life)."""
        if self._inbox is None:
            self._inbox = self.subscribe([self._requests.inbox], handler=self._replied)
        try:
            await self._inbox
        except BaseException:
            self._inbox = None  # the next request tries again
            raise

    def _replied(self, delivery: Delivery) -> bool:
        settled = self._requests.answered(delivery.message)
        if settled is not None:
            handle, outcome = settled
            if not handle.done():
                if isinstance(outcome, Exception):
                    handle.set_exception(outcome)
                else:
                    handle.set_result(delivery)
        return True

    def reply(
        self,
        topic: str,
        handler: Callable[[Delivery], Reply | Awaitable[Reply]],
        *,
        group: str | None = DEFAULT_RESPONDERS,
    ) -> Subscription:
        """Answer the requests published to `topic`: `handler(request)`
        (sync or async) gives the reply's data, or (data, headers), or None
        for none, published to the request's inbox. Responders share a
        consumer group (`group`, "responders" by default): each request goes
        to one of them. Await it, or use it as `async with`."""

        async def on_request(request: Delivery) -> bool:
            reply = handler(request)
            if inspect.isawaitable(reply):
                reply = await reply
            found = reply_to_request(request.message, reply)
            if found is not None:
                inbox, payload = found
                try:
                    await self.publish(inbox, payload)
                except BrokerError as error:  # its requester is gone: done all the same
                    log.warning("a reply to %r was not sent: %s", inbox, error)
            return True

        return self.subscribe([topic], group=group, handler=on_request)

    def kv(self, bucket: str, timeout: float = 5.0) -> KeyValue:
        """The key-value view of `bucket` (the compacted topic `kv.BUCKET`):
        put, get, delete, keys, history, watch, update (compare-and-set)."""
        return KeyValue(self, bucket, timeout)

    # Both.

    async def close(self) -> None:
        """Close both connections and stop reconnecting; publishes still
        queued or unanswered fail with ConnectionLost."""
        if self.closed:
            return
        self.closed = True
        if not self._over.done():
            self._over.set_result(None)
        for subscription in list(self._live):
            subscription._end()
        await self._publisher.stop()
        await self._subscriber.stop()
        outbox = self._outbox
        if outbox.connection is not None:
            outbox.lost(outbox.connection)  # its unanswered publishes fail too
        outbox.fail_all(ConnectionLost("the client was closed"))
        for handle in self._requests.fail_all(ConnectionLost("the client was closed")):
            if not handle.done():
                handle.set_exception(ConnectionLost("the client was closed"))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _unwired(data: bytes) -> None:
    raise RuntimeError("a connection wrote before its transport was set")


def _settle(future: asyncio.Future[int | None], offset: int | None) -> None:
    if not future.done():
        future.set_result(offset)


def _fail(future: asyncio.Future[int | None], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


class _Request:
    """A subscribe or unsubscribe sent: what to note the moment the broker
    says yes (before the deliveries that may follow in the same read are
    dispatched), and the future its caller awaits."""

    __slots__ = ("future", "then")

    def __init__(self, then: Callable[[], None] | None) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.then = then


def _answered(request: _Request, error: BrokerError | None) -> None:
    future = request.future
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
        return
    if request.then is not None:
        request.then()
    future.set_result(None)


def _fail_requests(connection: SubscriberConnection[_Request]) -> None:
    for request in connection.pending():
        if not request.future.done():
            request.future.set_exception(ConnectionLost("the connection closed before the answer"))


async def _request(
    send: Callable[..., None], *args: Any, then: Callable[[], None] | None = None
) -> None:
    request = _Request(then)
    send(request, *args)
    await request.future


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of "tcp://host:port", "tls://host:port" or
    "host:port" (tcp; the port defaults to 3000)."""
    if "://" not in url:
        url = "tcp://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls"):
        raise ValueError(f"{url!r}: the scheme is tcp:// or tls://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    return parts.scheme, parts.hostname, parts.port or DEFAULT_PORT


async def connect(
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
) -> Client:
    """A client connected to the broker at `url` ("tcp://host:port",
    "tls://host:port", or "host:port"), once its first connection is ready;
    BrokerUnreachable after `timeout` seconds (None: wait for ever), and
    AuthenticationFailed at once if the broker refuses the credentials.

    tls:// checks the broker's certificate against the system's trust roots
    (or those of `ssl`, an `ssl.SSLContext`, which may carry a client
    certificate). `user` and `password`, or `token`, sign in to a broker
    with a users file. extensions: confirms, offsets, prefetch, groups,
    patterns and resume (a broker without them, like the seed's Go broker,
    is detected and spoken to plainly); False speaks the plain protocol.
    """
    scheme, host, port = parse_url(url)
    if scheme == "tls" and ssl is None:
        ssl = _ssl.create_default_context()
    if scheme == "tcp" and ssl is not None:
        raise ValueError(f"{url!r}: an ssl context needs tls://")
    client = Client(
        host,
        port,
        ssl=ssl,
        credentials=credentials_of(user, password, token),
        extensions=extensions,
        prefetch=prefetch,
        max_queued=max_queued,
        retry_policy=retry_policy,
        retry_on_auth_failure=retry_on_auth_failure,
    )
    try:
        await client.connected(timeout)
    except BaseException:
        await client.close()
        raise
    return client
