"""Encoders: every frame the broker and its clients send, and the runs of
first deliveries a subscriber's pump encodes in a few calls (compiled).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from typing import cast

import broker.wire.untrusted_json as untrusted_json
from broker.wire.codes import (
    ACK_ID,
    ACTION_SUBSCRIBE,
    ACTION_UNSUBSCRIBE,
    CONFIRMED,
    CONFIRMED_AT,
    DELIVERY,
    ERR_INVALID_HELLO,
    EXTENSIONS_VERSION,
    HEADERS,
    HELLO,
    MAX_U16,
    NACK_ID,
    REFUSED_AT,
    STATUS_ERROR,
    TOPIC_PREFIX,
    ProtocolError,
    StartAt,
)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
unpack_u16 = _U16.unpack_from
unpack_u32 = _U32.unpack_from
unpack_u64 = _U64.unpack_from


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
    pieces = [prefix] * (3 * count)
    pieces[1::3] = _run_tails(offset, first_id, sizes)
    pieces[2::3] = payloads
    return pieces


def encode_first_headered_deliveries(
    prefix: bytes, offset: int, first_id: int, payloads: list[bytes], frames: list[bytes]
) -> list[bytes]:
    """`encode_first_deliveries` of a run whose messages have headers: each
    delivery after its Headers frame (`frames`, one per payload, b"" for a
    message without), as the pieces to join."""
    count = len(payloads)
    pieces = [prefix] * (4 * count)
    pieces[0::4] = frames
    pieces[2::4] = _run_tails(offset, first_id, payload_sizes(payloads))
    pieces[3::4] = payloads
    return pieces


def _run_tails(offset: int, first_id: int, sizes: list[int]) -> tuple[bytes, ...]:
    """The tails of a run of first deliveries, packed by one `struct` call
    and cut apart by another."""
    count = len(sizes)
    packer, splitter, attempts = _run_structs(count)
    fields: list[int] = [0] * (4 * count)
    fields[0::4] = range(offset, offset + count)
    fields[1::4] = attempts
    fields[2::4] = range(first_id, first_id + count)
    fields[3::4] = sizes
    return splitter.unpack(packer.pack(*fields))


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


def encode_headers_frame(block: bytes) -> bytes:
    """The frame that gives the next message frame its headers (with
    "headers" agreed): u16 HEADERS | u32 h | block."""
    return _U16.pack(HEADERS) + _U32.pack(len(block)) + block


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
