"""A Twisted client for the broker: protocols for both roles, and a small
Deferred-returning API that reconnects with backoff.

    client = connect(reactor, "tcp:localhost:3000")
    yield client.subscribe(["orders"], handle, start=StartAt.BEGINNING)
    yield client.publish("orders", b"...")
    yield client.close()

A handler gets a `Message`; its result acks the message, unless it is False
or a failure (also through a Deferred), which nack it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.wire import (
    ACK,
    ACTION_PUBLISH,
    MAX_U16,
    NACK,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    UNSOLICITED_ERRORS,
    ClientDecoder,
    StartAt,
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
    """One delivery: the topic it was published to, and its payload."""

    topic: str
    payload: bytes


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


class _ClientProtocol(Protocol):
    """Decoding and the reactions both roles share."""

    def __init__(self) -> None:
        self.decoder = ClientDecoder(self, CLIENT_MAX_PAYLOAD)
        self.on_error: Callable[[str], None] = lambda text: None
        self.lost: Deferred[None] = Deferred()
        """Fires when the connection is gone."""

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)

    def status_received(self, code: int) -> None:
        self.protocol_error(f"unexpected status {code}")

    def error_received(self, text: str) -> None:
        log.warn("broker error: {text}", text=text)
        self.on_error(text)

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self.protocol_error(f"unexpected delivery of {topic!r}")

    def protocol_error(self, reason: str) -> None:
        log.error("closing a broken connection: {reason}", reason=reason)
        self.transport.loseConnection()


class PublisherProtocol(_ClientProtocol):
    """A publisher connection. The seed's protocol answers nothing on success;
    errors come back asynchronously and go to `on_error`."""

    def connectionMade(self) -> None:
        self.transport.write(encode_u16(ACTION_PUBLISH))

    def publish(self, topic: str, payload: bytes) -> None:
        problem = topic_name_problem(topic)
        if problem:
            raise ValueError(f"{topic!r}: {problem}")
        if not payload:
            raise ValueError("the broker ignores empty messages")
        self.transport.write(encode_publish(topic, payload))


class SubscriberProtocol(_ClientProtocol):
    """A subscriber connection: requests with their answers, and each
    delivery handed to `handler` one at a time and answered with its result."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.topics: set[str] = set()
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
        if text in UNSOLICITED_ERRORS or not self._requests:
            super().error_received(text)
            return
        answered, _, added = self._requests.popleft()
        self.decoder.pending_requests -= 1
        self._forget(added)
        answered.errback(BrokerError(text))

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._deliveries.append(Message(topic, payload))
        if not self._busy:
            self._handle_next()

    def _handle_next(self) -> None:
        # Deliveries are answered in order: the seed's acks carry no id.
        while self._deliveries and not self._busy and not self._lost:
            message = self._deliveries.popleft()
            self._busy = True
            result = maybeDeferred(self.handler, message)
            result.addBoth(self._answer, message)

    def _answer(self, result: object, message: Message) -> None:
        self._busy = False
        if isinstance(result, Failure):
            log.failure(
                "handler failed on a message of {topic!r}; nacking it", result, topic=message.topic
            )
        if self._lost:
            return
        self.transport.write(_NACK if result is False or isinstance(result, Failure) else _ACK)
        self._handle_next()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        self._deliveries.clear()
        requests, self._requests = self._requests, deque()
        for answered, _, _ in requests:
            answered.errback(reason or ConnectionDone())
        super().connectionLost(reason)


class _SubscriberFactory(Factory):
    def __init__(self, client: BrokerClient) -> None:
        self._client = client

    def buildProtocol(self, addr: object) -> SubscriberProtocol:
        protocol = SubscriberProtocol(self._client._dispatch)
        protocol.factory = self
        return protocol


class _PublisherFactory(Factory):
    def __init__(self, client: BrokerClient) -> None:
        self._client = client

    def buildProtocol(self, addr: object) -> PublisherProtocol:
        protocol = PublisherProtocol()
        protocol.on_error = self._client._publish_error
        protocol.factory = self
        return protocol


