"""The bench's own subscriber and publisher: raw protocols that check order
and integrity and time each delivery."""

from __future__ import annotations

import struct
import sys
import time
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from broker import wire
from broker.bench.payloads import (
    ACK_FRAME,
    HEADER,
    READ_SIZE,
    Histogram,
    make_payload,
    payload_body,
)
from broker.server.transport import IStreamTransport
from broker.wire import ClientDecoder, ClientEvents, StartAt


class BenchSubscriber(Protocol):
    """A subscriber that acks everything and checks what it gets; with a
    prefetch over 1 it uses the extensions (many in flight, acks by id).
    Acks of one read go out in one write."""

    transport: IStreamTransport

    def __init__(
        self,
        topic: str,
        expected: int,
        size: int,
        prefetch: int = 1,
        start: StartAt = StartAt.CURRENT,
        until: int | None = None,
        timed: bool = True,
        group: GroupTally | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        """With a group: a member; the group's tally counts what all get."""
        self.expected = expected
        self.size = size
        self.prefetch = prefetch
        self.start = start
        self.until = until  # if set: done when this sequence number arrives
        self.timed = timed
        self.decoder = ClientDecoder(cast(ClientEvents, self), 1 << 30)
        self.decoder.expect_topic(topic)
        self.subscribed: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.received = 0
        self.next_sequence = 0
        self.out_of_order = 0
        self.corrupt = 0
        self.latencies = Histogram()
        self.last_at = 0.0
        self._acks: list[bytes] = []

    def connectionMade(self) -> None:
        # Small reads keep the window moving: read 64 KiB (a whole prefetch
        # window) at once and ack it all at the end, and broker and bench take
        # turns; read a few deliveries at a time, and the broker refills the
        # window while the bench is still working. (Measured: prefetch 256,
        # 93k msg/s with 64 KiB reads, 143-155k with 4 KiB.)
        self.transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]  # a FileDescriptor
        if self.prefetch > 1 or self.group is not None:
            self.decoder.expect_hello()
            self.transport.write(
                wire.encode_client_hello(prefetch=self.prefetch, groups=self.group is not None)
            )
        else:
            self._subscribe()

    def hello_received(self, fields: dict) -> None:
        self._subscribe()

    def _subscribe(self) -> None:
        self.decoder.pending_requests = 1
        name = self.topic if self.group is None else f"$share/bench/{self.topic}"
        self.transport.write(wire.encode_subscribe([name], self.start))

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)
        if self._acks:
            self.transport.write(b"".join(self._acks))
            self._acks.clear()

    def status_received(self, code: int) -> None:
        self.decoder.pending_requests = 0
        if not self.subscribed.called:
            self.subscribed.callback(None)

    def error_received(self, text: str) -> None:
        print(f"broker error: {text}", file=sys.stderr)

    def protocol_error(self, reason: str) -> None:
        print(f"protocol error: {reason}", file=sys.stderr)
        self.transport.loseConnection()

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._received(payload, ACK_FRAME)

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self._received(payload, wire.encode_ack_id(delivery_id))

    def _received(self, payload: bytes, ack: bytes) -> None:
        now = time.perf_counter()
        self._acks.append(ack)
        sequence, sent = HEADER.unpack_from(payload)
        if payload[HEADER.size :] != payload_body(sequence, self.size):
            self.corrupt += 1
        if self.group is not None:
            # Members interleave: the group checks each message came once.
            self.received += 1
            self.last_at = now
            if self.timed:
                self.latencies.record(now - sent)
            self.group.record(sequence, now)
            return
        if self.until is not None:
            if sequence == self.until and not self.done.called:
                self.last_at = now
                self.done.callback(None)
            return
        if sequence != self.next_sequence:
            self.out_of_order += 1
        self.next_sequence = sequence + 1
        if self.timed:
            self.latencies.record(now - sent)
        self.received += 1
        self.last_at = now
        if self.received == self.expected and not self.done.called:
            self.done.callback(None)


class GroupTally:
    """What the members of one group received between them: each message
    once, `expected` in all."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = bytearray(expected)
        self.duplicates = 0
        self.received = 0
        self.last_at = 0.0
        self.done: Deferred[None] = Deferred()

    def record(self, sequence: int, now: float) -> None:
        if 0 <= sequence < self.expected and not self.seen[sequence]:
            self.seen[sequence] = 1
            self.received += 1
        else:
            self.duplicates += 1
        self.last_at = now
        if self.received == self.expected and not self.done.called:
            self.done.callback(None)


class BenchPublisher(Protocol):
    """Publishes frames it builds in bulk; with confirms, counts what the
    broker confirmed."""

    transport: IStreamTransport

    def __init__(self, confirms: bool = False, expected: int = 0) -> None:
        self.confirms = confirms
        self.expected = expected
        self.confirmed_count = 0
        self.refused = 0
        self.all_confirmed: Deferred[None] = Deferred()
        self.ready: Deferred[None] = Deferred()
        self.decoder = ClientDecoder(cast(ClientEvents, self), 1 << 20)

    def connectionMade(self) -> None:
        if self.confirms:
            self.decoder.expect_hello()
            self.transport.write(wire.encode_client_hello(confirms=True))
        else:
            self.hello_received({})

    def hello_received(self, fields: dict) -> None:
        self.transport.write(wire.encode_u16(wire.ACTION_PUBLISH))
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def publish_range(self, topic: str, start: int, stop: int, size: int) -> None:
        self.transport.write(publish_frames(topic, start, stop, size))

    def confirmed(self, count: int, first_offset: int) -> None:
        self.confirmed_count += count
        self._check_done()

    def error_received(self, text: str) -> None:
        print(f"broker error: {text}", file=sys.stderr)
        self.refused += 1
        self._check_done()

    def protocol_error(self, reason: str) -> None:
        print(f"protocol error: {reason}", file=sys.stderr)
        self.transport.loseConnection()

    def _check_done(self) -> None:
        if self.confirmed_count + self.refused >= self.expected and not self.all_confirmed.called:
            self.all_confirmed.callback(None)


def publish_frames(topic: str, start: int, stop: int, size: int) -> bytes:
    """Publish frames for sequence numbers [start, stop), stamped now."""
    prefix = wire.publish_prefix(topic)
    length = struct.pack(">I", size)
    now = time.perf_counter()
    return b"".join(prefix + length + make_payload(n, size, now) for n in range(start, stop))
