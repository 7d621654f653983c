"""A Twisted client for the broker: protocols for both roles, and a small
Deferred-returning API that reconnects with backoff.

    client = connect(reactor, "tcp:localhost:3000", extensions=True)
    yield client.subscribe(["orders"], handle, start=StartAt.BEGINNING)
    offset = yield client.publish("orders", b"...")
    yield client.close()

A handler gets a `Message`; its result acks the message, unless it is False
or a failure (also through a Deferred), which nack it.

With `extensions=True` the client asks the broker for its extensions (the
seed's broker refuses, and the client goes on without them): `publish` fires
with the offset the message was stored at, and is retried after a reconnect
until it is confirmed; a subscriber handles up to `prefetch` messages at a
time, acks them by id, and after a reconnect resumes from its lowest offset
not yet answered, so that nothing is missed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import (
    Deferred,
    ensureDeferred,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.wire import (
    ACK,
    ACTION_PUBLISH,
    EXTENSIONS_VERSION,
    MAX_U16,
    NACK,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    UNSOLICITED_ERRORS,
    ClientDecoder,
    StartAt,
    encode_ack_id,
    encode_hello,
    encode_publish,
    encode_subscribe,
    encode_u16,
    encode_unsubscribe,
    topic_name_problem,
)

log = Logger()
T = TypeVar("T")

_ACK = encode_u16(ACK)
_NACK = encode_u16(NACK)
# Deliveries larger than this are taken as a broken stream.
CLIENT_MAX_PAYLOAD = 1 << 30


class BrokerError(Exception):
    """The broker answered with an Error status."""


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery. With extensions, also its offset and which delivery this is."""

    topic: str
    payload: bytes
    offset: int | None = None
    attempt: int = 1


Handler = Callable[[Message], Any]


def _check_topics(topics: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(topics))
    if not names:
        raise ValueError("name at least one topic")
    for name in names:
        problem = topic_name_problem(name)
        if problem:
            raise ValueError(f"{name!r}: {problem}")
    return names


def _check_publish(topic: str, payload: bytes) -> None:
    problem = topic_name_problem(topic)
    if problem:
        raise ValueError(f"{topic!r}: {problem}")
    if not payload:
        raise ValueError("the broker does not take empty messages")


class _ClientProtocol(Protocol):
    """Negotiation, decoding and the reactions both roles share.

    `ask` is the Hello to send (None: speak the seed's protocol); `negotiated`
    fires with what the server granted, or None without extensions.
    """

    def __init__(self, ask: dict[str, Any] | None = None) -> None:
        self.decoder = ClientDecoder(self, CLIENT_MAX_PAYLOAD)
        self.on_error: Callable[[str], None] = lambda text: None
        self.lost: Deferred[None] = Deferred()
        """Fires when the connection is gone."""
        self.negotiated: Deferred[dict[str, Any] | None] = Deferred()
        self.server: dict[str, Any] | None = None
        """The extensions the server granted, or None."""
        self._ask = ask

    def connectionMade(self) -> None:
        if self._ask is None:
            self._begin(None)
        else:
            self.decoder.expect_hello()
            self.transport.write(encode_hello({"version": EXTENSIONS_VERSION, **self._ask}))

    def _begin(self, server: dict[str, Any] | None) -> None:
        self.server = server
        self._start_role()
        self.negotiated.callback(server)

    def _start_role(self) -> None:
        """Send what the role sends first, once negotiation is over."""

    def hello_received(self, fields: dict[str, Any]) -> None:
        self._begin(fields)

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.negotiated.called:
            self.negotiated.errback(reason or ConnectionDone())
        self.lost.callback(None)

    def status_received(self, code: int) -> None:
        self.protocol_error(f"unexpected status {code}")

    def error_received(self, text: str) -> None:
        if not self.negotiated.called:
            log.info("the broker has no extensions ({text}); using the seed's protocol", text=text)
            self._begin(None)
            return
        log.warn("broker error: {text}", text=text)
        self.on_error(text)

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self.protocol_error(f"unexpected delivery of {topic!r}")

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self.protocol_error(f"unexpected delivery of {topic!r}")

    def confirmed(self, count: int, first_offset: int) -> None:
        self.protocol_error("unexpected confirm")

    def protocol_error(self, reason: str) -> None:
        log.error("closing a broken connection: {reason}", reason=reason)
        self.transport.loseConnection()


