"""The broker's server side: one protocol per connection, one factory per broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from broker import __version__
from broker.confirms import ConfirmQueue, answers_in_order
from broker.dead_letters import DEFAULT_TEMPLATE, DeadLetterPolicy, encode_dead_letter
from broker.delivery import Delivery, DeliverySettings, DeliveryTimers, DeliveryWindow
from broker.log import DEFAULT_MEMORY_RETENTION, MemoryLog, Retention, StoreError
from broker.topics import TooManyTopics, TopicRegistry
from broker.wire import (
    ERR_EMPTY_MESSAGE,
    ERR_HANDSHAKE_TIMEOUT,
    ERR_NOTHING_TO_ACK,
    ERR_TOO_MANY_TOPICS,
    ERR_UNKNOWN_ACTION,
    EXTENSIONS_VERSION,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    ProtocolError,
    ServerDecoder,
    StartAt,
    decode_hello,
    encode_delivery_tail,
    encode_error,
    encode_hello,
    encode_u16,
    encode_u64,
)

log = Logger()

# Refusals logged per connection before the rest are only counted: a client
# flooding bad frames must not flood the log too.
LOGGED_REFUSALS = 10

_SUBSCRIBED = encode_u16(STATUS_SUBSCRIBED)
_UNSUBSCRIBED = encode_u16(STATUS_UNSUBSCRIBED)


@dataclass(frozen=True)
class BrokerSettings:
    """Limits and timers of one broker."""

    max_message_size: int = 1 << 20
    """Largest payload (and topic list) accepted, in bytes."""
    handshake_timeout: float = 10.0
    """Seconds a new connection has to send its first valid action."""
    max_topics: int = 100_000
    """Topics the broker will hold; creating one more is refused."""
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    retention: Retention = DEFAULT_MEMORY_RETENTION
    """What each topic's log keeps."""
    max_prefetch: int = 1024
    """Deliveries in flight per connection an extended subscriber may ask for."""
    dead_letter_topic: str | None = DEFAULT_TEMPLATE
    """Where given-up messages go ("{topic}" is replaced); None: dropped."""


