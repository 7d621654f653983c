"""The file store's record format: one record per message,

    u32 crc32 | u32 length | u64 offset | u64 time_ms | payload

the CRC covering everything after itself; and reading runs of records back,
checking each (as Kafka's record batches are read and checked).

A message with headers is a record of the second kind: its length's top bit
set (no payload is 2 GiB long), and its data `u32 h | header block | payload`
(broker.wire.headers). Records of both kinds sit side by side; a broker
older than headers reads one of the second kind as damaged, never as data.

A gap run is a record of the third kind, which compaction writes in the
place of the messages it dropped: its length's second bit set, its data
`u32 count`, its offset the first of the `count` offsets it stands for
(offsets never change: a reader sees a gap)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from broker.wire.headers import Headered, with_headers

HEADER = struct.Struct(">IIQQ")
"""crc32 | length | offset | time_ms; the CRC covers everything after itself."""
_HEADER_TAIL = struct.Struct(">IQQ")
_U32 = struct.Struct(">I")
WITH_HEADERS = 0x80000000
"""In a record's length: its data holds a header block before the payload."""
GAP_RUN = 0x40000000
"""In a record's length: the record stands for a run of dropped messages."""
_KINDS = WITH_HEADERS | GAP_RUN


class _Gap:
    """What a read gives for a gap run's record, in place of a payload."""

    __repr__ = lambda self: "GAP"  # noqa: E731


GAP = _Gap()
_unpack_header = HEADER.unpack_from
_READ_CHUNK = 64 * 1024


def encode_records(first_offset: int, payloads: Sequence[bytes], time_ms: int) -> list[bytes]:
    """The records of a batch, as a list of parts to join or write."""
    parts: list[bytes] = []
    pack_tail = _HEADER_TAIL.pack
    crc32 = zlib.crc32
    offset = first_offset
    for payload in payloads:
        if type(payload) is Headered:
            block = payload.headers
            data = _U32.pack(len(block)) + block + payload
            tail = pack_tail(len(data) | WITH_HEADERS, offset, time_ms)
            parts.append(struct.pack(">I", crc32(data, crc32(tail))) + tail)
            parts.append(data)
        else:
            tail = pack_tail(len(payload), offset, time_ms)
            parts.append(struct.pack(">I", crc32(payload, crc32(tail))) + tail)
            parts.append(payload)
        offset += 1
    return parts


def encode_gap(first_offset: int, count: int, time_ms: int) -> bytes:
    """The record of a run of `count` dropped messages from `first_offset`."""
    data = _U32.pack(count)
    tail = _HEADER_TAIL.pack(len(data) | GAP_RUN, first_offset, time_ms)
    return struct.pack(">I", zlib.crc32(data, zlib.crc32(tail))) + tail + data


def _carried(data: bytes) -> bytes | None:
    """The payload of a record of the second kind, with its headers."""
    if len(data) < 4:
        return None
    (size,) = _U32.unpack_from(data, 0)
    if 4 + size > len(data):
        return None
    return with_headers(data[4 + size :], data[4 : 4 + size])


def read_records(
    fd: int,
    position: int,
    file_size: int,
    with_payload: bool = False,
    pread: Callable[[int, int, int], bytes] = os.pread,
) -> Iterator[tuple[int, int, int, int, Any, int]]:
    """Yield (position, length, offset, time_ms, good, count) for each record
    from `position`, reading in large chunks: `count` the offsets it stands
    for (1, or a gap run's); with_payload, `good` is the payload (None if the
    record fails its check, GAP for a gap run). Stops after the first bad
    record."""
    data = b""
    data_start = position
    while position < file_size:
        local = position - data_start
        if local + HEADER.size > len(data):
            data = pread(fd, _READ_CHUNK, position)
            data_start, local = position, 0
        if local + HEADER.size > len(data):
            yield position, 0, -1, 0, None if with_payload else False, 1
            return
        crc, stored, offset, time_ms = _unpack_header(data, local)
        length = stored & ~_KINDS
        if position + HEADER.size + length > file_size:
            yield position, length, offset, time_ms, None if with_payload else False, 1
            return
        end = local + HEADER.size + length
        if end > len(data):
            data = pread(fd, max(_READ_CHUNK, HEADER.size + length), position)
            data_start, local, end = position, 0, HEADER.size + length
        payload: Any = data[local + HEADER.size : end]
        good = len(payload) == length and (
            zlib.crc32(payload, zlib.crc32(data[local + 4 : local + HEADER.size])) == crc
        )
        count = 1
        if good and stored & GAP_RUN:
            count = _U32.unpack_from(payload, 0)[0] if length == 4 else 0
            good = count > 0
            payload = GAP
        if with_payload:
            if good and stored & WITH_HEADERS and payload is not GAP:
                payload = _carried(payload)
                good = payload is not None
            yield position, length, offset, time_ms, payload if good else None, count
        else:
            yield position, length, offset, time_ms, good, count
        if not good:
            return
        position += HEADER.size + length
