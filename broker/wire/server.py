"""What a broker decodes from a client: the first action, subscribes,
publishes (a read's run of one topic's publishes as one call), acks (a
run of acks by id found with byte-string operations, not a loop per ack).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol

from broker.wire.codes import (
    ACK,
    ACK_ID,
    ACTION_PUBLISH,
    ACTION_SUBSCRIBE,
    ACTION_UNSUBSCRIBE,
    ERR_EMPTY_TOPIC_DATA,
    ERR_INVALID_HELLO,
    ERR_INVALID_START,
    ERR_MESSAGE_TOO_LARGE,
    ERR_NO_TOPIC_PREFIX,
    ERR_TOPIC_LIST_TOO_LARGE,
    HEADERS,
    HELLO,
    NACK,
    NACK_ID,
    TOPIC_PREFIX,
    ProtocolError,
    StartAt,
)
from broker.wire.decoder import DecoderState, FrameDecoder
from broker.wire.frames import unpack_u16, unpack_u32, unpack_u64
from broker.wire.headers import (
    ERR_HEADERS_TOO_LARGE,
    ERR_INVALID_HEADERS,
    LONE_ID_HEAD,
    is_header_block,
    with_headers,
)
from broker.wire.topic_names import decode_topic_list, decode_topic_name


class ServerEvents(Protocol):
    """What a server-side decoder reports, in stream order."""

    def unknown_action(self, code: int) -> None: ...

    def became_publisher(self) -> None: ...

    def became_subscriber(self) -> None: ...

    def subscribe_requested(self, topics: list[str], start: StartAt, offset: int) -> None: ...

    def unsubscribe_requested(self, topics: list[str]) -> None: ...

    def acked(self) -> None: ...

    def nacked(self) -> None: ...

    def hello_requested(self, payload: bytes) -> None: ...

    def acked_ids(self, delivery_ids: Sequence[int]) -> None: ...

    def nacked_id(self, delivery_id: int) -> None: ...

    def published(self, topic: str, payloads: list[bytes]) -> None:
        """Publishes to `topic`, in order: a run of whole frames of one read
        comes as one call (the list is the receiver's to keep)."""

    def refused(self, reason: str, detail: str | None = None) -> None: ...


_VALID_STARTS = frozenset(StartAt)


class _Role(IntEnum):
    NEW = 0
    SUBSCRIBER = 1
    PUBLISHER = 2


# Acks by id (u16 ACK_ID | u32 id) come in runs, one per delivery: a run is
# found and decoded with byte-string operations, not a loop per ack.
_ACK_RECORD = 6
_ACK_RUN_PROBE = 16
_MAX_ACK_RUN = 4096
_ACK_CODE_LOW = bytes([ACK_ID])


def _leading_acks(data: bytes, pos: int) -> int:
    """How many whole ACK_ID frames follow each other from `pos` (one there,
    at least). Looks at a few first, so that acks mixed with other frames
    cost no more than they bring."""
    available = min((len(data) - pos) // _ACK_RECORD, _MAX_ACK_RUN)
    count = _acks_among(data, pos, min(available, _ACK_RUN_PROBE))
    if count == _ACK_RUN_PROBE and available > count:
        count = _acks_among(data, pos, available)
    return count


def _acks_among(data: bytes, pos: int, records: int) -> int:
    end = pos + _ACK_RECORD * records
    high = data[pos:end:_ACK_RECORD]
    low = data[pos + 1 : end : _ACK_RECORD]
    if high == bytes(records) and low == _ACK_CODE_LOW * records:
        return records  # all acks: compared whole (lstrip looks byte by byte)
    return records - max(len(high.lstrip(b"\0")), len(low.lstrip(_ACK_CODE_LOW)))


def _ack_ids(data: bytes, pos: int, count: int) -> Sequence[int]:
    """The ids of `count` ACK_ID frames from `pos`: their four id bytes
    gathered by strided slices. Ids that count up by one (a consumer acking
    in order, the usual case) come as a `range`, found by comparing the
    columns whole; any others are unpacked in one call."""
    end = pos + _ACK_RECORD * count
    columns = [data[pos + 2 + byte : end : _ACK_RECORD] for byte in range(4)]
    (first,) = unpack_u32(data, pos + 2)
    if first + count <= 1 << 32 and _counting_up(columns, first, count):
        return range(first, first + count)
    ids = bytearray(4 * count)
    for byte in range(4):
        ids[byte::4] = columns[byte]
    return struct.unpack(f">{count}I", ids)


_LOW_BYTES = bytes(range(256))


def _counting_up(columns: list[bytes], first: int, count: int) -> bool:
    """Whether big-endian u32s given as byte columns (high byte first) are
    first, first + 1, ...: in stretches where only the low byte changes, the
    low column is a slice of 0..255 and the others one byte repeated."""
    index = 0
    while index < count:
        value = first + index
        low = value & 0xFF
        length = min(256 - low, count - index)
        stop = index + length
        if columns[3][index:stop] != _LOW_BYTES[low : low + length]:
            return False
        for byte in range(3):
            mark = (value >> (8 * (3 - byte))) & 0xFF
            if columns[byte][index:stop] != _LOW_BYTES[mark : mark + 1] * length:
                return False
        index = stop
    return True


def _frames_like(data: bytes, pos: int, frame_head: bytes, stride: int) -> int:
    """How many whole frames from `pos` on are `stride` bytes long and start
    with `frame_head` (u16 length, topic, u32 size), found column by column
    with byte-string operations; the size's bytes first, most likely to differ."""
    count = (len(data) - pos) // stride
    for column in range(len(frame_head) - 1, -1, -1):
        if count == 0:
            break
        column_bytes = data[pos + column : pos + count * stride : stride]
        mark = frame_head[column : column + 1]
        if column_bytes != mark * count:  # the usual case compared whole: lstrip looks byte by byte
            count -= len(column_bytes.lstrip(mark))
    return count


class ServerDecoder(FrameDecoder):
    """Decodes what a client sends: the first action, then its role's loop.

    Bad content is reported with `refused` after the whole frame it belongs to
    has been consumed (or while its oversized part is being skipped), so the
    stream stays in step whatever the client sends.
    """

    _TOPIC_CACHE_SIZE = 1024

    def __init__(self, events: ServerEvents, max_payload: int) -> None:
        super().__init__()
        self.events = events
        """Who hears of decoded frames: the protocol, then its role's session."""
        self._max_payload = max_payload
        self._role = _Role.NEW
        self._topics_cache: dict[bytes, str] = {}
        # The request being decoded.
        self._unsubscribing = False
        self._topics_payload: bytes | None = None
        self._problem: str | None = None
        self._start = 0
        self._topic: str | None = None
        self._ack_code = ACK_ID
        self.extended = False
        """Set once Hello is agreed: acks then name their delivery id."""
        self.max_header_bytes = 0
        """Set once Hello agreed headers: a publish may then carry a header
        block of at most this many bytes (0: headers not agreed)."""
        self._headers: bytes | None = None
        self._headers_refused = False
        self._blocks: dict[bytes, None] = {}
        """Header blocks seen lately and found valid (they repeat)."""
        self._goto(self._action, 2)

    @property
    def role(self) -> str:
        """'new', 'subscriber' or 'publisher'."""
        return self._role.name.lower()

    # First action and subscriber loop.

    def _action(self, data: bytes, pos: int) -> int:
        (code,) = unpack_u16(data, pos)
        role = self._role
        if role is _Role.SUBSCRIBER and self.extended:
            if code == ACK_ID and len(data) >= pos + 6:
                # Fast path: a run of whole acks, the most frequent frames of all,
                # decoded together and reported together.
                count = _leading_acks(data, pos)
                self.events.acked_ids(_ack_ids(data, pos, count))
                return pos + 6 * count
            if code in (ACK_ID, NACK_ID):
                self._ack_code = code
                self._goto(self._ack_id, 4)
                return pos + 2
            if code in (ACK, NACK):
                self.events.unknown_action(code)
                return pos + 2
        if role is _Role.SUBSCRIBER and code == ACK:
            self.events.acked()
        elif role is _Role.SUBSCRIBER and code == NACK:
            self.events.nacked()
        elif code == HELLO and role is _Role.NEW and not self.extended:
            self._goto(self._hello_length, 4)
        elif code == ACTION_SUBSCRIBE and role is not _Role.PUBLISHER:
            self._unsubscribing = False
            self._goto(self._topics_length, 4)
            if role is _Role.NEW:
                self._role = _Role.SUBSCRIBER
                self.events.became_subscriber()
        elif code == ACTION_UNSUBSCRIBE and role is _Role.SUBSCRIBER:
            self._unsubscribing = True
            self._goto(self._topics_length, 4)
        elif code == ACTION_PUBLISH and role is _Role.NEW:
            self._role = _Role.PUBLISHER
            self._goto(self._publish_topic_length, 2)
            self.events.became_publisher()
        else:
            self.events.unknown_action(code)
        return pos + 2

    def _ack_id(self, data: bytes, pos: int) -> int:
        (delivery_id,) = unpack_u32(data, pos)
        self._goto(self._action, 2)
        if self._ack_code == ACK_ID:
            self.events.acked_ids([delivery_id])
        else:
            self.events.nacked_id(delivery_id)
        return pos + 4

    def _hello_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u32(data, pos)
        if length > self._max_payload:
            self.events.refused(ERR_INVALID_HELLO)
            self._skip(length, self._action, 2)
        elif length == 0:
            self._goto(self._action, 2)
            self.events.refused(ERR_INVALID_HELLO)
        else:
            self._goto(self._hello, length)
        return pos + 4

    def _hello(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._goto(self._action, 2)
        self.events.hello_requested(data[pos:end])
        return end

    def _topics_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u32(data, pos)
        pos += 4
        self._problem = None
        self._topics_payload = None
        if length == 0:
            # The seed answers at once and reads no start-at after it.
            self._goto(self._action, 2)
            self.events.refused(ERR_EMPTY_TOPIC_DATA)
        elif length > self._max_payload:
            self._problem = ERR_TOPIC_LIST_TOO_LARGE
            self._skip(length, *self._after_topics())
        else:
            self._goto(self._topics, length)
        return pos

    def _after_topics(self) -> tuple[DecoderState, int]:
        if self._unsubscribing:
            return self._request_done, 0
        return self._start_at, 2

    def _topics(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._topics_payload = data[pos:end]
        if self._unsubscribing:
            self._finish_request()
        else:
            self._goto(self._start_at, 2)
        return end

    def _request_done(self, data: bytes, pos: int) -> int:
        # Reached only after skipping an oversized unsubscribe payload.
        self._finish_request()
        return pos

    def _start_at(self, data: bytes, pos: int) -> int:
        (self._start,) = unpack_u16(data, pos)
        if self._start == StartAt.FROM:
            self._goto(self._from_offset, 2)
        elif self._start == StartAt.FROM64:
            self._goto(self._from64_offset, 8)
        else:
            self._finish_request(0)
        return pos + 2

    def _from_offset(self, data: bytes, pos: int) -> int:
        (offset,) = unpack_u16(data, pos)
        self._finish_request(offset)
        return pos + 2

    def _from64_offset(self, data: bytes, pos: int) -> int:
        (offset,) = unpack_u64(data, pos)
        self._finish_request(offset)
        return pos + 8

    def _finish_request(self, offset: int = 0) -> None:
        self._goto(self._action, 2)
        if self._problem is not None:
            self.events.refused(self._problem)
            return
        assert self._topics_payload is not None
        try:
            topics = decode_topic_list(self._topics_payload)
        except ProtocolError as error:
            self.events.refused(str(error), error.detail)
            return
        if self._unsubscribing:
            self.events.unsubscribe_requested(topics)
        elif self._start in _VALID_STARTS:
            self.events.subscribe_requested(topics, StartAt(self._start), offset)
        else:
            self.events.refused(ERR_INVALID_START)

    # Publisher loop.

    def _publish_topic_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u16(data, pos)
        if length == 0:
            # A u32 topic length (the seed README's form) reads as a zero u16
            # followed by the real u16 length; the zero is skipped.
            return pos + 2
        if length == HEADERS and self.max_header_bytes:
            # Headers for the publish frame that follows (no topic length is
            # that long). Fast path: such pairs whole, to one topic, as a run.
            after = self._headered_run(data, pos)
            if after > pos:
                return after
            self._goto(self._headers_length, 4)
            return pos + 2
        # Fast path: the whole frame is here, and perhaps more to the same
        # topic after it, reported as one run.
        topic_end = pos + 2 + length
        end = len(data)
        if end >= topic_end + 4:
            (size,) = unpack_u32(data, topic_end)
            frame_end = topic_end + 4 + size
            if size <= self._max_payload and end >= frame_end:
                topic = self._publish_topic(data[pos + 2 : topic_end])
                if topic is not None:
                    payloads = [data[topic_end + 4 : frame_end]]
                    if frame_end < end:  # more in this read: perhaps to the same topic
                        frame_end = self._rest_of_run(data, pos, topic_end + 4, frame_end, payloads)
                    self.events.published(topic, payloads)
                return frame_end
        self._goto(self._publish_topic_name, length)
        return pos + 2

    def _rest_of_run(
        self, data: bytes, start: int, payload_at: int, pos: int, payloads: list[bytes]
    ) -> int:
        """Add to `payloads` the whole frames from `pos` on that repeat the head
        (u16 length, topic) of the frame at `start`; where they end."""
        frame_head = data[start:payload_at]  # its u16 length, topic and u32 size
        head = frame_head[:-4]  # the run's mark
        end = len(data)
        max_payload = self._max_payload
        # Frames of the same size after it are found and cut at once.
        stride = pos - start
        if end - pos >= stride:
            same = _frames_like(data, pos, frame_head, stride)
            if same:
                size = stride - len(frame_head)
                first = pos + len(frame_head)
                last = first + same * stride
                payloads += [data[at : at + size] for at in range(first, last, stride)]
                pos += same * stride
        while data.startswith(head, pos):
            size_at = pos + len(head)
            if end < size_at + 4:
                break
            (size,) = unpack_u32(data, size_at)
            frame_end = size_at + 4 + size
            if size > max_payload or end < frame_end:
                break
            payloads.append(data[size_at + 4 : frame_end])
            pos = frame_end
        return pos

    def _headered_run(self, data: bytes, pos: int) -> int:
        """Whole (headers, publish) pairs from `pos` to one valid topic,
        reported as one run; where they end (`pos` if none was whole: the
        slow path then decodes, and refuses what it must, frame by frame).
        A pair whose headers and topic repeat the last one's bytes is cut
        without a second look."""
        end = len(data)
        payloads: list[bytes] = []
        topic: str | None = None
        first_raw = b""
        head = b""  # the last pair's headers frame, topic length and topic
        block = b""
        max_header_bytes = self.max_header_bytes
        max_payload = self._max_payload
        while pos + 6 <= end:
            if head and data.startswith(head, pos):
                topic_end = pos + len(head)
            else:
                if unpack_u16(data, pos)[0] != HEADERS:
                    break
                (block_size,) = unpack_u32(data, pos + 2)
                block_end = pos + 6 + block_size
                if block_size == 0 or block_size > max_header_bytes or block_end + 2 > end:
                    break
                (length,) = unpack_u16(data, block_end)
                topic_end = block_end + 2 + length
                if length == 0 or length == HEADERS or topic_end + 4 > end:
                    break
                raw = data[block_end + 2 : topic_end]
                if topic is None:
                    topic = self._valid_topic(raw)
                    if topic is None:
                        break
                    first_raw = raw
                elif raw != first_raw:
                    break
                valid = self._valid_block(data[pos + 6 : block_end])
                if valid is None:
                    break
                if valid == block:  # twice in a row: perhaps every time
                    head = data[pos:topic_end]
                block = valid
            if topic_end + 4 > end:
                break
            (size,) = unpack_u32(data, topic_end)
            frame_end = topic_end + 4 + size
            if size == 0 or size > max_payload or frame_end > end:
                break
            payloads.append(with_headers(data[topic_end + 4 : frame_end], block))
            pos = frame_end
        if payloads:
            assert topic is not None
            self.events.published(topic, payloads)
        return pos

    def _valid_topic(self, raw: bytes) -> str | None:
        """The topic a publish names, or None (refusing nothing) if it is bad."""
        topic = self._topics_cache.get(raw)
        if topic is not None:
            return topic
        if not raw.startswith(TOPIC_PREFIX):
            return None
        try:
            decode_topic_name(raw[len(TOPIC_PREFIX) :])
        except ProtocolError:
            return None
        return self._publish_topic(raw)

    def _valid_block(self, block: bytes) -> bytes | None:
        """`block` if it is a header block (those seen lately are known)."""
        known = self._blocks
        if block in known:
            return block
        if block[:9] == LONE_ID_HEAD and len(block) == 11 + unpack_u16(block, 9)[0]:
            # A message id alone, as the clients send it: unique, not kept.
            return block if block[11:].isascii() else None
        if not is_header_block(block):
            return None
        if len(known) >= self._TOPIC_CACHE_SIZE:
            known.clear()
        known[block] = None
        return block

    def _headers_length(self, data: bytes, pos: int) -> int:
        (length,) = unpack_u32(data, pos)
        if length > self.max_header_bytes:
            self._headers_refused = True
            self.events.refused(ERR_HEADERS_TOO_LARGE)
            self._skip(length, self._headered_topic_length, 2)
        elif length == 0:
            self._goto(self._headered_topic_length, 2)
        else:
            self._goto(self._headers_block, length)
        return pos + 4

    def _headers_block(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        block = self._valid_block(data[pos:end])
        if block is None:
            self._headers_refused = True
            self.events.refused(ERR_INVALID_HEADERS)
        else:
            self._headers = block
        self._goto(self._headered_topic_length, 2)
        return end

    def _headered_topic_length(self, data: bytes, pos: int) -> int:
        # The publish frame the headers belong to, through the slow path.
        (length,) = unpack_u16(data, pos)
        if length == 0:
            return pos + 2
        self._goto(self._publish_topic_name, length)
        return pos + 2

    def _publish_topic_name(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        if self._headers_refused:
            self._topic = None  # refused already, once: the frame is consumed
        else:
            self._topic = self._publish_topic(data[pos:end])
        self._goto(self._publish_data_length, 4)
        return end

    def _publish_topic(self, raw: bytes) -> str | None:
        """The topic a publish frame names, or None after refusing it."""
        topic = self._topics_cache.get(raw)
        if topic is not None:
            return topic
        try:
            if not raw.startswith(TOPIC_PREFIX):
                raise ProtocolError(ERR_NO_TOPIC_PREFIX)
            topic = decode_topic_name(raw[len(TOPIC_PREFIX) :])
        except ProtocolError as error:
            self.events.refused(str(error))
            return None
        if len(self._topics_cache) >= self._TOPIC_CACHE_SIZE:
            self._topics_cache.clear()
        self._topics_cache[raw] = topic
        return topic

    def _publish_data_length(self, data: bytes, pos: int) -> int:
        (size,) = unpack_u32(data, pos)
        pos += 4
        if size > self._max_payload:
            if self._topic is not None:
                self.events.refused(ERR_MESSAGE_TOO_LARGE)
            self._headers = None
            self._headers_refused = False
            self._skip(size, self._publish_topic_length, 2)
        elif size == 0:
            # Reported all the same: the protocol decides (the seed ignores it).
            self._goto(self._publish_topic_length, 2)
            self._message(b"")
        else:
            self._goto(self._publish_data, size)
        return pos

    def _publish_data(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._goto(self._publish_topic_length, 2)
        self._message(data[pos:end])
        return end

    def _message(self, payload: bytes) -> None:
        """A publish frame decoded whole (not in the fast path): reported,
        with the headers before it, unless it was refused already."""
        headers = self._headers
        if headers is not None:
            self._headers = None
            payload = with_headers(payload, headers)
        if self._headers_refused:
            self._headers_refused = False
        elif self._topic is not None:
            self.events.published(self._topic, [payload])
