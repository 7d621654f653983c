"""The broker's server side: one protocol per connection, one factory per broker."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from broker import __version__
from broker.confirms import ConfirmQueue, answers_in_order
from broker.dead_letters import DEFAULT_TEMPLATE, DeadLetterPolicy, encode_dead_letter
from broker.delivery import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    Delivery,
    DeliverySettings,
    DeliveryTimers,
    DeliveryWindow,
)
from broker.hello import parse_hello_request
from broker.input_budget import InputBudget
from broker.log import DEFAULT_MEMORY_RETENTION, MemoryLog, Retention, StoreError
from broker.topics import TooManyTopics, TopicRegistry
from broker.wire import (
    ERR_EMPTY_MESSAGE,
    ERR_FRAME_TIMEOUT,
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
# Deliveries of one pump are written in chunks of about this many bytes, so
# that a connection whose output is full stops the pump between chunks.
FLUSH_BYTES = 256 * 1024
# Seconds a connection closed for misbehaving has to take its last Error
# before it is cut off (a peer that reads nothing would keep it open).
CLOSE_GRACE = 5.0

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
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    """Payload bytes in flight per connection (one larger message still goes alone)."""
    slow_consumer_timeout: float = 30.0
    """Seconds a subscriber's output may stay full before it is called slow."""
    disconnect_slow_consumers: bool = False
    """Close a slow consumer (its deliveries go back to its topics' logs)."""
    max_pending_input: int = 256 << 20
    """Bytes held in incomplete frames across all connections, at most."""
    frame_timeout: float = 30.0
    """Seconds a frame may stay incomplete before its connection is closed."""


