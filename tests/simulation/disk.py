"""A simulated disk under the file store (the `broker.log.disk.Disk` calls),
whose faults the world's seed decides.

It keeps two views of every file: what the process sees (the page cache)
and what the media holds. A write lands in the cache and dirties its 4 KiB
pages; `fsync` copies a file's dirty pages and size to the media, or fails
(EIO) and, as Linux does, marks them clean all the same, so that a later
fsync that succeeds does not write them: their bytes never reach the media.
Names (create, rename, remove) go to an ordered journal; fsyncing a
directory commits the journal up to then.

A process crash keeps the cache (the kernel still writes it back). A
machine crash keeps the media, plus what writeback may have done before
the power went: each dirty page written, not written, or torn at a sector;
a file's grown size kept or not; the uncommitted journal cut at a random
point (a create or a rename may be missing). Writes may also fail on their
own (ENOSPC after part of the data), as on a full disk.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

PAGE = 4096
SECTOR = 512


@dataclass
class DiskFaults:
    """How often each disk fault comes (0 turns it off)."""

    write_fails: float = 0.0
    """Chance that a write stores part of its data, then fails with ENOSPC."""
    fsync_fails: float = 0.0
    """Chance that an fsync fails with EIO (and loses its dirty pages)."""
    writeback: float = 0.5
    """At a machine crash, the chance that each dirty page had been written."""
    torn: float = 0.2
    """At a machine crash, the chance that a written page is torn at a sector."""


@dataclass
class DiskCounts:
    """The disk faults injected, by kind."""

    failed_writes: int = 0
    failed_fsyncs: int = 0
    process_crashes: int = 0
    machine_crashes: int = 0
    pages_lost: int = 0
    pages_torn: int = 0
    names_lost: int = 0


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    media: bytearray = field(default_factory=bytearray)
    dirty: set[int] = field(default_factory=set)
    """Pages written since they last reached the media."""
    resized: bool = False
    """Its size changed since it last reached the media."""
    links: int = 1


@dataclass
class _Open:
    inode: _Inode | None  # None: a directory
    path: str
    append: bool
    position: int = 0


@dataclass(frozen=True)
class _NameChange:
    kind: str  # "mkdir", "link", "unlink", "rename"
    path: str
    target: str = ""
    inode: _Inode | None = None


@dataclass
class _Facts:
    st_size: int
    st_nlink: int
    st_mode: int


class SimulatedDisk:
    """The `Disk` the file store writes through, in memory (see the module)."""

    def __init__(self, rng: random.Random, faults: DiskFaults, counts: DiskCounts) -> None:
        self.rng = rng
        self.faults = faults
        self.counts = counts
        self.faulty = True
        self._names: dict[str, _Inode] = {}
        self._directories: set[str] = {"/"}
        self._journal: list[_NameChange] = []
        """Name changes not yet committed (a directory fsync commits them)."""
        self._committed_names: dict[str, _Inode] = {}
        self._committed_directories: set[str] = {"/"}
        self._fds: dict[int, _Open] = {}
        self._next_fd = 1000

    # The Disk calls.

    def open(self, path: Any, flags: int, mode: int = 0o644) -> int:
        name = self._path(path)
        inode: _Inode | None
        if name in self._directories:
            inode = None
        elif name in self._names:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise FileExistsError(errno.EEXIST, "File exists", name)
            inode = self._names[name]
            if flags & os.O_TRUNC:
                self._resize(inode, 0)
        elif flags & os.O_CREAT:
            self._parent_exists(name)
            inode = _Inode()
            self._names[name] = inode
            self._journal.append(_NameChange("link", name, inode=inode))
        else:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = _Open(inode, name, bool(flags & os.O_APPEND))
        return fd

    def close(self, fd: int) -> None:
        self._file(fd, any_kind=True)
        del self._fds[fd]

    def pread(self, fd: int, size: int, position: int) -> bytes:
        return bytes(self._inode(fd).data[position : position + size])

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int:
        inode = self._inode(fd)
        data = bytes(data)
        if self.faulty and self.rng.random() < self.faults.write_fails:
            self.counts.failed_writes += 1
            self._store(inode, data[: self.rng.randint(0, len(data))], position)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._store(inode, data, position)
        return len(data)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        opened = self._file(fd)
        assert opened.inode is not None
        position = len(opened.inode.data) if opened.append else opened.position
        written = self.pwrite(fd, data, position)
        opened.position = position + written
        return written

    def fstat(self, fd: int) -> _Facts:
        opened = self._file(fd, any_kind=True)
        if opened.inode is None:
            return _Facts(0, 2, stat.S_IFDIR)
        return _Facts(len(opened.inode.data), opened.inode.links, stat.S_IFREG)

    def ftruncate(self, fd: int, size: int) -> None:
        self._resize(self._inode(fd), size)

    def fsync(self, fd: int) -> None:
        opened = self._file(fd, any_kind=True)
        inode = opened.inode
        if self.faulty and self.rng.random() < self.faults.fsync_fails:
            self.counts.failed_fsyncs += 1
            if inode is not None:
                inode.dirty.clear()  # marked clean, never written (Linux)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if inode is None:
            self._commit_names()  # a directory's entries
            return
        self._commit_names()  # (ext4 commits the journal with any fsync)
        media = inode.media
        size = len(inode.data)
        if len(media) < size:
            media.extend(bytes(size - len(media)))
        for page in inode.dirty:
            start = page * PAGE
            media[start : start + PAGE] = inode.data[start : start + PAGE]
        del media[size:]
        inode.dirty.clear()
        inode.resized = False

    def listdir(self, path: Any) -> list[str]:
        name = self._path(path)
        if name not in self._directories:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        prefix = name.rstrip("/") + "/"
        children = {
            entry[len(prefix) :]
            for entry in (*self._names, *self._directories)
            if entry.startswith(prefix) and "/" not in entry[len(prefix) :]
        }
        return sorted(child for child in children if child)

    def mkdir(self, path: Any) -> None:
        name = self._path(path)
        if name in self._directories or name in self._names:
            raise FileExistsError(errno.EEXIST, "File exists", name)
        self._parent_exists(name)
        self._directories.add(name)
        self._journal.append(_NameChange("mkdir", name))

    def unlink(self, path: Any) -> None:
        name = self._path(path)
        inode = self._names.pop(name, None)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        inode.links -= 1
        self._journal.append(_NameChange("unlink", name))

    def replace(self, source: Any, target: Any) -> None:
        old, new = self._path(source), self._path(target)
        inode = self._names.pop(old, None)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", old)
        replaced = self._names.get(new)
        if replaced is not None:
            replaced.links -= 1
        self._names[new] = inode
        self._journal.append(_NameChange("rename", old, new))

    rename = replace

    def exists(self, path: Any) -> bool:
        name = self._path(path)
        return name in self._names or name in self._directories

    def isdir(self, path: Any) -> bool:
        return self._path(path) in self._directories

    def rmtree(self, path: Any) -> None:
        name = self._path(path)
        for entry in [n for n in self._names if n.startswith(name + "/")]:
            self.unlink(entry)
        self._directories = {
            d for d in self._directories if d != name and not d.startswith(name + "/")
        }
        self._journal.append(_NameChange("rmtree", name))

    # Crashes.

    def crash_process(self) -> None:
        """The process dies: its descriptors close; the cache stays."""
        self.counts.process_crashes += 1
        self._fds.clear()

    def crash_machine(self) -> None:
        """The power goes: what the media holds, and what writeback and the
        journal may have done before (see the module)."""
        self.counts.machine_crashes += 1
        self._fds.clear()
        rng = self.rng
        kept = rng.randint(0, len(self._journal))
        self.counts.names_lost += len(self._journal) - kept
        names = dict(self._committed_names)
        directories = set(self._committed_directories)
        for change in self._journal[:kept]:
            _apply(change, names, directories)
        for inode in {id(inode): inode for inode in names.values()}.values():
            self._lose_unsynced(inode)
            inode.links = sum(1 for other in names.values() if other is inode)
        self._names, self._directories = names, directories
        self._committed_names, self._committed_directories = dict(names), set(directories)
        self._journal = []

    def _lose_unsynced(self, inode: _Inode) -> None:
        rng, faults = self.rng, self.faults
        data = inode.data
        size = len(data) if inode.resized and rng.random() < 0.5 else len(inode.media)
        survived = bytearray(inode.media[:size])
        survived.extend(bytes(size - len(survived)))
        for page in sorted(inode.dirty):
            start = page * PAGE
            if start >= size:
                continue
            if rng.random() >= faults.writeback:
                self.counts.pages_lost += 1
                continue
            end = min(start + PAGE, size)
            if rng.random() < faults.torn:
                self.counts.pages_torn += 1
                end = min(start + SECTOR * rng.randint(0, PAGE // SECTOR - 1), end)
            survived[start:end] = data[start:end]
        inode.data = survived
        inode.media = bytearray(survived)
        inode.dirty.clear()
        inode.resized = False

    # Internals.

    def _commit_names(self) -> None:
        for change in self._journal:
            _apply(change, self._committed_names, self._committed_directories)
        self._journal.clear()

    def _store(self, inode: _Inode, data: bytes, position: int) -> None:
        end = position + len(data)
        if len(inode.data) < end:
            inode.data.extend(bytes(end - len(inode.data)))
            inode.resized = True
        inode.data[position:end] = data
        inode.dirty.update(range(position // PAGE, (end - 1) // PAGE + 1) if data else ())

    def _resize(self, inode: _Inode, size: int) -> None:
        if size < len(inode.data):
            del inode.data[size:]
        else:
            inode.data.extend(bytes(size - len(inode.data)))
        inode.resized = True

    def _file(self, fd: int, any_kind: bool = False) -> _Open:
        opened = self._fds.get(fd)
        if opened is None or (opened.inode is None and not any_kind):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return opened

    def _inode(self, fd: int) -> _Inode:
        inode = self._file(fd).inode
        assert inode is not None
        return inode

    def _parent_exists(self, name: str) -> None:
        parent = str(PurePosixPath(name).parent)
        if parent not in self._directories:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", parent)

    @staticmethod
    def _path(path: Any) -> str:
        return str(PurePosixPath(os.fspath(path)))


def _apply(change: _NameChange, names: dict[str, _Inode], directories: set[str]) -> None:
    """Replay one journalled name change on a view of the names."""
    if change.kind == "mkdir":
        directories.add(change.path)
    elif change.kind == "link":
        assert change.inode is not None
        names[change.path] = change.inode
    elif change.kind == "unlink":
        names.pop(change.path, None)
    elif change.kind == "rename":
        inode = names.pop(change.path, None)
        if inode is not None:
            names[change.target] = inode
    elif change.kind == "rmtree":
        prefix = change.path + "/"
        for entry in [n for n in names if n.startswith(prefix)]:
            del names[entry]
        for entry in [d for d in directories if d == change.path or d.startswith(prefix)]:
            directories.discard(entry)


class Later:
    """The file store's `blocking`: work done a random moment later on the
    world's clock (as a thread does it while the reactor goes on); what a
    dead process had not done is cancelled with it."""

    def __init__(self, clock: IReactorTime, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._pending: list[IDelayedCall] = []

    def __call__(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()

        def run() -> None:
            self._pending.remove(call)
            try:
                result = work(*args)
            except Exception as error:  # what a thread hands back
                done.errback(error)
            else:
                done.callback(result)

        call = self._clock.callLater(self._rng.choice((0, 0, 0.001, 0.01, 0.05, 0.2)), run)
        self._pending.append(call)
        return done

    def cancel(self) -> None:
        for call in self._pending:
            call.cancel()
        self._pending.clear()
