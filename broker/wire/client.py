"""What a client decodes from the broker: statuses, Errors, deliveries,
confirms and the Hello's answer; the plain protocol does not tag them,
so the decoder tells them apart by what the client awaits.
"""

from __future__ import annotations

from typing import Protocol

from broker.wire.codes import (
    CONFIRMED,
    CONFIRMED_AT,
    DELIVERY,
    HEADERS,
    HELLO,
    REFUSED_AT,
    STATUS_ERROR,
    STATUS_SUBSCRIBED,
    STATUS_UNSUBSCRIBED,
    ProtocolError,
)
from broker.wire.decoder import DecoderState, FrameDecoder
from broker.wire.frames import (
    _CONFIRMED_AT_BODY,
    _CONFIRMED_BODY,
    _DELIVERY_TAIL,
    _REFUSED_AT_BODY,
    _U64,
    decode_hello,
    unpack_u16,
    unpack_u32,
)
from broker.wire.headers import with_headers


class ClientEvents(Protocol):
    """What a client-side decoder reports, in stream order."""

    def status_received(self, code: int) -> None: ...

    def error_received(self, text: str) -> None: ...

    def delivery_received(self, topic: str, payload: bytes) -> None: ...

    def protocol_error(self, reason: str) -> None: ...

    # Extensions.

    def hello_received(self, fields: dict) -> None: ...

    def confirmed(self, count: int, first_offset: int) -> None: ...

    def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None: ...

    def refused_at(self, sequence: int, text: str) -> None: ...

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None: ...