def describe_peer(address: IAddress) -> str:
    """host:port for TCP, the path (or 'unix') for UNIX sockets."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"  # type: ignore[attr-defined]
    return getattr(address, "name", None) or type(address).__name__


@implementer(IPushProducer)
class _OutputBackpressure:
    """Registered as the producer of a connection's own transport: told when
    what we wrote piles up unread, and when it has drained.

    While it is full the connection sends no new deliveries and is not read
    from (so a peer cannot make us answer requests it never reads), which
    bounds the memory any peer can make us spend on its output.
    """

    def __init__(self, protocol: BrokerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.output_full()

    def resumeProducing(self) -> None:
        self._protocol.output_drained()

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
        self._outgoing_bytes = 0
        self._refusals = 0
        # Why reading is paused: "output" (our answers pile up), "input" (budget).
        self._read_pauses: set[str] = set()
        self._output_full = False
        self._slow_consumer: IDelayedCall | None = None
        # The incomplete frame held, and since when (for --frame-timeout).
        self._held_input = 0
        self._partial_since: float | None = None
        self._partial_progress = -1
        self._frame_timer: IDelayedCall | None = None
        self._cut_off: IDelayedCall | None = None

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
        self.transport.registerProducer(_OutputBackpressure(self), True)
        factory.connections.add(self)
        log.info("{peer} connected", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        assert decoder is not None
        decoder.feed(data)
        if self._batch or self._order:
            self._publish_batch()
        if self._acks_to_pump:
            # The slots this read's acks freed are filled at once, in one write.
            self._acks_to_pump = False
            if self._window is not None:
                self._window.pump()
        if decoder.buffered or self._held_input:
            self._track_incomplete_frame(decoder)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._end_handshake()
        self._cancel_slow_consumer()
        for timer in (self._frame_timer, self._cut_off):
            if timer is not None and timer.active():
                timer.cancel()
        self._frame_timer = self._cut_off = None
        self.factory.input_budget.remove(self)
        if self._confirms is not None:
            self._confirms.close()
        if self._window is not None:
            self._window.close()
            self._window = None
        self.factory.connection_gone(self)
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

    def refused(self, reason: str, detail: str | None = None) -> None:
        self._log_refusal(detail or reason)
        if self._confirms is not None and self._decoder.role == "publisher":
            self._order.append((reason, False))  # answered in its place
        else:
            self._send_error(reason)

    def hello_requested(self, payload: bytes) -> None:
        settings = self.factory.settings
        try:
            request = parse_hello_request(payload)
        except ProtocolError as error:
            self.refused(str(error), error.detail)
            return
        confirms = request.confirms
        self.extended = self._decoder.extended = True
        self._prefetch = min(request.prefetch, settings.max_prefetch)
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
                    "max_inflight_bytes": settings.max_inflight_bytes,
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
                max_bytes=self.factory.settings.max_inflight_bytes,
            )
            if self._output_full:
                self._window.pause()
                self._start_slow_consumer_timer()
            # A subscriber that vanishes without a FIN is found by keepalive.
            keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
            if keep_alive is not None:
                keep_alive(True)
        return self._window

    def _send_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        self._outgoing += (delivery.topic.delivery_prefix, encode_u64(len(payload)), payload)
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush_deliveries()

    def _send_extended_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        self._outgoing += (
            delivery.topic.extended_prefix,
            encode_delivery_tail(delivery.offset, delivery.attempts, delivery.id, len(payload)),
            payload,
        )
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush_deliveries()

    def _flush_deliveries(self) -> None:
        if self._outgoing:
            outgoing = self._outgoing
            self._outgoing = []
            self._outgoing_bytes = 0
            # May pause the window at once (output_full), between two chunks.
            self.transport.writeSequence(outgoing)

    # Backpressure, both ways.

    def output_full(self) -> None:
        """What we wrote piles up unread: send nothing new, read nothing."""
        self._output_full = True
        self._pause_reading("output")
        if self._window is not None:
            self._window.pause()
            self._start_slow_consumer_timer()

    def output_drained(self) -> None:
        """Everything we wrote has gone to the peer's socket."""
        self._output_full = False
        self._cancel_slow_consumer()
        self._resume_reading("output")
        if self._window is not None:
            self._window.resume()

    def pause_input(self) -> None:
        """The broker-wide input budget is spent: stop reading for now."""
        self._pause_reading("input")

    def resume_input(self) -> None:
        self._resume_reading("input")

    def _pause_reading(self, reason: str) -> None:
        if not self._read_pauses:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self._read_pauses:
            self._read_pauses.discard(reason)
            if not self._read_pauses:
                self.transport.resumeProducing()

    def _start_slow_consumer_timer(self) -> None:
        if self._slow_consumer is None:
            self._slow_consumer = self.factory.clock.callLater(
                self.factory.settings.slow_consumer_timeout, self._slow_consumer_expired
            )

    def _cancel_slow_consumer(self) -> None:
        if self._slow_consumer is not None:
            if self._slow_consumer.active():
                self._slow_consumer.cancel()
            self._slow_consumer = None

    def _slow_consumer_expired(self) -> None:
        settings = self.factory.settings
        window = self._window
        disconnect = settings.disconnect_slow_consumers
        log.warn(
            "{peer}: slow consumer: has read none of its deliveries for {seconds} s "
            "({in_flight} in flight, {bytes} bytes); {action}",
            peer=self.peer,
            seconds=settings.slow_consumer_timeout,
            in_flight=window.in_flight if window else 0,
            bytes=window.bytes_in_flight if window else 0,
            action="disconnecting; its deliveries go back to their topics"
            if disconnect
            else "waiting for it",
        )
        if disconnect:
            self.transport.abortConnection()

    def _track_incomplete_frame(self, decoder: ServerDecoder) -> None:
        """Account the incomplete frame left after a read, and time it."""
        factory = self.factory
        held = decoder.buffered
        progress = decoder.progress
        if held != self._held_input:
            self._held_input = held
            factory.input_budget.update(self, held, decoder.missing)
        if not held:
            self._partial_since = None
        elif self._partial_since is None or progress != self._partial_progress:
            self._partial_since = factory.clock.seconds()
            self._partial_progress = progress
            if self._frame_timer is None:
                self._frame_timer = factory.clock.callLater(
                    factory.settings.frame_timeout, self._frame_timer_fired
                )

    def _frame_timer_fired(self) -> None:
        self._frame_timer = None
        if self._partial_since is None:
            return
        clock = self.factory.clock
        timeout = self.factory.settings.frame_timeout
        left = self._partial_since + timeout - clock.seconds()
        if left > 1e-6:
            self._frame_timer = clock.callLater(left, self._frame_timer_fired)
            return
        log.warn(
            "{peer}: a frame stayed incomplete for {seconds} s ({held} bytes held); closing",
            peer=self.peer,
            seconds=timeout,
            held=self._held_input,
        )
        self._close_with_error(ERR_FRAME_TIMEOUT)

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
        self._close_with_error(ERR_HANDSHAKE_TIMEOUT)

    def _close_with_error(self, text: str) -> None:
        """Send an Error and close; cut off a peer that does not take it in time."""
        self._send_error(text)
        self.transport.loseConnection()
        if self._cut_off is None:
            self._cut_off = self.factory.clock.callLater(
                CLOSE_GRACE, self.transport.abortConnection
            )


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
            seconds = self.clock.seconds
            registry = TopicRegistry(
                lambda name: MemoryLog(retention, clock=seconds), self.settings.max_topics
            )
        self.registry = registry
        self.timers = DeliveryTimers(self.clock, self.settings.delivery)
        self.dead_letters = DeadLetterPolicy(self.settings.dead_letter_topic)
        self.connections: set[BrokerProtocol] = set()
        self.input_budget = InputBudget(self.settings.max_pending_input)
        self._when_empty: list[Deferred[None]] = []

    def connection_gone(self, protocol: BrokerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._when_empty:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self, grace: float = 1.0) -> Deferred[None]:
        """Close every connection (cutting off, after `grace` seconds, those
        that do not take what is still written to them); fires once all are gone."""
        if not self.connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._when_empty.append(done)
        for protocol in list(self.connections):
            protocol.transport.loseConnection()
        cut_off = self.clock.callLater(grace, self._abort_all)
        done.addBoth(lambda result: (cut_off.active() and cut_off.cancel(), result)[1])
        return done

    def _abort_all(self) -> None:
        for protocol in list(self.connections):
            protocol.transport.abortConnection()

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
