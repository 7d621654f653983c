"""The seed's wire protocol: codes, encoders and incremental decoders.

Pure code: no sockets, no Twisted, no topics registry. Integers are big-endian
and unsigned. Each decoder keeps one buffer and walks it with an offset, so a
frame split across reads in any way, or many frames in one read, decode the
same, and no frame costs a copy of the buffer. A length that exceeds its
limit is skipped as it arrives, never buffered.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Protocol, cast

from broker import untrusted_json

# Actions, client -> server.
ACTION_SUBSCRIBE = 1
ACTION_UNSUBSCRIBE = 2
ACTION_PUBLISH = 3
ACK = 4
NACK = 5

# Statuses, server -> client.
STATUS_SUBSCRIBED = 1
STATUS_UNSUBSCRIBED = 2
STATUS_ERROR = 3

# Extensions, negotiated by Hello; a client that never sends it never sees them.
HELLO = 16
"""Client -> server as the first action, and the server's answer: u16 | u32 n | JSON."""
CONFIRMED = 17
"""Server -> publisher: u16 | u32 count | u64 first offset."""
DELIVERY = 18
"""Server -> subscriber: u16 | u16 t | topic | u64 offset | u16 attempt | u32 id | u32 n | data."""
ACK_ID = 20
"""Subscriber -> server: u16 | u32 delivery id."""
NACK_ID = 21
"""Subscriber -> server: u16 | u32 delivery id."""
CONFIRMED_AT = 22
"""Server -> publisher with "confirm_order": "topic": u16 | u64 sequence |
u32 count | u64 first offset (publishes sequence .. sequence + count - 1)."""
REFUSED_AT = 23
"""Server -> publisher with "confirm_order": "topic": u16 | u64 sequence |
u16 n | text (publish `sequence` refused)."""
CONFIRM_ORDER_TOPIC = "topic"
"""Hello's "confirm_order" asking for answers per topic, each naming its publish."""
EXTENSIONS_VERSION = 1


class StartAt(IntEnum):
    """Where a new subscription starts in its topic's log."""

    BEGINNING = 0
    CURRENT = 1
    FROM = 2
    FROM64 = 3
    """An extension: a u64 offset follows (the seed's From takes a u16)."""


TOPIC_PREFIX = b"topic:"
MAX_TOPIC_BYTES = 255
MAX_U16 = 0xFFFF

# Error texts the seed sends; clients may match on them.
ERR_UNKNOWN_ACTION = "unknown action"
ERR_NO_TOPIC_PREFIX = "topic data does not contain 'topic:' prefix"
ERR_INVALID_TOPIC_DATA = "invalid topic data provided"
ERR_EMPTY_TOPIC_DATA = "data length of topics is 0"
ERR_INVALID_START = "invalid start up type provided"
# Error texts of our own, for what the seed did not check.
ERR_MESSAGE_TOO_LARGE = "message too large"
ERR_TOPIC_LIST_TOO_LARGE = "topic list too large"
ERR_NOTHING_TO_ACK = "nothing to acknowledge"
ERR_TOO_MANY_TOPICS = "too many topics"
ERR_HANDSHAKE_TIMEOUT = "handshake timed out"
ERR_FRAME_TIMEOUT = "frame timed out"
ERR_INVALID_HELLO = "invalid hello"
ERR_EMPTY_MESSAGE = "empty message"
# With a users file: the connection is closed after each of these three.
ERR_AUTH_FAILED = "authentication failed"
ERR_AUTH_REVOKED = "authentication revoked"
ERR_TOO_MANY_CONNECTIONS = "too many connections for this user"
# Followed by ": " and what was refused, e.g. "permission denied: publish to 'a.b'".
ERR_PERMISSION_DENIED = "permission denied"
ERR_PERMISSION_WITHDRAWN = "permission withdrawn"
# With "patterns" agreed in Hello.
ERR_INVALID_PATTERN = "invalid topic pattern"
ERR_PATTERN_OFFSET = "a pattern starts at Beginning or Current, not at an offset"
# With "groups" agreed in Hello.
ERR_INVALID_GROUP = "invalid group"
ERR_TOO_MANY_DURABLES = "too many durable consumers"
# Unsolicited, then ": $durable/NAME/TOPIC": a durable consumer subscribed to a
# topic that did not exist could not join it when it came (or a durable
# pattern one it matched): its user's max_durables was reached by then.
ERR_DURABLE_NOT_JOINED = "durable consumer not joined, its user's max_durables reached"