class PublisherProtocol(_ClientProtocol):
    """A publisher connection. Without confirms the broker answers nothing on
    success and errors go to `on_error`; with them, every publish is answered
    in order, through `on_confirmed` and `on_refused`."""

    def __init__(self, confirms: bool = False) -> None:
        super().__init__({"confirms": True} if confirms else None)
        self.on_confirmed: Callable[[int, int], None] = lambda count, first: None
        self.on_refused: Callable[[str], None] = lambda text: None

    @property
    def confirming(self) -> bool:
        return bool(self.server and self.server.get("confirms"))

    def _start_role(self) -> None:
        self.transport.write(encode_u16(ACTION_PUBLISH))

    def publish(self, topic: str, payload: bytes) -> None:
        _check_publish(topic, payload)
        self.write_publish(topic, payload)

    def write_publish(self, topic: str, payload: bytes) -> None:
        """Send a publish frame whose topic and payload are already checked."""
        self.transport.write(encode_publish(topic, payload))

    def confirmed(self, count: int, first_offset: int) -> None:
        self.on_confirmed(count, first_offset)

    def error_received(self, text: str) -> None:
        if self.confirming:
            self.on_refused(text)
        else:
            super().error_received(text)


class SubscriberProtocol(_ClientProtocol):
    """A subscriber connection: requests with their answers, and each
    delivery handed to `handler` and answered with its result.

    Without extensions deliveries are handled one at a time (the seed's acks
    carry no id); with them, up to the prefetch at once, acked by id.
    """

    def __init__(self, handler: Handler, prefetch: int | None = None) -> None:
        super().__init__(None if prefetch is None else {"prefetch": prefetch})
        self.handler = handler
        self.topics: set[str] = set()
        self.on_answered: Callable[[Message, bool], None] = lambda message, acked: None
        self._requests: deque[tuple[Deferred[None], int, list[str]]] = deque()
        self._deliveries: deque[Message] = deque()
        self._busy = False
        self._lost = False

    def subscribe(
        self, topics: Iterable[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> Deferred[None]:
        """Fires once the broker answers Subscribed; fails with BrokerError.

        From an offset past 65,535 is sent as From64, an extension the seed's
        broker does not know.
        """
        names = _check_topics(topics)
        if start == StartAt.FROM and offset > MAX_U16:
            start = StartAt.FROM64
        frame = encode_subscribe(names, start, offset)
        new = [name for name in names if name not in self.topics]
        for name in new:
            # Deliveries of a new topic may follow the status at once.
            self.topics.add(name)
            self.decoder.expect_topic(name)
        return self._request(frame, STATUS_SUBSCRIBED, new)

    def unsubscribe(self, topics: Iterable[str]) -> Deferred[None]:
        """Fires once the broker answers Unsubscribed."""
        names = _check_topics(topics)
        done = self._request(encode_unsubscribe(names), STATUS_UNSUBSCRIBED, [])
        done.addCallback(lambda _: self._forget(name for name in names if name in self.topics))
        return done

    def _request(self, frame: bytes, status: int, added: list[str]) -> Deferred[None]:
        if self._lost:
            return fail(ConnectionDone("the connection is closed"))
        answered: Deferred[None] = Deferred()
        self._requests.append((answered, status, added))
        self.decoder.pending_requests += 1
        self.transport.write(frame)
        return answered

    def _forget(self, names: Iterable[str]) -> None:
        for name in list(names):
            self.topics.discard(name)
            self.decoder.forget_topic(name)

    def status_received(self, code: int) -> None:
        if not self._requests:
            self.protocol_error(f"status {code} answers no request")
            return
        answered, expected, added = self._requests.popleft()
        self.decoder.pending_requests -= 1
        if code == expected:
            answered.callback(None)
        else:
            self._forget(added)
            answered.errback(BrokerError(f"unexpected status {code}"))

    def error_received(self, text: str) -> None:
        if not self.negotiated.called or text in UNSOLICITED_ERRORS or not self._requests:
            super().error_received(text)
            return
        answered, _, added = self._requests.popleft()
        self.decoder.pending_requests -= 1
        self._forget(added)
        answered.errback(BrokerError(text))

    # The seed's deliveries: one at a time.

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._deliveries.append(Message(topic, payload))
        if not self._busy:
            self._handle_next()

    def _handle_next(self) -> None:
        while self._deliveries and not self._busy and not self._lost:
            message = self._deliveries.popleft()
            self._busy = True
            maybeDeferred(self.handler, message).addBoth(self._answer, message)

    def _answer(self, result: object, message: Message) -> None:
        self._busy = False
        acked = _acks(result, message)
        if self._lost:
            return
        self.transport.write(_ACK if acked else _NACK)
        self._handle_next()

    # Extended deliveries: many at once, acked by id.

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        message = Message(topic, payload, offset, attempt)
        maybeDeferred(self.handler, message).addBoth(self._answer_id, message, delivery_id)

    def _answer_id(self, result: object, message: Message, delivery_id: int) -> None:
        acked = _acks(result, message)
        if self._lost:
            return
        self.transport.write(encode_ack_id(delivery_id, acked))
        self.on_answered(message, acked)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        self._deliveries.clear()
        requests, self._requests = self._requests, deque()
        for answered, _, _ in requests:
            answered.errback(reason or ConnectionDone())
        super().connectionLost(reason)


def _acks(result: object, message: Message) -> bool:
    if isinstance(result, Failure):
        log.failure(
            "handler failed on message {offset} of {topic!r}; nacking it",
            result,
            offset=message.offset,
            topic=message.topic,
        )
        return False
    return result is not False


class _Progress:
    """Where a topic's subscription resumes: the lowest offset delivered and
    not yet answered for good, else the one after the highest delivered."""

    __slots__ = ("next", "open")

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.next: int | None = None

    def delivered(self, offset: int) -> None:
        self.open.add(offset)
        if self.next is None or offset >= self.next:
            self.next = offset + 1

    def answered(self, offset: int) -> None:
        self.open.discard(offset)

    def resume_at(self) -> int | None:
        return min(self.open) if self.open else self.next


class _Publish:
    """One `publish()`: its message, and the Deferred its caller holds."""

    __slots__ = ("done", "payload", "topic")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.done: Deferred[int | None] = Deferred()


class _PublisherLink:
    """One publisher connection and the publishes written on it that the
    broker has not answered yet, oldest first.

    Answers come in publish order on the connection that carried the
    publishes, so each answer belongs to the oldest unanswered publish of
    *this* connection; nothing another connection sent can be mistaken for it.
    """

    def __init__(self, protocol: PublisherProtocol, on_error: Callable[[str], None]) -> None:
        self.protocol = protocol
        self.unanswered: deque[_Publish] = deque()
        self._on_error = on_error
        protocol.on_confirmed = self._confirmed
        protocol.on_refused = self._refused

    def write(self, entry: _Publish) -> None:
        self.protocol.write_publish(entry.topic, entry.payload)  # checked in publish()
        if self.protocol.confirming:
            self.unanswered.append(entry)
        elif not entry.done.called:
            entry.done.callback(None)

    def _confirmed(self, count: int, first_offset: int) -> None:
        unanswered = self.unanswered
        if count > len(unanswered):
            self.protocol.protocol_error(
                f"{count} confirms for {len(unanswered)} unanswered publishes"
            )
            return
        for offset in range(first_offset, first_offset + count):
            entry = unanswered.popleft()
            if not entry.done.called:  # else cancelled after it was written
                entry.done.callback(offset)

    def _refused(self, text: str) -> None:
        if not self.unanswered:
            self.protocol.protocol_error(f"an error answers no publish: {text}")
            return
        self._on_error(text)
        entry = self.unanswered.popleft()
        if not entry.done.called:
            entry.done.errback(BrokerError(text))


class _Factory(Factory):
    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> Protocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class BrokerClient:
    """Publishes and subscribes through one broker, reconnecting with backoff.

    Publishing and subscribing use a connection each (a connection's role is
    fixed), opened on first use by a `ClientService`. After a reconnection the
    subscriber resubscribes to all its topics: with extensions from where it
    left off; without them at Current, since the seed's deliveries carry no
    offsets and what was published meanwhile cannot be found again.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        reactor: Any = None,
        retry_policy: Callable[[int], float] | None = None,
        on_publish_error: Callable[[str], None] | None = None,
        extensions: bool = False,
        prefetch: int = 256,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._endpoint = endpoint
        self._reactor = reactor
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        self._on_publish_error = on_publish_error
        self.extensions = extensions
        self.prefetch = prefetch
        self._handlers: dict[str, Handler] = {}
        self._starts: dict[str, tuple[StartAt, int]] = {}
        self._progress: dict[str, _Progress] = {}
        self._subscribed: set[str] = set()
        self._publisher: ClientService | None = None
        self._subscriber: ClientService | None = None
        self._subscriber_server: dict[str, Any] | None = None
        # Publishes not yet written to a live connection, in publish order.
        self._queue: deque[_Publish] = deque()
        self._link: _PublisherLink | None = None
        self._closed = False

    # Publishing.

    def publish(self, topic: str, payload: bytes) -> Deferred[int | None]:
        """Send one message.

        With confirms, fires with the offset it was stored at once the broker
        confirms it (resent after a reconnect until then), or fails with
        BrokerError. Without, fires with None once it is handed to a live
        connection. Messages published before a connection is up wait for it,
        in order. Cancelling the Deferred of a message not yet written
        withdraws it; one already written is stored all the same.
        """
        _check_publish(topic, payload)
        if self._closed:
            return fail(ConnectionDone("the client is closed"))
        entry = _Publish(topic, payload)
        entry.done = Deferred(lambda _: self._withdraw(entry))
        link = self._link
        if link is not None:
            link.write(entry)
        else:
            self._queue.append(entry)
            self._start_publisher()
        return entry.done

    def _withdraw(self, entry: _Publish) -> None:
        # A cancelled publish still queued is never sent; a written one is
        # answered by the broker and the answer ignored.
        if entry in self._queue:
            self._queue.remove(entry)

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed: queued, or written and unanswered."""
        link = self._link
        return len(self._queue) + (len(link.unanswered) if link else 0)

    def publisher_connected(self) -> Deferred[PublisherProtocol]:
        """The publisher connection, once it is up (and has negotiated)."""
        if self._link is not None:
            return succeed(self._link.protocol)
        service = self._start_publisher()
        return self._next_turn(service.whenConnected())

    def _start_publisher(self) -> ClientService:
        if self._publisher is None:
            self._publisher = self._service(
                _Factory(self._build_publisher), self._prepare_publisher
            )
        return self._publisher

    def _build_publisher(self) -> PublisherProtocol:
        protocol = PublisherProtocol(confirms=self.extensions)
        protocol.on_error = self._publish_error
        link = _PublisherLink(protocol, self._publish_error)
        # Registered before ClientService's own callbacks (prepareConnection).
        protocol.negotiated.addCallback(lambda _: self._adopt(link))
        return protocol

    @staticmethod
    def _prepare_publisher(protocol: PublisherProtocol) -> Deferred[Any]:
        # `protocol` is ClientService's proxy of the one built above.
        return protocol.negotiated

    def _adopt(self, link: _PublisherLink) -> None:
        """A new connection has negotiated: it carries every publish from now
        on, starting with those queued, in order (what the last connection
        left unanswered comes first)."""
        self._link = link
        link.protocol.lost.addCallback(lambda _: self._publisher_lost(link))
        queue, self._queue = self._queue, deque()
        if queue:
            log.info("sending {n} queued message(s)", n=len(queue))
        for entry in queue:
            link.write(entry)

    def _publisher_lost(self, link: _PublisherLink) -> None:
        if self._link is link:
            self._link = None
        # Unanswered publishes of the lost connection go again, before anything
        # published since; the next connection sends them (ClientService
        # reconnects by itself).
        self._queue.extendleft(reversed(link.unanswered))
        link.unanswered.clear()
        if self._closed:
            self._fail_queue(ConnectionDone("the client was closed"))

    def _fail_queue(self, reason: Exception) -> None:
        queue, self._queue = self._queue, deque()
        for entry in queue:
            if not entry.done.called:
                entry.done.errback(reason)

    def _publish_error(self, text: str) -> None:
        if self._on_publish_error is not None:
            self._on_publish_error(text)

    # Subscribing.

    def subscribe(
        self,
        topics: Iterable[str],
        handler: Handler,
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
    ) -> Deferred[None]:
        """Subscribe `handler` to `topics`; fires once the broker confirms."""
        names = _check_topics(topics)

        async def subscribe() -> None:
            for name in names:
                self._handlers[name] = handler
                self._starts[name] = (start, offset)
                self._progress[name] = _Progress()
            protocol = await self._subscriber_connection()
            await protocol.subscribe(names, start, offset)
            self._subscribed.update(names)

        return self._retrying(subscribe)

    def unsubscribe(self, topics: Iterable[str]) -> Deferred[None]:
        """Stop the deliveries of `topics`; fires once the broker confirms."""
        names = _check_topics(topics)

        async def unsubscribe() -> None:
            self._subscribed.difference_update(names)
            protocol = await self._subscriber_connection()
            await protocol.unsubscribe(names)
            for name in names:
                self._handlers.pop(name, None)
                self._progress.pop(name, None)

        return self._retrying(unsubscribe)

    def subscriber_connected(self) -> Deferred[SubscriberProtocol]:
        """The subscriber connection, once it is up and has resubscribed."""
        return self._subscriber_connection()

    def _subscriber_connection(self) -> Deferred[SubscriberProtocol]:
        if self._subscriber is None:
            self._subscriber = self._service(_Factory(self._build_subscriber), self._prepare)
        return self._next_turn(self._subscriber.whenConnected())

    def _build_subscriber(self) -> SubscriberProtocol:
        protocol = SubscriberProtocol(
            self._dispatch, prefetch=self.prefetch if self.extensions else None
        )
        protocol.on_answered = self._answered
        return protocol

    def _prepare(self, protocol: SubscriberProtocol) -> Deferred[None]:
        def negotiated(server: dict[str, Any] | None) -> Deferred[None] | None:
            self._subscriber_server = server
            return self._resubscribe(protocol)

        return protocol.negotiated.addCallback(negotiated)

    def _resubscribe(self, protocol: SubscriberProtocol) -> Deferred[None] | None:
        if not self._subscribed:
            return None
        requests = []
        for topic in sorted(self._subscribed):
            progress = self._progress.get(topic)
            resume = progress.resume_at() if progress and protocol.server else None
            if resume is not None:
                requests.append(protocol.subscribe([topic], StartAt.FROM, resume))
            elif protocol.server:
                requests.append(protocol.subscribe([topic], *self._starts[topic]))
            else:
                requests.append(protocol.subscribe([topic], StartAt.CURRENT))
        log.info("resubscribed to {n} topic(s)", n=len(requests))
        return gatherResults(requests, consumeErrors=True).addCallback(lambda _: None)

    def _dispatch(self, message: Message) -> Any:
        handler = self._handlers.get(message.topic)
        if handler is None:
            return True  # unsubscribed meanwhile: ack so it is not sent again
        if message.offset is not None:
            progress = self._progress.get(message.topic)
            if progress is not None:
                progress.delivered(message.offset)
        return handler(message)

    def _answered(self, message: Message, acked: bool) -> None:
        progress = self._progress.get(message.topic)
        if progress is None or message.offset is None:
            return
        max_deliveries = (self._subscriber_server or {}).get("max_deliveries", 0)
        if acked or message.attempt >= max_deliveries:
            progress.answered(message.offset)  # acked, or given up on by the broker

    # Both.

    def close(self) -> Deferred[None]:
        """Close both connections and stop reconnecting."""
        services = [s for s in (self._publisher, self._subscriber) if s is not None]
        self._publisher = self._subscriber = None
        self._closed = True

        async def close() -> None:
            for service in services:
                await service.stopService()
            self._fail_queue(ConnectionDone("the client was closed"))

        return ensureDeferred(close())

    def _service(
        self, factory: Factory, prepare: Callable[[Any], Any] | None = None
    ) -> ClientService:
        service = ClientService(
            self._endpoint,
            factory,
            retryPolicy=self._retry_policy,
            clock=self._reactor,
            prepareConnection=prepare,
        )
        service.startService()
        return service

    def _next_turn(self, connected: Deferred[T]) -> Deferred[T]:
        """`connected`'s result one reactor turn later: ClientService must not
        be re-entered from the callbacks of its own whenConnected."""
        later: Deferred[T] = Deferred()
        connected.addBoth(lambda result: self._reactor.callLater(0, later.callback, result))
        return later

    def _retrying(self, attempt: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """Run `attempt`, again if the connection drops before the answer."""

        async def run() -> T:
            while True:
                try:
                    return await attempt()
                except ConnectionClosed:
                    if self._subscriber is None:
                        raise
                    log.info("connection lost before the broker answered; trying again")

        return ensureDeferred(run())


def connect(reactor: Any, description: str, **options: Any) -> BrokerClient:
    """A client for the broker at a client endpoint string ("tcp:host:port")
    or a plain "host:port". Options: see BrokerClient (extensions, prefetch...)."""
    if description.partition(":")[0] not in ("tcp", "unix", "ssl", "tls"):
        host, _, port = description.rpartition(":")
        description = f"tcp:{host}:{port}"
    return BrokerClient(clientFromString(reactor, description), reactor, **options)


__all__ = [
    "BrokerClient",
    "BrokerError",
    "Message",
    "PublisherProtocol",
    "StartAt",
    "SubscriberProtocol",
    "connect",
]