class BrokerClient:
    """Publishes and subscribes through one broker, reconnecting with backoff.

    Publishing and subscribing use a connection each (the seed's protocol
    fixes a connection's role), opened on first use by a `ClientService`.
    After a reconnection the subscriber resubscribes to all its topics at
    Current: deliveries in the seed's protocol carry no offsets, so what was
    published while it was away is not replayed.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        reactor: Any = None,
        retry_policy: Callable[[int], float] | None = None,
        on_publish_error: Callable[[str], None] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._endpoint = endpoint
        self._reactor = reactor
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        self._on_publish_error = on_publish_error
        self._handlers: dict[str, Handler] = {}
        self._subscribed: set[str] = set()
        self._publisher: ClientService | None = None
        self._subscriber: ClientService | None = None
        self._publisher_protocol: PublisherProtocol | None = None
        self._unsent: list[tuple[str, bytes, Deferred[None]]] = []
        self.publish_errors: list[str] = []

    # Publishing.

    def publish(self, topic: str, payload: bytes) -> Deferred[None]:
        """Send one message; fires once it is handed to a live connection.

        Messages published before the connection is up wait, in order, for it.
        """
        problem = topic_name_problem(topic)
        if problem:
            raise ValueError(f"{topic!r}: {problem}")
        if not payload:
            raise ValueError("the broker ignores empty messages")
        protocol = self._publisher_protocol
        if protocol is not None:
            protocol.publish(topic, payload)
            return succeed(None)
        sent: Deferred[None] = Deferred()
        self._unsent.append((topic, payload, sent))
        if len(self._unsent) == 1:
            self.publisher_connected().addCallbacks(self._flush_unsent, self._fail_unsent)
        return sent

    def publisher_connected(self) -> Deferred[PublisherProtocol]:
        """The publisher connection, once it is up."""
        if self._publisher_protocol is not None:
            return succeed(self._publisher_protocol)
        if self._publisher is None:
            self._publisher = self._service(_PublisherFactory(self))
        return self._next_turn(self._publisher.whenConnected())

    def _flush_unsent(self, protocol: PublisherProtocol) -> None:
        if protocol.lost.called:  # gone again before we got to it
            self.publisher_connected().addCallbacks(self._flush_unsent, self._fail_unsent)
            return
        self._publisher_protocol = protocol
        protocol.lost.addCallback(lambda _: self._publisher_lost(protocol))
        unsent, self._unsent = self._unsent, []
        for topic, payload, sent in unsent:
            protocol.publish(topic, payload)
            sent.callback(None)

    def _fail_unsent(self, failure: Failure) -> None:
        unsent, self._unsent = self._unsent, []
        for _, _, sent in unsent:
            sent.errback(failure)

    def _publisher_lost(self, protocol: PublisherProtocol) -> None:
        if self._publisher_protocol is protocol:
            self._publisher_protocol = None

    def _publish_error(self, text: str) -> None:
        self.publish_errors.append(text)
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

        return self._retrying(unsubscribe)

    def subscriber_connected(self) -> Deferred[SubscriberProtocol]:
        """The subscriber connection, once it is up and has resubscribed."""
        return self._subscriber_connection()

    def _subscriber_connection(self) -> Deferred[SubscriberProtocol]:
        if self._subscriber is None:
            self._subscriber = self._service(_SubscriberFactory(self), self._resubscribe)
        return self._next_turn(self._subscriber.whenConnected())

    def _resubscribe(self, protocol: SubscriberProtocol) -> Deferred[None] | None:
        if not self._subscribed:
            return None
        topics = sorted(self._subscribed)
        log.info("resubscribing to {topics} at Current", topics=topics)
        return protocol.subscribe(topics, StartAt.CURRENT)

    def _dispatch(self, message: Message) -> Any:
        handler = self._handlers.get(message.topic)
        if handler is None:
            return True  # unsubscribed meanwhile: ack so it is not sent again
        return handler(message)

    # Both.

    def close(self) -> Deferred[None]:
        """Close both connections and stop reconnecting."""
        services = [s for s in (self._publisher, self._subscriber) if s is not None]
        self._publisher = self._subscriber = None
        self._publisher_protocol = None

        async def close() -> None:
            for service in services:
                await service.stopService()

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
    or a plain "host:port"."""
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
