"""Rewriting a closed segment without the messages compaction dropped: run
in a thread, it copies every record it keeps as it is (its CRC and all) and
writes a gap run (broker.log.records) for each run of dropped offsets, to a
file beside the segment; the log then swaps it in (broker.log.file). Until
the swap nothing has changed, and a crash leaves the old segment whole (the
leftover `*.compacting` file is removed at the next start)."""

from __future__ import annotations

import os
from array import array
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from broker.log.disk import OS_DISK, Disk, write_all
from broker.log.records import GAP, HEADER, encode_gap, read_records
from broker.log.segment import INDEX_EVERY

COMPACTING_SUFFIX = ".compacting"
_WRITE_BYTES = 1 << 20


class DamagedSegment(Exception):
    """A record of the segment fails its check: it is left as it is."""


@dataclass
class Rewritten:
    """What a rewrite wrote: the new file's size and index, the offsets it
    holds (as before), the time of its last record, and how many messages
    it dropped."""

    size: int
    positions: array[int]
    count: int
    last_time_ms: int
    dropped: int


def rewrite_segment(
    source: Path, base: int, drop: Set[int], target: Path, disk: Disk = OS_DISK
) -> Rewritten:
    """Write `source` (a closed segment from offset `base`) to `target`
    without the records whose offsets are in `drop`, fsynced."""
    fd = disk.open(source, os.O_RDONLY)
    out = disk.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = disk.fstat(fd).st_size
        written = 0
        chunks: list[bytes] = []
        buffered = 0
        positions: array[int] = array("Q")
        count = 0
        dropped = 0
        last_time_ms = 0
        gap_start = -1
        gap_count = 0
        gap_time = 0

        def emit(record: bytes, offsets: int) -> None:
            nonlocal written, buffered, count
            count += offsets
            while len(positions) * INDEX_EVERY < count:
                positions.append(written + buffered)
            chunks.append(record)
            buffered += len(record)
            if buffered >= _WRITE_BYTES:
                flush()

        def flush() -> None:
            nonlocal written, buffered
            data = b"".join(chunks)
            chunks.clear()
            write_all(disk, out, data)
            written += buffered
            buffered = 0

        def end_gap() -> None:
            nonlocal gap_start, gap_count
            if gap_count:
                emit(encode_gap(gap_start, gap_count, gap_time), gap_count)
                gap_start, gap_count = -1, 0

        expected = base
        for position, length, offset, time_ms, payload, runs in read_records(
            fd, 0, size, with_payload=True, pread=disk.pread
        ):
            if payload is None or offset != expected:
                raise DamagedSegment(f"{source}: a record at byte {position} fails its check")
            expected = offset + runs
            last_time_ms = time_ms
            gone = payload is GAP or offset in drop
            if gone:
                if payload is not GAP:
                    dropped += 1
                if not gap_count:
                    gap_start, gap_time = offset, time_ms
                gap_count += runs
                continue
            end_gap()
            emit(disk.pread(fd, HEADER.size + length, position), 1)
        end_gap()
        flush()
        disk.fsync(out)
        return Rewritten(written, positions, count, last_time_ms, dropped)
    finally:
        disk.close(fd)
        disk.close(out)
