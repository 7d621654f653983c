"""The calls the file store makes to the disk, named in one place.

The file store (broker.log.file, .segment, .records, .repair, .compaction,
.positions) reaches its files only through a `Disk`: the operating system's
own calls (`OS_DISK`, each the `os` function itself, so nothing stands in
the way of a write), or a simulated disk that decides what a crash keeps
(tests/simulation/disk.py). The calls are the `os` module's, with its
signatures and errors (`OSError` with an errno), so code written against
them reads as ordinary POSIX code.
"""

from __future__ import annotations

import os
import shutil
from typing import Protocol

StrPath = str | os.PathLike[str]


class FileFacts(Protocol):
    """What the store reads of `fstat`."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_nlink(self) -> int: ...


class Disk(Protocol):
    """A disk as POSIX offers it to one process."""

    def open(self, path: StrPath, flags: int, mode: int = 0o644) -> int: ...

    def close(self, fd: int) -> None: ...

    def pread(self, fd: int, size: int, position: int) -> bytes: ...

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int: ...

    def write(self, fd: int, data: bytes | memoryview) -> int: ...

    def fstat(self, fd: int) -> FileFacts: ...

    def ftruncate(self, fd: int, size: int) -> None: ...

    def fsync(self, fd: int) -> None: ...

    def listdir(self, path: StrPath) -> list[str]: ...

    def mkdir(self, path: StrPath) -> None: ...

    def unlink(self, path: StrPath) -> None: ...

    def replace(self, source: StrPath, target: StrPath) -> None: ...

    def rename(self, source: StrPath, target: StrPath) -> None: ...

    def exists(self, path: StrPath) -> bool: ...

    def isdir(self, path: StrPath) -> bool: ...

    def rmtree(self, path: StrPath) -> None: ...


class _OperatingSystemDisk:
    """The real disk: the `os` functions themselves (no wrapper call)."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    pread = staticmethod(os.pread)
    pwrite = staticmethod(os.pwrite)
    write = staticmethod(os.write)
    fstat = staticmethod(os.fstat)
    ftruncate = staticmethod(os.ftruncate)
    fsync = staticmethod(os.fsync)
    listdir = staticmethod(os.listdir)
    mkdir = staticmethod(os.mkdir)
    unlink = staticmethod(os.unlink)
    replace = staticmethod(os.replace)
    rename = staticmethod(os.rename)
    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    rmtree = staticmethod(shutil.rmtree)


OS_DISK: Disk = _OperatingSystemDisk()


def read_file(disk: Disk, path: StrPath) -> bytes:
    """A small file's whole content (a name, an index, the positions)."""
    fd = disk.open(path, os.O_RDONLY)
    try:
        parts = []
        position = 0
        while part := disk.pread(fd, 1 << 20, position):
            parts.append(part)
            position += len(part)
        return b"".join(parts)
    finally:
        disk.close(fd)


def write_file(disk: Disk, path: StrPath, data: bytes, sync: bool) -> None:
    """Write a small file whole (created or emptied first), fsynced if `sync`."""
    fd = disk.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(disk, fd, data)
        if sync:
            disk.fsync(fd)
    finally:
        disk.close(fd)


def write_all(disk: Disk, fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` at the file's position, however short each write."""
    view = memoryview(data)
    while view:
        view = view[disk.write(fd, view) :]


def fsync_directory(disk: Disk, directory: StrPath) -> None:
    """Make a directory's entries (files created, renamed, removed) durable."""
    fd = disk.open(directory, os.O_RDONLY)
    try:
        disk.fsync(fd)
    finally:
        disk.close(fd)
