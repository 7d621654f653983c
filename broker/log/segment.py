"""One segment file of a topic's log and its sparse index (as Kafka's
LogSegment and OffsetIndex): records from a base offset on, the positions of
the records holding every 32nd offset, and the index written when the
segment rolls. A gap run (what compaction left of dropped messages, see
broker.log.records) holds several offsets; every other record one."""

from __future__ import annotations

import re
import struct
import zlib
from array import array
from pathlib import Path

from twisted.logger import Logger

from broker.log.disk import OS_DISK, Disk, read_file, write_file
from broker.log.records import GAP, HEADER, read_records

log = Logger()

INDEX_EVERY = 32  # records between two index entries
_INDEX_TRAILER = struct.Struct(">QQQI")
"""The index's trailer: record count, time of the last record, the segment's
size in bytes, and a CRC-32 of everything before the CRC."""
SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")


class Segment:
    """One file of consecutive records, from `base` on."""

    __slots__ = (
        "base",
        "count",
        "disk",
        "fd",
        "last_time_ms",
        "path",
        "positions",
        "size",
        "synced",
    )

    def __init__(self, path: Path, base: int, fd: int, disk: Disk = OS_DISK) -> None:
        self.path = path
        self.base = base
        self.fd = fd
        self.disk = disk
        self.size = 0
        self.synced = 0
        """Bytes an fsync is known to have put on the disk."""
        self.count = 0
        self.last_time_ms = 0
        # positions[i] is the file position of the record holding offset
        # base + i * INDEX_EVERY; `count` is the offsets the segment holds.
        self.positions = array("Q")

    @property
    def end(self) -> int:
        return self.base + self.count

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".index")

    def scan(self, expect_base: int) -> int | None:
        """Read every record, building the index; return the position of the
        first bad one (a torn or corrupt tail), or None if all are good."""
        self.count = 0
        self.positions = array("Q")
        position = 0
        file_size = self.disk.fstat(self.fd).st_size
        positions = self.positions
        for position, _length, record_offset, time_ms, good, count in read_records(
            self.fd, 0, file_size, pread=self.disk.pread
        ):
            if not good or record_offset != expect_base + self.count:
                self.size = position
                return position
            self.count += count
            while len(positions) * INDEX_EVERY < self.count:
                positions.append(position)
            self.last_time_ms = time_ms
        self.size = file_size
        return None

    def load_index(self, count: int) -> bool:
        """Take the index written when the segment rolled, if it passes its
        check, says the segment holds `count` records (what the next base
        implies) and knows the file at its present size; else the segment
        is read whole. (An index is written without an fsync: a crash may
        leave it torn, which its CRC tells.)"""
        try:
            raw = read_file(self.disk, self.index_path)
        except OSError:
            return False
        entries = (count + INDEX_EVERY - 1) // INDEX_EVERY
        if len(raw) != 8 * entries + _INDEX_TRAILER.size:
            return False
        stored_count, last_time_ms, size, crc = _INDEX_TRAILER.unpack_from(raw, 8 * entries)
        if zlib.crc32(memoryview(raw)[:-4]) != crc or stored_count != count or size != self.size:
            return False
        positions = array("Q")
        positions.frombytes(raw[: 8 * entries])
        self.positions = positions
        self.count = count
        self.last_time_ms = last_time_ms
        return True

    def write_index(self) -> None:
        body = (
            self.positions.tobytes()
            + _INDEX_TRAILER.pack(self.count, self.last_time_ms, self.size, 0)[:-4]
        )
        index = body + struct.pack(">I", zlib.crc32(body))
        write_file(self.disk, self.index_path, index, sync=False)

    def read(self, offset: int, max_messages: int) -> list[bytes | None]:
        """Up to max_messages payloads from offset (within this segment).

        A record that fails its check is returned as None, and nothing after
        it in this read: its length cannot be trusted to find the next one.
        """
        relative = offset - self.base
        entry = relative // INDEX_EVERY
        current = self.base + entry * INDEX_EVERY
        wanted = min(max_messages, self.count - relative)
        out: list[bytes | None] = []
        records = read_records(
            self.fd, self.positions[entry], self.size, with_payload=True, pread=self.disk.pread
        )
        for _, _, record_offset, _, payload, count in records:
            if payload is GAP and record_offset <= current < record_offset + count:
                # Dropped by compaction: a None each, to be skipped.
                end = record_offset + count
                start = max(current, offset)
                if end > start:
                    out += [None] * min(end - start, wanted - len(out))
                    if len(out) >= wanted:
                        break
                current = end
                continue
            if payload is None or record_offset != current:
                log.error(
                    "corrupt record at offset {offset} in {path}; not serving it",
                    offset=current,
                    path=str(self.path),
                )
                out.append(None)
                break
            if current >= offset:
                out.append(payload)
                if len(out) == wanted:
                    break
            current += 1
        if not out and wanted > 0:
            out.append(None)  # the record is not where the index says
        return out

    def offset_at(self, when_ms: int) -> int:
        """The offset of this segment's first record stamped at or after
        `when_ms`, or its end if none is: a binary search over the records
        the index points at, then a scan of at most INDEX_EVERY records.
        A record that fails its check answers its own offset (earlier, not
        later, than the one sought)."""
        if self.count == 0 or self.last_time_ms < when_ms:
            return self.end
        positions = self.positions
        low, high = 0, len(positions)
        while low < high:  # the first indexed record stamped at or after when_ms
            middle = (low + high) // 2
            if self._time_at(positions[middle]) < when_ms:
                low = middle + 1
            else:
                high = middle
        entry = max(low - 1, 0)
        current = self.base + entry * INDEX_EVERY
        for _, _, record_offset, time_ms, good, count in read_records(
            self.fd, positions[entry], self.size, pread=self.disk.pread
        ):
            if not good or time_ms >= when_ms:
                return max(current, record_offset)
            current = record_offset + count
        return min(current, self.end)

    def _time_at(self, position: int) -> int:
        header = self.disk.pread(self.fd, HEADER.size, position)
        if len(header) < HEADER.size:
            return 0
        return int(HEADER.unpack(header)[3])

    def close(self) -> None:
        if self.fd >= 0:
            self.disk.close(self.fd)
            self.fd = -1
