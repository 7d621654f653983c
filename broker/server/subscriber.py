"""A subscriber's session on a TCP connection: the frames of its requests
and deliveries. What it may subscribe to, its window, its groups, durable
consumers, patterns and awaited topics are its Consumer's (broker.core.consumer),
which every front door shares; this module decodes into it and encodes out
of it, in the plain protocol (the seed's) or with the extensions agreed in
Hello."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.logger import Logger

from broker.core.consumer import Consumer, RunSender, SubscribeRefused
from broker.core.delivery import Delivery, DeliveryWindow, Subscription
from broker.core.topics import Topic
from broker.server.session import Session
from broker.server.transport import direct_writer
from broker.wire import (
    ERR_NOTHING_TO_ACK,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    StartAt,
    encode_delivery_tail,
    encode_error,
    encode_first_deliveries,
    encode_first_headered_deliveries,
    encode_headers_frame,
    encode_u16,
    encode_u64,
    total_size,
)
from broker.wire.headers import ID_PAIR_HEAD, Headered, header_block, without_message_id

if TYPE_CHECKING:
    from broker.core.patterns import PatternSubscriptions
    from broker.security.users import User
    from broker.server.connection import Connection

log = Logger()

# Deliveries of one pump are written in chunks of about this many bytes, so
# that a connection whose output is full stops the pump between chunks.
FLUSH_BYTES = 256 * 1024
# A connection adds one publish-to-delivery sample to the latency histogram
# at most this often (seconds).
LATENCY_SAMPLE_SECONDS = 0.01

_SUBSCRIBED = encode_u16(STATUS_SUBSCRIBED)
_UNSUBSCRIBED = encode_u16(STATUS_UNSUBSCRIBED)


class SubscriberSession(Session):
    """A Consumer's TCP door: subscribe and ack frames in, deliveries out."""

    role = "subscriber"

    def __init__(
        self,
        protocol: Connection,
        extended: bool,
        prefetch: int,
        patterns: bool = False,
        groups: bool = False,
        user: User | None = None,
        headers: bool = False,
    ) -> None:
        super().__init__(protocol)
        self._transport = protocol.transport
        self._write_now = direct_writer(protocol.transport)
        self._outgoing: list[bytes] = []  # deliveries of one pump, written at once
        self._outgoing_bytes = 0
        self._outgoing_count = 0  # deliveries in _outgoing
        # The topic and offset of a pump's first delivery, sampled for latency.
        self._first_outgoing: tuple[Topic, int] | None = None
        self._next_latency_sample = 0.0
        self.delivered_messages = 0
        self.delivered_bytes = 0
        self._acks_to_pump = False
        self.consumer = Consumer(
            self.broker,
            self,
            self.peer,
            self._send_delivery_choice(extended, headers),
            prefetch,
            user=user,
            patterns=patterns,
            groups=groups,
            deliver_run=self._send_run_choice(extended, headers),
        )
        # A subscriber that vanishes without a FIN is found by keepalive.
        keep_alive = getattr(self._transport, "setTcpKeepAlive", None)
        if keep_alive is not None:
            keep_alive(True)

    @property
    def window(self) -> DeliveryWindow:
        """Its deliveries in flight (its Consumer's window)."""
        return self.consumer.window

    @property
    def patterns(self) -> PatternSubscriptions | None:
        """Its pattern subscriptions, if it agreed to patterns in Hello."""
        return self.consumer.patterns

    # Decoder events.

    def subscribe_requested(self, topics: list[str], start: StartAt, offset: int) -> None:
        try:
            opening = self.consumer.subscribe(topics, start, offset, self._subscribed)
        except SubscribeRefused as refusal:
            self.refused(refusal.reason, refusal.detail)
            if refusal.close:
                self.protocol.close()
            return
        if opening is not None:
            # A networked store is still learning where these topics start and end.
            self.protocol.hold_input_until(opening, lambda: None)
        where = (
            f"offset {offset}" if start in (StartAt.FROM, StartAt.FROM64) else start.name.title()
        )
        log.debug(
            "{peer} subscribed to {topics} at {where}", peer=self.peer, topics=topics, where=where
        )

    def _subscribed(self) -> None:
        # The status goes out before any delivery the new cursors produce.
        self._transport.write(_SUBSCRIBED)

    def unsubscribe_requested(self, topics: list[str]) -> None:
        self.consumer.unsubscribe(topics)
        self._transport.write(_UNSUBSCRIBED)
        log.debug("{peer} unsubscribed from {topics}", peer=self.peer, topics=topics)

    def acked(self) -> None:
        if not self.consumer.ack():
            self.refused(ERR_NOTHING_TO_ACK)

    def nacked(self) -> None:
        if not self.consumer.nack():
            self.refused(ERR_NOTHING_TO_ACK)

    def acked_ids(self, delivery_ids: Sequence[int]) -> None:
        self.consumer.ack_ids(delivery_ids)
        self._acks_to_pump = True

    def nacked_id(self, delivery_id: int) -> None:
        self.consumer.nack_id(delivery_id)
        self._acks_to_pump = True

    # What its Consumer asks of it.

    def notify(self, error: str) -> None:
        self._transport.write(encode_error(error))

    def log_refusal(self, reason: str) -> None:
        self.protocol.log_refusal(reason)

    def abort(self) -> None:
        self._transport.abortConnection()

    # Hooks of the protocol.

    def end_of_read(self) -> None:
        self.consumer.keep_positions()  # what durable consumers acked in this read
        if self._acks_to_pump:
            # The slots this read's acks freed are filled at once, in one write.
            self._acks_to_pump = False
            self.consumer.pump()

    def output_full(self) -> None:
        self.consumer.output_full()

    def output_drained(self) -> None:
        self.consumer.output_drained()

    def permissions_changed(self, user: User) -> None:
        self.consumer.permissions_changed(user)

    def halt(self) -> None:
        self.consumer.halt()

    def close(self) -> None:
        self.consumer.close()

    # Deliveries.

    def _send_delivery_choice(self, extended: bool, headers: bool) -> Callable[[Delivery], None]:
        if headers:
            return self._send_headered_delivery
        return self._send_extended_delivery if extended else self._send_delivery

    def _send_run_choice(self, extended: bool, headers: bool) -> RunSender | None:
        if headers:
            return self._send_headered_run
        return self._send_extended_run if extended else None

    def _send_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        if not self._outgoing:
            self._first_outgoing = (delivery.topic, delivery.offset)
        self._outgoing += (delivery.topic.delivery_prefix, encode_u64(len(payload)), payload)
        self._outgoing_count += 1
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self.flush()

    def _send_extended_delivery(self, delivery: Delivery) -> None:
        payload = delivery.payload
        if not self._outgoing:
            self._first_outgoing = (delivery.topic, delivery.offset)
        self._outgoing += (
            delivery.topic.extended_prefix,
            encode_delivery_tail(delivery.offset, delivery.attempts, delivery.id, len(payload)),
            payload,
        )
        self._outgoing_count += 1
        self._outgoing_bytes += len(payload)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self.flush()

    def _send_headered_delivery(self, delivery: Delivery) -> None:
        """An extended delivery, after the frame of its headers if it has any
        (the client agreed headers)."""
        block = header_block(delivery.payload)
        if block:
            frame = _headers_frame(block)
            if frame:
                self._outgoing.append(frame)
        self._send_extended_delivery(delivery)

    def _send_headered_run(
        self, subscription: Subscription, offset: int, delivery_id: int, payloads: list[bytes]
    ) -> None:
        """`_send_extended_run`, unless a message of the run has headers a
        subscriber is shown (a message id is not): then one by one, each
        after the frame of its headers."""
        if Headered not in map(type, payloads):
            self._send_extended_run(subscription, offset, delivery_id, payloads)
            return
        frames = [
            _headers_frame(payload.headers) if type(payload) is Headered else b""
            for payload in payloads
        ]
        if not any(frames):
            self._send_extended_run(subscription, offset, delivery_id, payloads)
            return
        topic = subscription.topic
        if not self._outgoing:
            self._first_outgoing = (topic, offset)
        self._outgoing += encode_first_headered_deliveries(
            topic.extended_prefix, offset, delivery_id, payloads, frames
        )
        self._outgoing_count += len(payloads)
        self._outgoing_bytes += total_size(payloads)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self.flush()

    def _send_extended_run(
        self, subscription: Subscription, offset: int, delivery_id: int, payloads: list[bytes]
    ) -> None:
        """First deliveries of one subscription (attempt 1), offsets and ids
        counting up from those given: encoded by `encode_first_deliveries`
        in a few calls for the whole run."""
        topic = subscription.topic
        if not self._outgoing:
            self._first_outgoing = (topic, offset)
        prefix = topic.extended_prefix
        self._outgoing += encode_first_deliveries(prefix, offset, delivery_id, payloads)
        self._outgoing_count += len(payloads)
        self._outgoing_bytes += total_size(payloads)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the deliveries of this pump (also each FLUSH_BYTES of them)."""
        if self._outgoing:
            outgoing = self._outgoing
            count = self._outgoing_count
            size = self._outgoing_bytes
            self._outgoing = []
            self._outgoing_bytes = 0
            self._outgoing_count = 0
            self.delivered_messages += count
            self.delivered_bytes += size
            stats = self.broker.stats
            stats.delivered_messages += count
            stats.delivered_bytes += size
            first = self._first_outgoing
            self._first_outgoing = None
            now = self.broker.clock.seconds()
            if first is not None and now >= self._next_latency_sample:
                # Sampled, not observed per pump: a subscriber of the seed's
                # protocol pumps once per message, and the histogram locks.
                self._next_latency_sample = now + LATENCY_SAMPLE_SECONDS
                appended = first[0].appended_at(first[1])
                if appended is not None:
                    stats.latency.observe(max(0.0, now - appended))
            # May pause the window at once (output_full), between two chunks.
            self._write_now(b"".join(outgoing))


def _headers_frame(block: bytes) -> bytes:
    """The Headers frame a subscriber gets for a stored block: without its
    Msg-Id (b"" if nothing else is left). Those made lately are kept
    (messages repeat a few sets of headers), but not those of blocks with
    a message id first, which make every block unique."""
    frame = _HEADER_FRAMES.get(block)
    if frame is not None:
        return frame
    shown = without_message_id(block)
    frame = encode_headers_frame(shown) if shown else b""
    if block[2:9] != ID_PAIR_HEAD:
        if len(_HEADER_FRAMES) >= 256:
            _HEADER_FRAMES.clear()
        _HEADER_FRAMES[block] = frame
    return frame


_HEADER_FRAMES: dict[bytes, bytes] = {}
