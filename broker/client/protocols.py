"""The client's two connections as Twisted protocols: a publisher and a
subscriber, each negotiating the extensions (or not) and decoding what the
broker sends. `broker.client.BrokerClient` drives them; they can also be used
alone, with any endpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet.defer import (
    Deferred,
    fail,
    maybeDeferred,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.wire import (
    ACK,
    ACTION_PUBLISH,
    CONFIRM_ORDER_TOPIC,
    ERR_AUTH_FAILED,
    ERR_DURABLE_NOT_JOINED,
    ERR_PERMISSION_WITHDRAWN,
    ERR_TOO_MANY_CONNECTIONS,
    EXTENSIONS_VERSION,
    MAX_U16,
    NACK,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    ClientDecoder,
    StartAt,
    encode_ack_id,
    encode_hello,
    encode_publish,
    encode_subscribe,
    encode_u16,
    encode_unsubscribe,
    is_unsolicited,
    topic_name_problem,
)

log = Logger()

_ACK = encode_u16(ACK)
_NACK = encode_u16(NACK)
# Deliveries larger than this are taken as a broken stream.
CLIENT_MAX_PAYLOAD = 1 << 30


T = TypeVar("T")


class BrokerError(Exception):
    """The broker answered with an Error status."""


class OutcomeUnknown(BrokerError):
    """The broker could not confirm a publish, but may have stored it (its
    store lost the connection mid-call, or too few replicas acknowledged
    it): unlike a plain BrokerError, the message may yet be delivered, so
    publishing it again may deliver it twice."""


OUTCOME_UNKNOWN = "outcome unknown"
"""How the broker's Error text starts when a publish may have been stored."""


def refusal(text: str) -> BrokerError:
    """The exception for an Error answering a publish."""
    if text.startswith(OUTCOME_UNKNOWN):
        return OutcomeUnknown(text)
    return BrokerError(text)


class AuthenticationFailed(BrokerError):
    """The broker refused the client's credentials (or its certificate's
    user), or that user has all the connections it may have."""


class ExtensionsRefused(BrokerError):
    """The broker answered Hello with an Error: it speaks only the seed's
    protocol (the Go broker then stops reading that connection)."""


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
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    if not isinstance(payload, bytes):
        hint = " (encode it first)" if isinstance(payload, str) else ""
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}{hint}")
    problem = topic_name_problem(topic)
    if problem:
        raise ValueError(f"{topic!r}: {problem}")
    if not payload:
        raise ValueError("the broker does not take empty messages")


class _ClientProtocol(Protocol):
    """Negotiation, decoding and the reactions both roles share.

    `ask` is the Hello to send (None: speak the plain protocol); `negotiated`
    fires with what the server granted, or None without extensions.
    """

    transport: ITransport

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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.negotiated.called:
            self.negotiated.errback(reason or ConnectionDone())
        self.lost.callback(None)

    def status_received(self, code: int) -> None:
        self.protocol_error(f"unexpected status {code}")

    def error_received(self, text: str) -> None:
        if not self.negotiated.called:
            # The seed's broker answers Hello with "unknown action" and then
            # never reads this connection again: it is of no more use.
            refused = text in (ERR_AUTH_FAILED, ERR_TOO_MANY_CONNECTIONS)
            self.negotiated.errback(
                AuthenticationFailed(text) if refused else ExtensionsRefused(text)
            )
            self.transport.loseConnection()
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

    def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None:
        self.protocol_error("unexpected confirm")

    def refused_at(self, sequence: int, text: str) -> None:
        self.protocol_error("unexpected refusal")

    def protocol_error(self, reason: str) -> None:
        log.error("closing a broken connection: {reason}", reason=reason)
        self.transport.loseConnection()


class Unanswered(Generic[T]):
    """Publishes written on one connection and not answered yet, by their
    sequence on it (0 for the first). Answers in publish order take the
    oldest; answers per topic (ConfirmedAt, RefusedAt) name their sequence."""

    def __init__(self) -> None:
        self._entries: dict[int, T] = {}
        self._oldest = 0
        self._next = 0

    def append(self, entry: T) -> None:
        self._entries[self._next] = entry
        self._next += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __reversed__(self) -> Iterator[T]:
        entries = self._entries
        return iter([entries[number] for number in sorted(entries, reverse=True)])

    def clear(self) -> None:
        self._entries.clear()

    def take(self, sequence: int | None, count: int) -> list[T] | None:
        """The `count` publishes from `sequence` on (None: the oldest), no
        longer unanswered; None if any of them is not unanswered."""
        entries = self._entries
        if sequence is None:
            while self._oldest < self._next and self._oldest not in entries:
                self._oldest += 1
            sequence = self._oldest
        numbers = range(sequence, sequence + count)
        if count < 1 or not all(number in entries for number in numbers):
            return None
        return [entries.pop(number) for number in numbers]