# Errors that answer something other than a subscribe or unsubscribe request.
UNSOLICITED_ERRORS = frozenset(
    {
        ERR_UNKNOWN_ACTION,
        ERR_NOTHING_TO_ACK,
        ERR_HANDSHAKE_TIMEOUT,
        ERR_FRAME_TIMEOUT,
        ERR_AUTH_REVOKED,
        ERR_TOO_MANY_CONNECTIONS,
    }
)


def is_unsolicited(text: str) -> bool:
    """Whether an Error answers no subscribe or unsubscribe request."""
    return (
        text in UNSOLICITED_ERRORS
        or text.startswith(ERR_PERMISSION_WITHDRAWN)
        or text.startswith(ERR_DURABLE_NOT_JOINED)
    )


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_unpack_u16 = _U16.unpack_from
_unpack_u32 = _U32.unpack_from
_unpack_u64 = _U64.unpack_from


class ProtocolError(ValueError):
    """A frame that is well delimited but whose content is refused.

    Its text is what the peer is told; `detail` (for the log) may say more.
    """

    def __init__(self, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.detail = detail or text


# ---------------------------------------------------------------- topic names


def topic_name_problem(name: str) -> str | None:
    """Say what is wrong with a topic name, or None if it is valid.

    Valid: 1 to 255 bytes of UTF-8 with no NUL. NUL is refused so that a
    delivery's topic can never be mistaken for a status by a plain client,
    and so that names map cleanly onto file names.
    """
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid topic name: not valid UTF-8"
    if not encoded:
        return "invalid topic name: empty"
    if len(encoded) > MAX_TOPIC_BYTES:
        return f"invalid topic name: longer than {MAX_TOPIC_BYTES} bytes"
    if "\x00" in name:
        return "invalid topic name: contains NUL"
    return None


def decode_topic_name(raw: bytes) -> str:
    """Decode a topic name received as bytes, or raise ProtocolError."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid topic name: not valid UTF-8") from None
    problem = topic_name_problem(name)
    if problem:
        raise ProtocolError(problem)
    return name


def decode_topic_list(payload: bytes) -> list[str]:
    """Decode a subscribe/unsubscribe payload: a JSON array of topic names."""
    try:
        topics = untrusted_json.parse(payload)
    except untrusted_json.UntrustedJSONError as error:
        raise ProtocolError(ERR_INVALID_TOPIC_DATA, f"{ERR_INVALID_TOPIC_DATA}: {error}") from None
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise ProtocolError(
            ERR_INVALID_TOPIC_DATA, f"{ERR_INVALID_TOPIC_DATA}: not a list of topic names"
        )
    for name in topics:
        problem = topic_name_problem(name)
        if problem:
            raise ProtocolError(problem)
    return list(dict.fromkeys(topics))


# ------------------------------------------------------------------- encoders


def encode_u16(value: int) -> bytes:
    """A bare u16: an action, an ack or nack, or a status without payload."""
    return _U16.pack(value)


def encode_error(text: str) -> bytes:
    """Error status: u16 3 | u16 length | UTF-8 text (cut at 65,535 bytes)."""
    data = text.encode("utf-8")[:MAX_U16]
    return _U16.pack(STATUS_ERROR) + _U16.pack(len(data)) + data


def delivery_prefix(topic: str) -> bytes:
    """The constant head of every delivery of a topic: u16 length | name."""
    name = topic.encode("utf-8")
    return _U16.pack(len(name)) + name


def encode_delivery(topic: str, payload: bytes) -> bytes:
    """Delivery: u16 topic length | topic | u64 data length | data."""
    return delivery_prefix(topic) + _U64.pack(len(payload)) + payload


encode_u64 = _U64.pack


def encode_topic_list(topics: Iterable[str]) -> bytes:
    """u32 length | JSON array of names."""
    # Compact, as Go's json.Marshal writes it: the same bytes as the seed's clients.
    data = json.dumps(list(topics), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _U32.pack(len(data)) + data


def encode_subscribe(topics: Iterable[str], start: StartAt, offset: int = 0) -> bytes:
    """Subscribe request: u16 1 | u32 n | JSON | u16 start-at | [u16 or u64 offset]."""
    frame = _U16.pack(ACTION_SUBSCRIBE) + encode_topic_list(topics) + _U16.pack(start)
    if start == StartAt.FROM:
        if not 0 <= offset <= MAX_U16:
            raise ValueError(f"a From offset must fit in a u16, not {offset} (use FROM64)")
        frame += _U16.pack(offset)
    elif start == StartAt.FROM64:
        frame += _U64.pack(offset)
    return frame


def encode_unsubscribe(topics: Iterable[str]) -> bytes:
    """Unsubscribe request: u16 2 | u32 n | JSON."""
    return _U16.pack(ACTION_UNSUBSCRIBE) + encode_topic_list(topics)


def encode_hello(fields: dict) -> bytes:
    """Hello, either way: u16 16 | u32 n | JSON object."""
    data = json.dumps(fields, separators=(",", ":")).encode("utf-8")
    return _U16.pack(HELLO) + _U32.pack(len(data)) + data


def decode_hello(payload: bytes) -> dict:
    """The JSON object of a Hello, or ProtocolError."""
    try:
        fields = untrusted_json.parse(payload)
    except untrusted_json.UntrustedJSONError as error:
        raise ProtocolError(ERR_INVALID_HELLO, f"{ERR_INVALID_HELLO}: {error}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(ERR_INVALID_HELLO, f"{ERR_INVALID_HELLO}: not a JSON object")
    return fields


_CONFIRMED_HEAD = struct.Struct(">HIQ")
_CONFIRMED_BODY = struct.Struct(">IQ")
_TAIL_FIELDS = "QHII"  # offset, attempt, id, size
_DELIVERY_TAIL = struct.Struct(">" + _TAIL_FIELDS)


def encode_confirmed(count: int, first_offset: int) -> bytes:
    """Confirmed: the next `count` publishes are stored from `first_offset` on."""
    return _CONFIRMED_HEAD.pack(CONFIRMED, count, first_offset)


_CONFIRMED_AT_HEAD = struct.Struct(">HQIQ")
_CONFIRMED_AT_BODY = struct.Struct(">QIQ")
_REFUSED_AT_HEAD = struct.Struct(">HQH")
_REFUSED_AT_BODY = struct.Struct(">QH")


def encode_confirmed_at(sequence: int, count: int, first_offset: int) -> bytes:
    """ConfirmedAt: the connection's publishes `sequence` (counted from 0)
    to `sequence + count - 1` are stored from `first_offset` on."""
    return _CONFIRMED_AT_HEAD.pack(CONFIRMED_AT, sequence, count, first_offset)


def encode_refused_at(sequence: int, text: str) -> bytes:
    """RefusedAt: the connection's publish `sequence` was refused."""
    data = text.encode("utf-8")[:MAX_U16]
    return _REFUSED_AT_HEAD.pack(REFUSED_AT, sequence, len(data)) + data


def extended_delivery_prefix(topic: str) -> bytes:
    """The constant head of a topic's extended deliveries: u16 18 | u16 t | topic."""
    return _U16.pack(DELIVERY) + delivery_prefix(topic)


def encode_delivery_tail(offset: int, attempt: int, delivery_id: int, size: int) -> bytes:
    """What follows the prefix of an extended delivery, before the data."""
    return _DELIVERY_TAIL.pack(offset, min(attempt, MAX_U16), delivery_id, size)


COMPILED = not __file__.endswith(".py")
"""Whether this module runs compiled by mypyc: a loop over payloads is then
C, cheaper than `sum(map(len, ...))` (an int and two calls per payload),
and as Python the other way round."""


def total_size(payloads: Sequence[bytes]) -> int:
    """The bytes of `payloads` together, the cheaper way for this build (the
    loop takes lists, as publishers and logs give them). A None among them
    raises TypeError, as `len` would."""
    if not COMPILED or not isinstance(payloads, list):
        return sum(map(len, payloads))
    total = 0
    for payload in cast(list[bytes], payloads):
        total += len(payload)
    return total


def payload_sizes(payloads: list[bytes]) -> list[int]:
    """The size of each payload, the cheaper way for this build."""
    if not COMPILED:
        return list(map(len, payloads))
    return [len(payload) for payload in payloads]


def encode_first_deliveries(
    prefix: bytes, offset: int, first_id: int, payloads: list[bytes]
) -> list[bytes]:
    """Extended deliveries of a run of first deliveries (attempt 1) of one
    topic, offsets and ids counting up from those given, as the pieces of
    their frames to join: prefix, tail, data, prefix, ...

    All the tails are packed by one `struct` call and cut apart by another,
    their fields laid out by slice assignments: no Python step and no `pack`
    call per delivery (a call per delivery was a fifth of the broker's
    instructions per message).
    """
    count = len(payloads)
    sizes = payload_sizes(payloads)
    if count > 1 and sizes.count(sizes[0]) == count:
        return [_encode_same_size_run(prefix, offset, first_id, payloads, sizes)]
    packer, splitter, attempts = _run_structs(count)
    fields: list[int] = [0] * (4 * count)
    fields[0::4] = range(offset, offset + count)
    fields[1::4] = attempts
    fields[2::4] = range(first_id, first_id + count)
    fields[3::4] = sizes
    pieces = [prefix] * (3 * count)
    pieces[1::3] = splitter.unpack(packer.pack(*fields))
    pieces[2::3] = payloads
    return pieces


def _encode_same_size_run(
    prefix: bytes, offset: int, first_id: int, payloads: list[bytes], sizes: list[int]
) -> bytes:
    """`encode_first_deliveries` of payloads all of one size (fixed-size
    records, a common case): whole frames, data included, from one `pack`."""
    count = len(payloads)
    key = (len(prefix), count, sizes[0])
    found = _SAME_SIZE_STRUCTS.get(key)
    if found is None:
        if len(_SAME_SIZE_STRUCTS) >= _RUN_STRUCTS_KEPT:
            _SAME_SIZE_STRUCTS.clear()
        frame = f"{len(prefix)}s{_TAIL_FIELDS}{sizes[0]}s"
        found = _SAME_SIZE_STRUCTS[key] = struct.Struct(">" + frame * count)
    fields: list[bytes | int] = [prefix] * (6 * count)
    fields[1::6] = range(offset, offset + count)
    fields[2::6] = [1] * count  # attempts
    fields[3::6] = range(first_id, first_id + count)
    fields[4::6] = sizes
    fields[5::6] = payloads
    return found.pack(*fields)


# (prefix length, count, payload size) -> the packer of a run's whole frames.
_SAME_SIZE_STRUCTS: dict[tuple[int, int, int], struct.Struct] = {}
# A run's count -> (tails packer, tails splitter, attempt fields), kept for
# the last few counts seen (runs are at most a read-ahead, 64, long).
_RUN_STRUCTS: dict[int, tuple[struct.Struct, struct.Struct, list[int]]] = {}
_RUN_STRUCTS_KEPT = 64


def _run_structs(count: int) -> tuple[struct.Struct, struct.Struct, list[int]]:
    found = _RUN_STRUCTS.get(count)
    if found is None:
        if len(_RUN_STRUCTS) >= _RUN_STRUCTS_KEPT:
            _RUN_STRUCTS.clear()
        found = _RUN_STRUCTS[count] = (
            struct.Struct(">" + _TAIL_FIELDS * count),
            struct.Struct(f"{_DELIVERY_TAIL.size}s" * count),
            [1] * count,
        )
    return found


def encode_ack_id(delivery_id: int, ack: bool = True) -> bytes:
    return _U16.pack(ACK_ID if ack else NACK_ID) + _U32.pack(delivery_id)


def publish_prefix(topic: str) -> bytes:
    """The constant head of every publish to a topic: u16 t | "topic:" + name."""
    name = TOPIC_PREFIX + topic.encode("utf-8")
    return _U16.pack(len(name)) + name


def encode_publish(topic: str, payload: bytes) -> bytes:
    """Publish frame: u16 t | "topic:" + name | u32 n | data."""
    return publish_prefix(topic) + _U32.pack(len(payload)) + payload


def encode_client_hello(
    prefetch: int | None = None,
    confirms: bool = False,
    groups: bool = False,
    confirm_order: str | None = None,
) -> bytes:
    """A client's Hello asking for this version of the extensions."""
    fields: dict[str, object] = {"version": EXTENSIONS_VERSION}
    if prefetch is not None:
        fields["prefetch"] = prefetch
    if confirms:
        fields["confirms"] = True
    if confirm_order is not None:
        fields["confirm_order"] = confirm_order
    if groups:
        fields["groups"] = True
    return encode_hello(fields)


# ---------------------------------------------------------- decoder machinery

# A state reads what it needs at `pos` of `data` and returns the new position.
# It runs only when at least `_need` bytes are there (the skipping state
# consumes whatever part of its remainder has arrived).
_State = Callable[[bytes, int], int]


class _Decoder:
    """One buffer walked by a small state machine."""

    _state: _State
    _need: int

    def __init__(self) -> None:
        self._held = bytearray()
        self.progress = 0
        """Counts the reads that completed at least one step of a frame."""
        self._skip_left = 0
        self._after_skip: tuple[_State, int] | None = None
        self._on_hold: tuple[_State, int] | None = None

    def feed(self, data: bytes) -> None:
        """Decode as much as `data` (appended to what is held) allows."""
        held = self._held
        if held:
            held += data
            if len(held) < self._need:
                return
            data = bytes(held)
            held.clear()
        elif len(data) < self._need:
            held += data
            return
        self.progress += 1
        pos = 0
        end = len(data)
        while end - pos >= self._need:
            pos = self._state(data, pos)
        if pos < end:
            held += memoryview(data)[pos:]

    def discard(self) -> None:
        """Let go at once of what is held: the connection is gone. A decoder
        is in a reference cycle of its own (its state is one of its bound
        methods), so its buffer would otherwise wait for a garbage
        collection, which an idle process may not run for a long time."""
        self._held = bytearray()
        self._on_hold = None
        self._goto(self._state, sys.maxsize)

    def hold(self) -> None:
        """Decode nothing after the current step until `release`: what comes
        meanwhile is kept as it is. Costs the decoding loop nothing: the
        step waited for is one no input can complete."""
        if self._on_hold is None:
            self._on_hold = (self._state, self._need)
            self._goto(self._state, sys.maxsize)

    def release(self) -> None:
        """Decode again, starting with what was kept."""
        if self._on_hold is not None:
            self._goto(*self._on_hold)
            self._on_hold = None
            self.feed(b"")

    @property
    def on_hold(self) -> bool:
        return self._on_hold is not None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (bounded by the limits)."""
        return len(self._held)

    @property
    def missing(self) -> int:
        """Bytes the step being decoded still waits for (0 if none is held)."""
        held = len(self._held)
        return self._need - held if held and self._on_hold is None else 0

    def _goto(self, state: _State, need: int) -> None:
        self._state = state
        self._need = need

    def _skip(self, count: int, then: _State, need: int) -> None:
        """Drop the next `count` bytes as they arrive, then go to `then`."""
        if count == 0:
            self._goto(then, need)
            return
        self._skip_left = count
        self._after_skip = (then, need)
        self._goto(self._skipping, 1)

    def _skipping(self, data: bytes, pos: int) -> int:
        taken = min(self._skip_left, len(data) - pos)
        self._skip_left -= taken
        if self._skip_left == 0:
            assert self._after_skip is not None
            self._goto(*self._after_skip)
            self._after_skip = None
        return pos + taken


# -------------------------------------------------------------- server side


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
    (first,) = _unpack_u32(data, pos + 2)
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


class ServerDecoder(_Decoder):
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
        self._goto(self._action, 2)

    @property
    def role(self) -> str:
        """'new', 'subscriber' or 'publisher'."""
        return self._role.name.lower()

    # First action and subscriber loop.

    def _action(self, data: bytes, pos: int) -> int:
        (code,) = _unpack_u16(data, pos)
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
        (delivery_id,) = _unpack_u32(data, pos)
        self._goto(self._action, 2)
        if self._ack_code == ACK_ID:
            self.events.acked_ids([delivery_id])
        else:
            self.events.nacked_id(delivery_id)
        return pos + 4

    def _hello_length(self, data: bytes, pos: int) -> int:
        (length,) = _unpack_u32(data, pos)
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
        (length,) = _unpack_u32(data, pos)
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

    def _after_topics(self) -> tuple[_State, int]:
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
        (self._start,) = _unpack_u16(data, pos)
        if self._start == StartAt.FROM:
            self._goto(self._from_offset, 2)
        elif self._start == StartAt.FROM64:
            self._goto(self._from64_offset, 8)
        else:
            self._finish_request(0)
        return pos + 2

    def _from_offset(self, data: bytes, pos: int) -> int:
        (offset,) = _unpack_u16(data, pos)
        self._finish_request(offset)
        return pos + 2

    def _from64_offset(self, data: bytes, pos: int) -> int:
        (offset,) = _unpack_u64(data, pos)
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
        (length,) = _unpack_u16(data, pos)
        if length == 0:
            # A u32 topic length (the seed README's form) reads as a zero u16
            # followed by the real u16 length; the zero is skipped.
            return pos + 2
        # Fast path: the whole frame is here, and perhaps more to the same
        # topic after it, reported as one run.
        topic_end = pos + 2 + length
        end = len(data)
        if end >= topic_end + 4:
            (size,) = _unpack_u32(data, topic_end)
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
            (size,) = _unpack_u32(data, size_at)
            frame_end = size_at + 4 + size
            if size > max_payload or end < frame_end:
                break
            payloads.append(data[size_at + 4 : frame_end])
            pos = frame_end
        return pos

    def _publish_topic_name(self, data: bytes, pos: int) -> int:
        end = pos + self._need
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
        (size,) = _unpack_u32(data, pos)
        pos += 4
        if size > self._max_payload:
            if self._topic is not None:
                self.events.refused(ERR_MESSAGE_TOO_LARGE)
            self._skip(size, self._publish_topic_length, 2)
        elif size == 0:
            # Reported all the same: the protocol decides (the seed ignores it).
            self._goto(self._publish_topic_length, 2)
            if self._topic is not None:
                self.events.published(self._topic, [b""])
        else:
            self._goto(self._publish_data, size)
        return pos

    def _publish_data(self, data: bytes, pos: int) -> int:
        end = pos + self._need
        self._goto(self._publish_topic_length, 2)
        if self._topic is not None:
            self.events.published(self._topic, [data[pos:end]])
        return end


# -------------------------------------------------------------- client side


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


class ClientDecoder(_Decoder):
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
        (value,) = _unpack_u16(data, pos)
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
        (length,) = _unpack_u16(data, pos)
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
    def _after_frame(self) -> _State:
        return self._tagged_head if self.tagged else self._head

    # Extensions: the Hello answer, then tagged frames.

    def _hello_head(self, data: bytes, pos: int) -> int:
        (code,) = _unpack_u16(data, pos)
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
        (length,) = _unpack_u32(data, pos)
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
        (code,) = _unpack_u16(data, pos)
        if code == DELIVERY:
            # Fast path: the whole delivery is here.
            if len(data) >= pos + 4:
                topic_end = pos + 4 + _unpack_u16(data, pos + 2)[0]
                if len(data) >= topic_end + 18:
                    offset, attempt, delivery_id, size = _DELIVERY_TAIL.unpack_from(data, topic_end)
                    end = topic_end + 18 + size
                    if len(data) >= end and size <= self._max_payload:
                        self.events.extended_delivery_received(
                            data[pos + 4 : topic_end].decode("utf-8", "replace"),
                            offset,
                            attempt,
                            delivery_id,
                            data[topic_end + 18 : end],
                        )
                        return end
            self._goto(self._tagged_topic_length, 2)
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
        (length,) = _unpack_u16(data, pos)
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

    def _tagged_delivery_done(self, payload: bytes) -> None:
        self._goto(self._tagged_head, 2)
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
