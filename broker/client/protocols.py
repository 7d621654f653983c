"""The client's two connections as Twisted protocols: a publisher and a
subscriber, each a thin adapter over its sans-I/O state
(broker.sansio.connection), which negotiates the extensions (or not) and
decodes what the broker sends. `broker.client.BrokerClient` drives them;
they can also be used alone, with any endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.sansio.connection import (
    ClientConnection,
    PublisherConnection,
    SubscriberConnection,
)
from broker.sansio.messages import (
    OUTCOME_UNKNOWN,
    AuthenticationFailed,
    BrokerError,
    ExtensionsRefused,
    Message,
    OutcomeUnknown,
    check_publish,
    refusal,
)
from broker.wire import CONFIRM_ORDER_TOPIC, StartAt

__all__ = [
    "OUTCOME_UNKNOWN",
    "AuthenticationFailed",
    "BatchHandler",
    "BrokerError",
    "ExtensionsRefused",
    "Handler",
    "Message",
    "OutcomeUnknown",
    "PublisherProtocol",
    "SubscriberProtocol",
    "refusal",
]

log = Logger()

Handler = Callable[[Message], Any]
"""Handles a delivery; its result acks it, unless it is False or a failure
(also through a Deferred), which nack it."""


class BatchHandler:
    """A handler of lists of deliveries (those of one read from the broker):
    `handle(messages)`'s result answers them all as a Handler's answers one."""

    __slots__ = ("handle",)

    def __init__(self, handle: Callable[[list[Message]], Any]) -> None:
        self.handle = handle


class _ClientProtocol(Protocol):
    """What both roles' adapters share: `negotiated` fires with what the
    broker granted (None without extensions) or fails with why not; `lost`
    fires when the connection is gone."""

    transport: ITransport
    connection: ClientConnection

    def _adapt(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.on_error: Callable[[str], None] = lambda text: None
        self.lost: Deferred[None] = Deferred()
        self.negotiated: Deferred[dict[str, Any] | None] = Deferred()
        connection.on_negotiated = self.negotiated.callback
        connection.on_refused = self._refused
        connection.on_error = self._error
        connection.on_broken = self.protocol_error

    @property
    def server(self) -> dict[str, Any] | None:
        """The extensions the broker granted, or None."""
        return self.connection.server

    @property
    def decoder(self) -> Any:
        return self.connection.decoder

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionMade(self) -> None:
        self.connection.start()

    def dataReceived(self, data: bytes) -> None:
        self.connection.receive(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connection.lost()
        if not self.negotiated.called:
            self.negotiated.errback(reason or ConnectionDone())
        self.lost.callback(None)

    def _refused(self, error: BrokerError) -> None:
        self.negotiated.errback(error)
        self.transport.loseConnection()

    def _error(self, text: str) -> None:
        log.warn("broker error: {text}", text=text)
        self.on_error(text)

    def protocol_error(self, reason: str) -> None:
        log.error("closing a broken connection: {reason}", reason=reason)
        self.transport.loseConnection()


class PublisherProtocol(_ClientProtocol):
    """A publisher connection (see broker.sansio.connection.PublisherConnection):
    `on_confirmed(count, first offset, sequence)` and `on_refused(text,
    sequence)` answer publishes when confirms are granted."""

    def __init__(
        self,
        confirms: bool = False,
        credentials: dict[str, str] | None = None,
        confirm_order: str | None = CONFIRM_ORDER_TOPIC,
    ) -> None:
        self.publisher = PublisherConnection(self._write, confirms, credentials, confirm_order)
        self._adapt(self.publisher)

    @property
    def on_confirmed(self) -> Callable[[int, int, int | None], None]:
        return self.publisher.on_confirmed

    @on_confirmed.setter
    def on_confirmed(self, callback: Callable[[int, int, int | None], None]) -> None:
        self.publisher.on_confirmed = callback

    @property
    def on_refused(self) -> Callable[[str, int | None], None]:
        return self.publisher.on_publish_refused

    @on_refused.setter
    def on_refused(self, callback: Callable[[str, int | None], None]) -> None:
        self.publisher.on_publish_refused = callback

    @property
    def confirming(self) -> bool:
        return self.publisher.confirming

    @property
    def by_topic(self) -> bool:
        """Whether the broker answers per topic, naming each publish."""
        return self.publisher.by_topic

    def publish(self, topic: str, payload: bytes) -> None:
        check_publish(topic, payload)
        self.publisher.publish(topic, payload)


class SubscriberProtocol(_ClientProtocol):
    """A subscriber connection: requests with their answers (Deferreds), and
    each delivery handed to `handler` and answered with its result.

    Without extensions deliveries are handled one at a time (the seed's acks
    carry no id); with them, up to the prefetch at once, acked by id.
    """

    def __init__(
        self,
        handler: Handler,
        prefetch: int | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.subscriber: SubscriberConnection[Deferred[None]] = SubscriberConnection(
            self._write, prefetch, credentials
        )
        self._adapt(self.subscriber)
        self.handler = handler
        self.route: Callable[[Message], Handler | BatchHandler | None] | None = None
        """If set, chooses each delivery's handler (None: nobody's, acked)
        in place of `handler`; a BatchHandler gets a read's deliveries at once."""
        self._arrived: list[tuple[Message, int | None]] = []
        self._reading = False
        self.on_answered: Callable[[Message, bool], None] = lambda message, acked: None
        self.on_withdrawn: Callable[[str], None] = lambda topic: None
        """Called with a topic the broker stopped (the user may no longer read it)."""
        subscriber = self.subscriber
        subscriber.on_answered = _settle
        subscriber.on_delivery = self._arrive
        subscriber.on_answered_delivery = lambda message, acked: self.on_answered(message, acked)
        subscriber.on_withdrawn = lambda topic: self.on_withdrawn(topic)

    @property
    def topics(self) -> set[str]:
        return self.subscriber.topics

    def subscribe(
        self, topics: Iterable[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> Deferred[None]:
        """Fires once the broker answers Subscribed; fails with BrokerError.

        From an offset past 65,535 is sent as From64, an extension the seed's
        broker does not know.
        """
        if self.subscriber.closed:
            return fail(ConnectionDone("the connection is closed"))
        answered: Deferred[None] = Deferred()
        self.subscriber.subscribe(answered, topics, start, offset)
        return answered

    def unsubscribe(self, topics: Iterable[str]) -> Deferred[None]:
        """Fires once the broker answers Unsubscribed."""
        if self.subscriber.closed:
            return fail(ConnectionDone("the connection is closed"))
        names = list(topics)
        answered: Deferred[None] = Deferred()
        self.subscriber.unsubscribe(answered, names)
        answered.addCallback(
            lambda _: self.subscriber.forget(n for n in names if n in self.subscriber.topics)
        )
        return answered

    def dataReceived(self, data: bytes) -> None:
        # The deliveries of one read are handled together once it is
        # decoded: a batch handler gets them in one call.
        self._reading = True
        try:
            self.connection.receive(data)
        finally:
            self._reading = False
        if self._arrived:
            self._hand_over()

    def _arrive(self, message: Message, delivery_id: int | None) -> None:
        self._arrived.append((message, delivery_id))
        if not self._reading:  # a plain delivery handed over after an answer
            self._hand_over()

    def _hand_over(self) -> None:
        self._reading = True
        try:
            while self._arrived:
                arrived, self._arrived = self._arrived, []
                self._dispatch(arrived)
        finally:
            self._reading = False

    def _dispatch(self, arrived: list[tuple[Message, int | None]]) -> None:
        route = self.route
        if route is None:
            handler = self.handler
            for message, delivery_id in arrived:
                self._handle(handler, message, delivery_id)
            return
        batches: dict[BatchHandler, list[tuple[Message, int | None]]] | None = None
        for message, delivery_id in arrived:
            chosen = route(message)
            if chosen is None:  # unsubscribed meanwhile: acked, so not sent again
                self.subscriber.answer(message, delivery_id, True)
            elif type(chosen) is BatchHandler:
                if batches is None:
                    batches = {}
                batches.setdefault(chosen, []).append((message, delivery_id))
            else:
                self._handle(chosen, message, delivery_id)  # type: ignore[arg-type]
        if batches:
            for batch_handler, batch in batches.items():
                self._handle_batch(batch_handler.handle, batch)

    def _handle(self, handler: Handler, message: Message, delivery_id: int | None) -> None:
        # A handler that answers at once is answered at once: a Deferred only
        # for one that returns a Deferred (maybeDeferred's per delivery cost
        # a third of the client's time).
        try:
            result = handler(message)
        except Exception:
            self._answer(Failure(), message, delivery_id)
            return
        if isinstance(result, Deferred):
            result.addBoth(self._answer, message, delivery_id)
        elif isinstance(result, Coroutine):  # an async def handler
            Deferred.fromCoroutine(result).addBoth(self._answer, message, delivery_id)
        else:
            self._answer(result, message, delivery_id)

    def _answer(self, result: object, message: Message, delivery_id: int | None) -> None:
        self.subscriber.answer(message, delivery_id, _acks(result, message))

    def _handle_batch(
        self, handler: Callable[[list[Message]], Any], batch: list[tuple[Message, int | None]]
    ) -> None:
        try:
            result = handler([message for message, _ in batch])
        except Exception:
            self._answer_batch(Failure(), batch)
            return
        if isinstance(result, Deferred):
            result.addBoth(self._answer_batch, batch)
        elif isinstance(result, Coroutine):
            Deferred.fromCoroutine(result).addBoth(self._answer_batch, batch)
        else:
            self._answer_batch(result, batch)

    def _answer_batch(self, result: object, batch: list[tuple[Message, int | None]]) -> None:
        self.subscriber.answer_many(batch, _acks(result, batch[0][0], len(batch)))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        requests = self.subscriber.pending()
        # Lost first, then the requests fail: a caller that tries again at
        # once must not be handed this connection again.
        super().connectionLost(reason)
        for answered in requests:
            answered.errback(reason or ConnectionDone())


def _settle(answered: Deferred[None], error: BrokerError | None) -> None:
    if error is None:
        answered.callback(None)
    else:
        answered.errback(error)


def _acks(result: object, message: Message, count: int = 1) -> bool:
    if isinstance(result, Failure):
        log.failure(
            "handler failed on {count} message(s) from offset {offset} of {topic!r}; nacking them",
            result,
            count=count,
            offset=message.offset,
            topic=message.topic,
        )
        return False
    return result is not False
