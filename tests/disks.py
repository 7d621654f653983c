"""The real disk with a switch: writes that fail as on a full disk, for
tests of what the file store does then (the simulator's disk, in
tests/simulation/disk.py, decides such faults from its seed)."""

from __future__ import annotations

import errno
import os
from typing import Any

from broker.log.disk import OS_DISK


class FillableDisk:
    """`OS_DISK`, except that while `full` each write stores the first
    `written_when_full` of its bytes, then fails with ENOSPC, and while
    `failing` each fsync fails with EIO."""

    def __init__(self) -> None:
        self.full = False
        self.written_when_full = 0.0
        self.failing = False

    def fsync(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        OS_DISK.fsync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(OS_DISK, name)

    def write(self, fd: int, data: bytes) -> int:
        if not self.full:
            return OS_DISK.write(fd, data)
        OS_DISK.write(fd, bytes(data)[: int(len(data) * self.written_when_full)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def pwrite(self, fd: int, data: bytes, position: int) -> int:
        if not self.full:
            return OS_DISK.pwrite(fd, data, position)
        OS_DISK.pwrite(fd, data[: int(len(data) * self.written_when_full)], position)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
