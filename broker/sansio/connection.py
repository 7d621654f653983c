"""One client connection's protocol state, without I/O: what to send first
(Hello, or the role's action), how to read the broker's answers, and what
they mean. A client feeds it the bytes it reads (`receive`), gives it a
function that writes (`write`), and sets the callbacks it cares about.

Negotiation: a connection that asks for extensions sends Hello and waits;
an Error in its place means the broker refused the credentials
(AuthenticationFailed) or speaks only the seed's protocol
(ExtensionsRefused: the Go broker then reads that connection no more).
Without Hello, the connection is negotiated at once, plainly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from broker.sansio.messages import (
    AuthenticationFailed,
    BrokerError,
    ExtensionsRefused,
    Message,
    check_topics,
)
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
    encode_headers_frame,
    encode_hello,
    encode_publish,
    encode_subscribe,
    encode_u16,
    encode_unsubscribe,
    is_unsolicited,
)
from broker.wire.headers import ID_PAIR_HEAD, header_block

T = TypeVar("T")
R = TypeVar("R")

_ACK = encode_u16(ACK)
_NACK = encode_u16(NACK)
# Deliveries larger than this are taken as a broken stream.
CLIENT_MAX_PAYLOAD = 1 << 30

Write = Callable[[bytes], None]


def _ignore(*args: object) -> None:
    pass


class ClientConnection:
    """Negotiation, decoding and the reactions both roles share.

    `ask` is the Hello to send (None: speak the plain protocol). Callbacks:
    `on_negotiated(server)` with what the broker granted (None: plain);
    `on_refused(error)` if it refused Hello (then close the connection);
    `on_error(text)` for an Error that answers nothing the client asked;
    `on_broken(reason)` when the stream makes no sense (then close it).
    """

    def __init__(self, write: Write, ask: dict[str, Any] | None = None) -> None:
        self.write = write
        self.decoder = ClientDecoder(self, CLIENT_MAX_PAYLOAD)
        self.server: dict[str, Any] | None = None
        """The extensions the broker granted, or None."""
        self.negotiated = False
        self.closed = False
        self._ask = ask
        self.on_negotiated: Callable[[dict[str, Any] | None], None] = _ignore
        self.on_refused: Callable[[BrokerError], None] = _ignore
        self.on_error: Callable[[str], None] = _ignore
        self.on_broken: Callable[[str], None] = _ignore

    def start(self) -> None:
        """The connection is up: send Hello, or begin plainly."""
        if self._ask is None:
            self._begin(None)
        else:
            self.decoder.expect_hello()
            self.write(encode_hello({"version": EXTENSIONS_VERSION, **self._ask}))

    def receive(self, data: bytes) -> None:
        """Bytes read from the broker."""
        self.decoder.feed(data)

    def lost(self) -> None:
        """The connection is gone: send nothing more."""
        self.closed = True

    def _begin(self, server: dict[str, Any] | None) -> None:
        self.server = server
        self.negotiated = True
        self._start_role()
        self.on_negotiated(server)

    def _start_role(self) -> None:
        """Send what the role sends first, once negotiation is over."""

    # Decoder events.

    def hello_received(self, fields: dict[str, Any]) -> None:
        self._begin(fields)

    def status_received(self, code: int) -> None:
        self.protocol_error(f"unexpected status {code}")

    def error_received(self, text: str) -> None:
        if not self.negotiated:
            # The seed's broker answers Hello with "unknown action" and then
            # never reads this connection again: it is of no more use.
            refused = text in (ERR_AUTH_FAILED, ERR_TOO_MANY_CONNECTIONS)
            self.on_refused(AuthenticationFailed(text) if refused else ExtensionsRefused(text))
            return
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
        self.on_broken(reason)


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


def publisher_hello(
    confirms: bool, credentials: dict[str, str] | None, confirm_order: str | None
) -> dict[str, Any] | None:
    """What a publisher asks for in Hello; None: the plain protocol."""
    ask: dict[str, Any] = {}
    if confirms:
        ask["confirms"] = True
        ask["headers"] = True
        if confirm_order is not None:
            ask["confirm_order"] = confirm_order
    return {**ask, **credentials} if credentials else ask or None


class PublisherConnection(ClientConnection):
    """A publisher connection. Without confirms the broker answers nothing on
    success and errors go to `on_error`; with them, every publish is answered
    through `on_confirmed(count, first offset, sequence)` and
    `on_publish_refused(text, sequence)`: in publish order (sequence None:
    the oldest), or, where the broker grants "confirm_order": "topic" (asked
    for by default), in order per topic, each answer naming the sequence of
    the publish it answers (a topic whose store hangs then holds back no
    other topic's confirms)."""

    def __init__(
        self,
        write: Write,
        confirms: bool = False,
        credentials: dict[str, str] | None = None,
        confirm_order: str | None = CONFIRM_ORDER_TOPIC,
    ) -> None:
        super().__init__(write, publisher_hello(confirms, credentials, confirm_order))
        self.on_confirmed: Callable[[int, int, int | None], None] = _ignore
        self.on_publish_refused: Callable[[str, int | None], None] = _ignore

    @property
    def confirming(self) -> bool:
        return bool(self.server and self.server.get("confirms"))

    @property
    def by_topic(self) -> bool:
        """Whether the broker answers per topic, naming each publish."""
        return bool(self.server and self.server.get("confirm_order") == CONFIRM_ORDER_TOPIC)

    def _start_role(self) -> None:
        self.write(encode_u16(ACTION_PUBLISH))

    @property
    def takes_headers(self) -> bool:
        """Whether the broker agreed headers (a message may carry them)."""
        return bool(self.server and self.server.get("headers"))

    @property
    def deduplicates(self) -> bool:
        """Whether the broker stores a message id once (a dedup window was
        agreed, with confirms: the answer then says where the first copy went)."""
        return bool(self.server and self.server.get("dedup_window") and self.confirming)

    def publish(self, topic: str, payload: bytes, block: bytes = b"") -> None:
        """Send a publish frame whose topic and payload are already checked
        (after the frame of its headers, if it carries any: `block`, or
        those of the payload)."""
        if not block:
            block = header_block(payload)
        if block:
            frame = _HEADERS_FRAMES.get(block)
            if frame is None:
                frame = encode_headers_frame(block)
                if block[2:9] != ID_PAIR_HEAD:  # (an id makes each block new)
                    if len(_HEADERS_FRAMES) >= 256:
                        _HEADERS_FRAMES.clear()
                    _HEADERS_FRAMES[block] = frame
            self.write(frame + encode_publish(topic, payload))
        else:
            self.write(encode_publish(topic, payload))

    def confirmed(self, count: int, first_offset: int) -> None:
        self.on_confirmed(count, first_offset, None)

    def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None:
        self.on_confirmed(count, first_offset, sequence)

    def refused_at(self, sequence: int, text: str) -> None:
        self.on_publish_refused(text, sequence)

    def error_received(self, text: str) -> None:
        # With confirms every publish is answered in order; an Error that
        # answers none (a revoked sign-in, a frame timeout) is not one of them.
        # By topic, refusals are RefusedAt frames: an Error answers no publish.
        if self.confirming and not self.by_topic and not is_unsolicited(text):
            self.on_publish_refused(text, None)
        else:
            super().error_received(text)


_HEADERS_FRAMES: dict[bytes, bytes] = {}
"""The Headers frames of the blocks published lately (programs repeat a
few sets of headers)."""


def subscriber_hello(
    prefetch: int | None, credentials: dict[str, str] | None
) -> dict[str, Any] | None:
    """What a subscriber asks for in Hello (with the extensions, patterns
    and groups too); None: the plain protocol."""
    ask: dict[str, Any] = {}
    if prefetch is not None:
        ask = {"prefetch": prefetch, "patterns": True, "groups": True, "headers": True}
    return {**ask, **credentials} if credentials else ask or None


class SubscriberConnection(ClientConnection, Generic[R]):
    """A subscriber connection: requests with their answers, and deliveries
    with theirs.

    A request carries a token of the client's choosing (its future, say),
    handed back to `on_answered(token, error)` with None or the BrokerError.
    Each delivery goes to `on_delivery(message, delivery_id)` and is answered
    with `answer`. Without extensions deliveries come one at a time (the
    seed's acks carry no id, so they answer in order): the next is handed
    over once the last is answered. With them, up to the prefetch at once,
    acked by id, each answer told to `on_answered_delivery(message, acked)`.
    `on_withdrawn(name)` says the broker ended a subscription itself.
    """

    def __init__(
        self,
        write: Write,
        prefetch: int | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        super().__init__(write, subscriber_hello(prefetch, credentials))
        self.topics: set[str] = set()
        self.on_delivery: Callable[[Message, int | None], None] = _ignore
        self.on_answered: Callable[[R, BrokerError | None], None] = _ignore
        self.on_answered_delivery: Callable[[Message, bool], None] = _ignore
        self.on_withdrawn: Callable[[str], None] = _ignore
        self._requests: deque[tuple[R, int, list[str]]] = deque()
        self._plain: deque[Message] = deque()
        self._busy = False

    def subscribe(
        self, token: R, topics: Iterable[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> None:
        """Ask for `topics` from `start`; answered through `on_answered(token, ...)`.

        From an offset past 65,535 is sent as From64, an extension the seed's
        broker does not know.
        """
        names = check_topics(topics)
        if start == StartAt.FROM and offset > MAX_U16:
            start = StartAt.FROM64
        frame = encode_subscribe(names, start, offset)
        new = [name for name in names if name not in self.topics]
        for name in new:
            # Deliveries of a new topic may follow the status at once.
            self.topics.add(name)
            self.decoder.expect_topic(name)
        self._request(token, frame, STATUS_SUBSCRIBED, new)

    def unsubscribe(self, token: R, topics: Iterable[str]) -> None:
        """Stop `topics`; answered through `on_answered(token, ...)`."""
        names = check_topics(topics)
        self._request(token, encode_unsubscribe(names), STATUS_UNSUBSCRIBED, [])

    def _request(self, token: R, frame: bytes, status: int, added: list[str]) -> None:
        self._requests.append((token, status, added))
        self.decoder.pending_requests += 1
        self.write(frame)

    def forget(self, names: Iterable[str]) -> None:
        """Stop expecting deliveries of `names` (once unsubscribed)."""
        for name in list(names):
            self.topics.discard(name)
            self.decoder.forget_topic(name)

    def pending(self) -> list[R]:
        """The tokens of requests not answered yet (failed when it is lost)."""
        return [token for token, _, _ in self._requests]

    def lost(self) -> None:
        super().lost()
        self._plain.clear()
        self._requests.clear()

    # Decoder events.

    def status_received(self, code: int) -> None:
        if not self._requests:
            self.protocol_error(f"status {code} answers no request")
            return
        token, expected, added = self._requests.popleft()
        self.decoder.pending_requests -= 1
        if code == expected:
            self.on_answered(token, None)
        else:
            self.forget(added)
            self.on_answered(token, BrokerError(f"unexpected status {code}"))

    def error_received(self, text: str) -> None:
        for ended in (ERR_PERMISSION_WITHDRAWN, ERR_DURABLE_NOT_JOINED):
            if text.startswith(ended + ": "):
                # The broker ended (or never began) this subscription itself.
                name = text[len(ended) + 2 :]
                self.forget([name])
                self.on_withdrawn(name)
        if not self.negotiated or is_unsolicited(text) or not self._requests:
            super().error_received(text)
            return
        token, _, added = self._requests.popleft()
        self.decoder.pending_requests -= 1
        self.forget(added)
        self.on_answered(token, BrokerError(text))

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._plain.append(Message(topic, payload))
        if not self._busy:
            self._hand_over_next()

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self.on_delivery(Message(topic, payload, offset, attempt), delivery_id)

    def _hand_over_next(self) -> None:
        if self._plain and not self._busy and not self.closed:
            self._busy = True
            self.on_delivery(self._plain.popleft(), None)

    def answer(self, message: Message, delivery_id: int | None, acked: bool) -> None:
        """Ack (or nack) a delivery handed over with `delivery_id`."""
        if self.closed:
            return
        if delivery_id is None:  # the plain protocol: answers in order
            self.write(_ACK if acked else _NACK)
            self._busy = False
            self._hand_over_next()
            return
        self.write(encode_ack_id(delivery_id, acked))
        self.on_answered_delivery(message, acked)

    def answer_many(self, answered: list[tuple[Message, int | None]], acked: bool) -> None:
        """Ack (or nack) every delivery of `answered` alike, in one write
        (the broker reads a run of acks at once)."""
        if self.closed:
            return
        frames = []
        for message, delivery_id in answered:
            if delivery_id is None:  # the plain protocol: answers in order, no ids
                self.answer(message, None, acked)
            else:
                frames.append(encode_ack_id(delivery_id, acked))
        if not frames:
            return
        self.write(b"".join(frames))
        told = self.on_answered_delivery
        for message, _ in answered:
            told(message, acked)
