"""Damaged records found when a segment is read whole at start (its last
segment, or one whose index is not usable): what is bit rot in the middle,
and what is only a torn tail.

A record that fails its check and is followed by good records (their
offsets counting on from it) is damage in the middle: the bytes from it to
the next good record are copied aside (`<segment>.damaged-<offset>`, for
the operator), and the segment is rewritten with a gap run (broker.log.
records) in their place, so that the offsets they held read as a gap and
every record after them is served. The rewrite goes beside the segment
and is swapped in by a rename, as compaction's is, so a crash leaves the
old segment or the new one. A bad record with nothing good after it is a
torn tail (a write a crash cut short): the log is truncated there.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from broker.log.disk import OS_DISK, Disk, fsync_directory, write_all
from broker.log.records import HEADER, encode_gap, read_records

REPAIRING_SUFFIX = ".repairing"
DAMAGED_SUFFIX = ".damaged-"
MAX_DAMAGED_RECORDS = 4096
"""Consecutive damaged records looked past at most; more is taken for a
torn tail (the log is truncated there)."""
_OFFSET = struct.Struct(">Q")


@dataclass(frozen=True)
class Damage:
    """Damaged records from byte `at` up to byte `resume`, where the good
    record of offset `first + count` starts."""

    at: int
    resume: int
    first: int
    count: int


def find_damage(fd: int, at: int, first: int, size: int, disk: Disk = OS_DISK) -> Damage | None:
    """The damage starting with the bad record at byte `at` (which should
    have held offset `first`), or None if no good record follows it."""
    rest = disk.pread(fd, size - at, at)
    # Most often only the payload rotted: the record's own length leads on.
    (_, stored, _, _) = HEADER.unpack_from(rest, 0) if len(rest) >= HEADER.size else (0, 0, 0, 0)
    candidates = [at + HEADER.size + (stored & 0x3FFFFFFF)]
    # (Past a megabyte, the next 64 offsets are looked for, not 4,096.)
    limit = MAX_DAMAGED_RECORDS if len(rest) < 1 << 20 else 64
    for offset in range(first + 1, first + 1 + limit):
        found = rest.find(_OFFSET.pack(offset), 1)
        while found >= 0:
            candidates.append(at + found - 8)  # the offset is a header's third field
            found = rest.find(_OFFSET.pack(offset), found + 1)
        if len(candidates) > 1:
            break
    for resume in candidates:
        if at < resume < size:
            good = _good_record_at(disk, fd, resume, size)
            if good is not None and first < good <= first + MAX_DAMAGED_RECORDS:
                return Damage(at, resume, first, good - first)
    return None


def _good_record_at(disk: Disk, fd: int, position: int, size: int) -> int | None:
    """The offset of the record at `position`, if one that passes its check starts there."""
    for _, _, offset, _, good, _ in read_records(fd, position, size, pread=disk.pread):
        return offset if good else None
    return None


def repair_segment(path: Path, damage: Damage, time_ms: int, disk: Disk = OS_DISK) -> Path:
    """Copy the damaged bytes aside and swap in the segment rewritten with a
    gap run in their place (both fsynced, then the directory); the file the
    damaged bytes went to."""
    aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{damage.first}")
    target = path.with_name(path.name + REPAIRING_SUFFIX)
    fd = disk.open(path, os.O_RDONLY)
    try:
        size = disk.fstat(fd).st_size
        _write_synced(disk, aside, [disk.pread(fd, damage.resume - damage.at, damage.at)])
        _write_synced(
            disk,
            target,
            [
                disk.pread(fd, damage.at, 0),
                encode_gap(damage.first, damage.count, time_ms),
                disk.pread(fd, size - damage.resume, damage.resume),
            ],
        )
    finally:
        disk.close(fd)
    index = path.with_suffix(".index")
    if disk.exists(index):
        disk.unlink(index)  # (read whole at the next start, if a crash comes now)
    disk.replace(target, path)
    fsync_directory(disk, path.parent)
    return aside


def _write_synced(disk: Disk, path: Path, parts: list[bytes]) -> None:
    fd = disk.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for part in parts:
            write_all(disk, fd, part)
        disk.fsync(fd)
    finally:
        disk.close(fd)