def describe_peer(address: IAddress) -> str:
    """host:port for TCP, the path (or 'unix') for UNIX sockets."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"  # type: ignore[attr-defined]
    return getattr(address, "name", None) or type(address).__name__


@implementer(IPushProducer)
class _ReadThrottle:
    """Stops reading from a peer while what we wrote to it piles up unread.

    Registered as the producer of the connection's own transport, it bounds
    the memory a client can make us spend on answers it never reads.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class BrokerProtocol(Int32StringReceiver):
    """One client connection: the handshake, then the subscriber or publisher loop.

    The seed's frames mix u16 fields with Int32 strings, so `dataReceived`
    hands every byte to one incremental decoder (`broker.wire.ServerDecoder`)
    that walks a single buffer; `MAX_LENGTH` is the broker's message limit.
    The decoder calls back the event methods below in stream order.
    """

    factory: BrokerFactory

    def __init__(self) -> None:
        self.peer = "?"
        self._decoder: ServerDecoder | None = None
        self._window: DeliveryWindow | None = None
        self._batch: dict[str, list[bytes]] = {}
        self._handshake: IDelayedCall | None = None
        # Extensions, once Hello agreed them.
        self.extended = False
        self._prefetch = 1
        self._confirms: ConfirmQueue | None = None
        self._order: list[tuple[str, bool]] = []  # this read's publishes, for confirms
        self._outgoing: list[bytes] = []  # deliveries of one pump, written at once
        self._acks_to_pump = False
        self._refusals = 0

    # Connection events.

    def connectionMade(self) -> None:
        factory = self.factory
        settings = factory.settings
        self.peer = describe_peer(self.transport.getPeer())
        self.MAX_LENGTH = settings.max_message_size
        self._decoder = ServerDecoder(self, settings.max_message_size)
        self._handshake = factory.clock.callLater(
            settings.handshake_timeout, self._handshake_expired
        )
        self.transport.registerProducer(_ReadThrottle(self.transport), True)
        factory.connections.add(self)
        log.info("{peer} connected", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        assert self._decoder is not None
        self._decoder.feed(data)
        if self._batch or self._order:
            self._publish_batch()
        if self._acks_to_pump:
            # The slots this read's acks freed are filled at once, in one write.
            self._acks_to_pump = False
            if self._window is not None:
                self._window.pump()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._end_handshake()
        if self._confirms is not None:
            self._confirms.close()
        if self._window is not None:
            self._window.close()
            self._window = None
        self.factory.connections.discard(self)
        role = self._decoder.role if self._decoder else "new"
        log.info("{peer} ({role}) disconnected", peer=self.peer, role=role)
        if self._refusals > LOGGED_REFUSALS:
            log.warn(
                "{peer}: {n} refusals in all, {unlogged} not logged",
                peer=self.peer,
                n=self._refusals,
                unlogged=self._refusals - LOGGED_REFUSALS,
            )

    def stringReceived(self, string: bytes) -> None:
        # Frames are decoded by ServerDecoder, never by Int32StringReceiver.
        raise NotImplementedError

    # Decoder events.

    def unknown_action(self, code: int) -> None:
        self._log_refusal(f"unknown action {code}")
        self._send_error(ERR_UNKNOWN_ACTION)

    def refused(self, reason: str) -> None:
        self._log_refusal(reason)
        if self._confirms is not None and self._decoder.role == "publisher":
            self._order.append((reason, False))  # answered in its place
        else:
            self._send_error(reason)

    def hello_requested(self, payload: bytes) -> None:
        settings = self.factory.settings
        try:
            fields = decode_hello(payload)
            prefetch = int(fields.get("prefetch", 1))
            confirms = bool(fields.get("confirms", False))
        except (ProtocolError, TypeError, ValueError):
            self.refused("invalid hello")
            return
        self.extended = self._decoder.extended = True
        self._prefetch = max(1, min(prefetch, settings.max_prefetch))
        if confirms:
            self._confirms = ConfirmQueue(self.transport.write)
        self.transport.write(
            encode_hello(
                {
                    "version": EXTENSIONS_VERSION,
                    "server": f"twisted-broker/{__version__}",
                    "confirms": confirms,
                    "prefetch": self._prefetch,
                    "max_prefetch": settings.max_prefetch,
                    "max_message_size": settings.max_message_size,
                    "max_deliveries": settings.delivery.max_deliveries,
                    "ack_timeout": settings.delivery.ack_timeout,
                    "ack_delay": settings.delivery.ack_delay,
                    "dead_letters": settings.dead_letter_topic,
                    "from64": True,
                }
            )
        )
        log.info(
            "{peer} agreed extensions: confirms={confirms}, prefetch={prefetch}",
            peer=self.peer,
            confirms=confirms,
            prefetch=self._prefetch,
        )

    def became_publisher(self) -> None:
        self._end_handshake()
        log.info("{peer} is a publisher", peer=self.peer)

    def became_subscriber(self) -> None:
        self._end_handshake()
        log.info("{peer} is a subscriber", peer=self.peer)

    def subscribe_requested(self, topics: list[str], start: StartAt, offset: int) -> None:
        try:
            resolved = self.factory.registry.get_all(topics)
        except TooManyTopics:
            self.refused(ERR_TOO_MANY_TOPICS)
            return
        window = self._subscriber_window()
        # The status goes out before any delivery the new cursors produce.
        self.transport.write(_SUBSCRIBED)
        for topic in resolved:
            window.subscribe(topic, start, offset)
        where = (
            f"offset {offset}" if start in (StartAt.FROM, StartAt.FROM64) else start.name.title()
        )
        log.info(
            "{peer} subscribed to {topics} at {where}", peer=self.peer, topics=topics, where=where
        )

    def unsubscribe_requested(self, topics: list[str]) -> None:
        window = self._subscriber_window()
        for name in topics:
            window.unsubscribe(name)
        self.transport.write(_UNSUBSCRIBED)
        log.info("{peer} unsubscribed from {topics}", peer=self.peer, topics=topics)

    def acked(self) -> None:
        if not self._subscriber_window().ack():
            self.refused(ERR_NOTHING_TO_ACK)

    def nacked(self) -> None:
        if not self._subscriber_window().nack():
            self.refused(ERR_NOTHING_TO_ACK)

    def acked_ids(self, delivery_ids: list[int]) -> None:
        self._subscriber_window().ack_many(delivery_ids)
        self._acks_to_pump = True

    def nacked_id(self, delivery_id: int) -> None:
        self._subscriber_window().nack(delivery_id, pump=False)
        self._acks_to_pump = True

    def published(self, topic: str, payload: bytes) -> None:
        if not payload:
            # The reference ignores empty messages; a confirming publisher is told.
            if self._confirms is not None:
                self.refused(ERR_EMPTY_MESSAGE)
            return
        if self._confirms is not None:
            self._order.append((topic, True))
        batch = self._batch.get(topic)
        if batch is None:
            self._batch[topic] = [payload]
        else:
            batch.append(payload)

    # Internals.

    def _log_refusal(self, reason: str) -> None:
        self._refusals += 1
        if self._refusals <= LOGGED_REFUSALS:
            log.warn("{peer}: {reason}", peer=self.peer, reason=reason)
            if self._refusals == LOGGED_REFUSALS:
                log.warn("{peer}: further refusals are counted, not logged", peer=self.peer)

    def _publish_batch(self) -> None:
        """Append what this read brought, one batch per topic; answer a
        confirming publisher once it is committed."""
        batch = self._batch
        self._batch = {}
        registry = self.factory.registry
        firsts: dict[str, int | str] = {}
        committed = []
        for topic, payloads in batch.items():
            try:
                stored = registry.get(topic)
                first = firsts[topic] = stored.append(payloads)
            except (TooManyTopics, StoreError) as error:
                firsts[topic] = str(error)
                log.warn(
                    "{peer}: {n} message(s) to {topic!r} refused: {error}",
                    peer=self.peer,
                    n=len(payloads),
                    topic=topic,
                    error=error,
                )
                if self._confirms is None:
                    # One Error per message refused, as a publisher counts them.
                    self.transport.write(encode_error(str(error)) * len(payloads))
                continue
            if self._confirms is not None and stored.log.committed_offset < first + len(payloads):
                committed.append(stored.log.flush())
        if self._confirms is not None:
            order, self._order = self._order, []
            self._confirms.add(answers_in_order(order, firsts), committed)

    def _subscriber_window(self) -> DeliveryWindow:
        if self._window is None:
            self._window = DeliveryWindow(
                self.factory.timers,
                self._send_extended_delivery if self.extended else self._send_delivery,
                self._delivery_dropped,
                capacity=self._prefetch,
                flush=self._flush_deliveries,
            )
            # A subscriber that vanishes without a FIN is found by keepalive.
            keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
            if keep_alive is not None:
                keep_alive(True)
        return self._window

    def _send_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        self._outgoing += (delivery.topic.delivery_prefix, encode_u64(len(payload)), payload)

    def _send_extended_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        self._outgoing += (
            delivery.topic.extended_prefix,
            encode_delivery_tail(delivery.offset, delivery.attempts, delivery.id, len(payload)),
            payload,
        )

    def _flush_deliveries(self) -> None:
        if self._outgoing:
            self.transport.writeSequence(self._outgoing)
            self._outgoing = []

    def _delivery_dropped(self, delivery: Delivery, reason: str) -> None:
        letter_topic = self.factory.dead_letter(delivery, reason, self.peer)
        log.warn(
            "{peer}: gave up on message {offset} of {topic!r} after {attempts} deliveries "
            "({reason}); {fate}",
            peer=self.peer,
            offset=delivery.offset,
            topic=delivery.topic.name,
            attempts=delivery.attempts,
            reason=reason,
            fate=f"dead-lettered to {letter_topic!r}" if letter_topic else "dropped",
        )

    def _send_error(self, text: str) -> None:
        self.transport.write(encode_error(text))

    def _end_handshake(self) -> None:
        if self._handshake is not None:
            if self._handshake.active():
                self._handshake.cancel()
            self._handshake = None

    def _handshake_expired(self) -> None:
        self._handshake = None
        log.warn("{peer} sent no valid first action in time; closing", peer=self.peer)
        self._send_error(ERR_HANDSHAKE_TIMEOUT)
        self.transport.loseConnection()


class BrokerFactory(ServerFactory):
    """One broker: its settings, its topic registry (with each topic's replay
    log) and the delivery timers all its connections share."""

    protocol = BrokerProtocol

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        clock: IReactorTime | None = None,
        registry: TopicRegistry | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.settings = settings or BrokerSettings()
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        if registry is None:
            retention = self.settings.retention
            registry = TopicRegistry(lambda name: MemoryLog(retention), self.settings.max_topics)
        self.registry = registry
        self.timers = DeliveryTimers(self.clock, self.settings.delivery)
        self.dead_letters = DeadLetterPolicy(self.settings.dead_letter_topic)
        self.connections: set[BrokerProtocol] = set()

    def dead_letter(self, delivery: Delivery, reason: str, subscriber: str) -> str | None:
        """Append a given-up message to its dead-letter topic; return that
        topic, or None if it was dropped."""
        topic = self.dead_letters.topic_for(delivery.topic.name)
        if topic is None:
            return None
        letter = encode_dead_letter(
            {
                "topic": delivery.topic.name,
                "offset": delivery.offset,
                "deliveries": delivery.attempts,
                "reason": reason,
                "subscriber": subscriber,
                "time": self.clock.seconds(),
            },
            delivery.payload,
        )
        try:
            self.registry.publish(topic, [letter])
        except (TooManyTopics, StoreError) as error:
            log.error("could not dead-letter to {topic!r}: {error}", topic=topic, error=error)
            return None
        return topic

    def stopFactory(self) -> None:
        self.timers.stop()