class ClientDecoder(FrameDecoder):
    """Decodes what the server sends a client: statuses and deliveries.

    The plain protocol does not tag them: a status is a bare u16 and a
    delivery starts with the u16 length of its topic. The decoder tells them
    apart with what the client knows: a status comes only while a request
    awaits its answer (an Error may come any time), and a delivery only for a
    topic of a length the client subscribed to. When both fit (a topic of one
    to three bytes while a request is pending), the next byte decides: after
    a status comes another u16 whose high byte is 0, while a topic name never
    starts with NUL. A status that is the last byte received is taken as one.
    """

    def __init__(self, events: ClientEvents, max_payload: int) -> None:
        super().__init__()
        self.events = events
        self._max_payload = max_payload
        # Kept by the client protocol: requests sent and not yet answered.
        self.pending_requests = 0
        self.topic_lengths: dict[int, int] = {}
        self._topic = ""
        self._tail: tuple[int, int, int] = (0, 0, 0)
        self._refused_sequence = 0
        self.tagged = False
        """True once extensions are agreed: every frame then starts with its kind."""
        self._headers: bytes | None = None
        """A header block for the next delivery."""
        self._goto(self._head, 2)

    def expect_hello(self) -> None:
        """A Hello was sent: its answer (or the seed's Error) comes first."""
        self._goto(self._hello_head, 2)

    def expect_topic(self, topic: str) -> None:
        """A delivery of `topic` may come from now on."""
        length = len(topic.encode("utf-8"))
        self.topic_lengths[length] = self.topic_lengths.get(length, 0) + 1

    def forget_topic(self, topic: str) -> None:
        """No delivery of `topic` comes any more."""
        length = len(topic.encode("utf-8"))
        left = self.topic_lengths.get(length, 0) - 1
        if left > 0:
            self.topic_lengths[length] = left
        else:
            self.topic_lengths.pop(length, None)

    def _head(self, data: bytes, pos: int) -> int:
        (value,) = unpack_u16(data, pos)
        pos += 2
        if self._is_status(value, data, pos):
            if value == STATUS_ERROR:
                self._goto(self._error_length, 2)
            else:
                self.events.status_received(value)
        elif value in self.topic_lengths:
            self._goto(self._delivery_topic, value)
        else:
            self.events.protocol_error(f"unexpected u16 {value} from the server")
            self._goto(self._ignore_rest, 1)
        return pos

    def _is_status(self, value: int, data: bytes, pos: int) -> bool:
        could_be_status = value == STATUS_ERROR or (
            self.pending_requests > 0 and value in (STATUS_SUBSCRIBED, STATUS_UNSUBSCRIBED)
        )
        if not could_be_status:
            return False
        if value not in self.topic_lengths:
            return True
        return pos >= len(data) or data[pos] == 0

    def _error_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u16(data, pos)
        if length == 0:
            self._error_done("")
        else:
            self._goto(self._error_text, length)
        return pos + 2

    def _error_text(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._error_done(data[pos:end].decode("utf-8", "replace"))
        return end

    def _error_done(self, text: str) -> None:
        self._goto(self._after_frame, 2)
        self.events.error_received(text)

    @property
    def _after_frame(self) -> DecoderState:
        return self._tagged_head if self.tagged else self._head

    # Extensions: the Hello answer, then tagged frames.

    def _hello_head(self, data: bytes, pos: int) -> int:
        (code,) = unpack_u16(data, pos)
        if code == HELLO:
            self._goto(self._hello_length, 4)
        elif code == STATUS_ERROR:
            # The seed's broker: "unknown action". The client goes on without extensions.
            self._goto(self._error_length, 2)
        else:
            self.events.protocol_error(f"unexpected u16 {code} in answer to Hello")
            self._goto(self._ignore_rest, 1)
        return pos + 2

    def _hello_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u32(data, pos)
        if length > self._max_payload:
            self.events.protocol_error("oversized Hello answer")
            self._goto(self._ignore_rest, 1)
        else:
            self._goto(self._hello_body, length)
        return pos + 4

    def _hello_body(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self.tagged = True
        self._goto(self._tagged_head, 2)
        try:
            fields = decode_hello(data[pos:end])
        except ProtocolError as error:
            self.events.protocol_error(str(error))
            self._goto(self._ignore_rest, 1)
            return end
        self.events.hello_received(fields)
        return end

    def _tagged_head(self, data: bytes, pos: int) -> int:
        (code,) = unpack_u16(data, pos)
        if code == DELIVERY:
            # Fast path: the whole delivery is here.
            if len(data) >= pos + 4:
                topic_end = pos + 4 + unpack_u16(data, pos + 2)[0]
                if len(data) >= topic_end + 18:
                    offset, attempt, delivery_id, size = _DELIVERY_TAIL.unpack_from(data, topic_end)
                    end = topic_end + 18 + size
                    if len(data) >= end and size <= self._max_payload:
                        payload = data[topic_end + 18 : end]
                        if self._headers is not None:
                            payload = self._with_headers(payload)
                        self.events.extended_delivery_received(
                            data[pos + 4 : topic_end].decode("utf-8", "replace"),
                            offset,
                            attempt,
                            delivery_id,
                            payload,
                        )
                        return end
            self._goto(self._tagged_topic_length, 2)
        elif code == HEADERS:
            # Fast path: the whole block is here; the delivery after it next.
            if len(data) >= pos + 6:
                (length,) = unpack_u32(data, pos + 2)
                if 0 < length <= self._max_payload and len(data) >= pos + 6 + length:
                    self._headers = data[pos + 6 : pos + 6 + length]
                    return pos + 6 + length
            self._goto(self._headers_length, 4)
        elif code == CONFIRMED:
            self._goto(self._confirmed, 12)
        elif code == CONFIRMED_AT:
            self._goto(self._confirmed_at, 20)
        elif code == REFUSED_AT:
            self._goto(self._refused_at_head, 10)
        elif code == STATUS_ERROR:
            self._goto(self._error_length, 2)
        elif code in (STATUS_SUBSCRIBED, STATUS_UNSUBSCRIBED):
            self.events.status_received(code)
        else:
            self.events.protocol_error(f"unexpected frame {code} from the server")
            self._goto(self._ignore_rest, 1)
        return pos + 2

    def _confirmed(self, data: bytes, pos: int) -> int:
        count, first = _CONFIRMED_BODY.unpack_from(data, pos)
        self._goto(self._tagged_head, 2)
        self.events.confirmed(count, first)
        return pos + 12

    def _confirmed_at(self, data: bytes, pos: int) -> int:
        sequence, count, first = _CONFIRMED_AT_BODY.unpack_from(data, pos)
        self._goto(self._tagged_head, 2)
        self.events.confirmed_at(sequence, count, first)
        return pos + 20

    def _refused_at_head(self, data: bytes, pos: int) -> int:
        sequence, length = _REFUSED_AT_BODY.unpack_from(data, pos)
        self._refused_sequence = sequence
        if length == 0:
            self._goto(self._tagged_head, 2)
            self.events.refused_at(sequence, "")
        else:
            self._goto(self._refused_at_text, length)
        return pos + 10

    def _refused_at_text(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._goto(self._tagged_head, 2)
        self.events.refused_at(self._refused_sequence, data[pos:end].decode("utf-8", "replace"))
        return end

    def _tagged_topic_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u16(data, pos)
        self._topic = ""
        if length:
            self._goto(self._tagged_topic, length)
        else:
            self._goto(self._tagged_tail, 18)
        return pos + 2

    def _tagged_topic(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._topic = data[pos:end].decode("utf-8", "replace")
        self._goto(self._tagged_tail, 18)
        return end

    def _tagged_tail(self, data: bytes, pos: int) -> int:
        offset, attempt, delivery_id, size = _DELIVERY_TAIL.unpack_from(data, pos)
        self._tail = (offset, attempt, delivery_id)
        if size > self._max_payload:
            self.events.protocol_error(f"delivery of {size} bytes is over the client's limit")
            self._goto(self._ignore_rest, 1)
        elif size == 0:
            self._tagged_delivery_done(b"")
        else:
            self._goto(self._tagged_data, size)
        return pos + 18

    def _tagged_data(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._tagged_delivery_done(data[pos:end])
        return end

    def _headers_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u32(data, pos)
        if length > self._max_payload:
            self.events.protocol_error(f"headers of {length} bytes are over the client's limit")
            self._goto(self._ignore_rest, 1)
        elif length == 0:
            self._goto(self._tagged_head, 2)
        else:
            self._goto(self._headers_block, length)
        return pos + 4

    def _headers_block(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._headers = data[pos:end]
        self._goto(self._tagged_head, 2)
        return end

    def _with_headers(self, payload: bytes) -> bytes:
        block = self._headers
        self._headers = None
        return with_headers(payload, block) if block is not None else payload

    def _tagged_delivery_done(self, payload: bytes) -> None:
        self._goto(self._tagged_head, 2)
        if self._headers is not None:
            payload = self._with_headers(payload)
        offset, attempt, delivery_id = self._tail
        self.events.extended_delivery_received(self._topic, offset, attempt, delivery_id, payload)

    def _delivery_topic(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._topic = data[pos:end].decode("utf-8", "replace")
        self._goto(self._delivery_length, 8)
        return end

    def _delivery_length(self, data: bytes, pos: int) -> int:
        (size,) = _U64.unpack_from(data, pos)
        if size > self._max_payload:
            self.events.protocol_error(f"delivery of {size} bytes is over the client's limit")
            self._goto(self._ignore_rest, 1)
        elif size == 0:
            self._goto(self._head, 2)
            self.events.delivery_received(self._topic, b"")
        else:
            self._goto(self._delivery_data, size)
        return pos + 8

    def _delivery_data(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._goto(self._head, 2)
        self.events.delivery_received(self._topic, data[pos:end])
        return end

    def _ignore_rest(self, data: bytes, pos: int) -> int:
        # After a protocol error the stream cannot be trusted; the client closes.
        return len(data)
