"""The file store's record format: one record per message,

    u32 crc32 | u32 length | u64 offset | u64 time_ms | payload

the CRC covering everything after itself; and reading runs of records back,
checking each (as Kafka's record batches are read and checked)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

HEADER = struct.Struct(">IIQQ")
"""crc32 | length | offset | time_ms; the CRC covers everything after itself."""
_HEADER_TAIL = struct.Struct(">IQQ")
_unpack_header = HEADER.unpack_from
_READ_CHUNK = 64 * 1024


def encode_records(first_offset: int, payloads: Sequence[bytes], time_ms: int) -> list[bytes]:
    """The records of a batch, as a list of parts to join or write."""
    parts: list[bytes] = []
    pack_tail = _HEADER_TAIL.pack
    crc32 = zlib.crc32
    offset = first_offset
    for payload in payloads:
        tail = pack_tail(len(payload), offset, time_ms)
        parts.append(struct.pack(">I", crc32(payload, crc32(tail))) + tail)
        parts.append(payload)
        offset += 1
    return parts


def read_records(
    fd: int, position: int, file_size: int, with_payload: bool = False
) -> Iterator[tuple[int, int, int, int, Any]]:
    """Yield (position, length, offset, time_ms, good) for each record from
    `position`, reading in large chunks; with_payload, `good` is the payload
    (None if the record fails its check). Stops after the first bad record."""
    data = b""
    data_start = position
    while position < file_size:
        local = position - data_start
        if local + HEADER.size > len(data):
            data = os.pread(fd, _READ_CHUNK, position)
            data_start, local = position, 0
        if local + HEADER.size > len(data):
            yield position, 0, -1, 0, None if with_payload else False
            return
        crc, length, offset, time_ms = _unpack_header(data, local)
        if position + HEADER.size + length > file_size:
            yield position, length, offset, time_ms, None if with_payload else False
            return
        end = local + HEADER.size + length
        if end > len(data):
            data = os.pread(fd, max(_READ_CHUNK, HEADER.size + length), position)
            data_start, local, end = position, 0, HEADER.size + length
        payload = data[local + HEADER.size : end]
        good = len(payload) == length and (
            zlib.crc32(payload, zlib.crc32(data[local + 4 : local + HEADER.size])) == crc
        )
        if with_payload:
            yield position, length, offset, time_ms, payload if good else None
        else:
            yield position, length, offset, time_ms, good
        if not good:
            return
        position += HEADER.size + length