class PublisherProtocol(_ClientProtocol):
    """A publisher connection. Without confirms the broker answers nothing on
    success and errors go to `on_error`; with them, every publish is answered
    through `on_confirmed` and `on_refused`: in publish order, or, where the
    broker grants "confirm_order": "topic" (asked for by default), in order
    per topic, each answer naming the sequence of the publish it answers (a
    topic whose store hangs then holds back no other topic's confirms)."""

    def __init__(
        self,
        confirms: bool = False,
        credentials: dict[str, str] | None = None,
        confirm_order: str | None = CONFIRM_ORDER_TOPIC,
    ) -> None:
        ask: dict[str, Any] = {}
        if confirms:
            ask["confirms"] = True
            if confirm_order is not None:
                ask["confirm_order"] = confirm_order
        super().__init__({**ask, **credentials} if credentials else ask or None)
        self.on_confirmed: Callable[[int, int, int | None], None] = lambda count, first, at: None
        """(count, first offset, sequence of the first publish or None: the oldest)"""
        self.on_refused: Callable[[str, int | None], None] = lambda text, at: None
        """(text, sequence of the publish or None: the oldest)"""

    @property
    def confirming(self) -> bool:
        return bool(self.server and self.server.get("confirms"))

    @property
    def by_topic(self) -> bool:
        """Whether the broker answers per topic, naming each publish."""
        return bool(self.server and self.server.get("confirm_order") == CONFIRM_ORDER_TOPIC)

    def _start_role(self) -> None:
        self.transport.write(encode_u16(ACTION_PUBLISH))

    def publish(self, topic: str, payload: bytes) -> None:
        _check_publish(topic, payload)
        self.write_publish(topic, payload)

    def write_publish(self, topic: str, payload: bytes) -> None:
        """Send a publish frame whose topic and payload are already checked."""
        self.transport.write(encode_publish(topic, payload))

    def confirmed(self, count: int, first_offset: int) -> None:
        self.on_confirmed(count, first_offset, None)

    def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None:
        self.on_confirmed(count, first_offset, sequence)

    def refused_at(self, sequence: int, text: str) -> None:
        self.on_refused(text, sequence)

    def error_received(self, text: str) -> None:
        # With confirms every publish is answered in order; an Error that
        # answers none (a revoked sign-in, a frame timeout) is not one of them.
        # By topic, refusals are RefusedAt frames: an Error answers no publish.
        if self.confirming and not self.by_topic and not is_unsolicited(text):
            self.on_refused(text, None)
        else:
            super().error_received(text)


class SubscriberProtocol(_ClientProtocol):
    """A subscriber connection: requests with their answers, and each
    delivery handed to `handler` and answered with its result.

    Without extensions deliveries are handled one at a time (the seed's acks
    carry no id); with them, up to the prefetch at once, acked by id.
    """

    def __init__(
        self,
        handler: Handler,
        prefetch: int | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        # With the extensions, ask for patterns too (`*` and `>` tokens).
        ask: dict[str, Any] = {}
        if prefetch is not None:
            ask = {"prefetch": prefetch, "patterns": True, "groups": True}
        super().__init__({**ask, **credentials} if credentials else ask or None)
        self.handler = handler
        self.topics: set[str] = set()
        self.on_answered: Callable[[Message, bool], None] = lambda message, acked: None
        self.on_withdrawn: Callable[[str], None] = lambda topic: None
        """Called with a topic the broker stopped (the user may no longer read it)."""
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
        for ended in (ERR_PERMISSION_WITHDRAWN, ERR_DURABLE_NOT_JOINED):
            if text.startswith(ended + ": "):
                # The broker ended (or never began) this subscription itself.
                name = text[len(ended) + 2 :]
                self._forget([name])
                self.on_withdrawn(name)
        if not self.negotiated.called or is_unsolicited(text) or not self._requests:
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._deliveries.clear()
        requests, self._requests = self._requests, deque()
        # Lost first, then the requests fail: a caller that tries again at
        # once must not be handed this connection again.
        super().connectionLost(reason)
        for answered, _, _ in requests:
            answered.errback(reason or ConnectionDone())


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
