"""A durable log on disk: per-topic append-only segments, checksummed records,
a sparse index, crash recovery, group-committed fsyncs and retention.

Layout inside the data directory:

    <topic dir>/name                    the topic's name, UTF-8
    <topic dir>/00000000000000000000.log records from offset 0
    <topic dir>/00000000000000000000.index  its sparse index, written when it rolls:
                                        positions of every 32nd record, then the
                                        record count and the last record's time

A record is `u32 crc32 | u32 length | u64 offset | u64 time_ms | payload`; the
CRC covers everything after itself. Offsets are dense: a segment's records
run from its base offset (its file name) up to the next segment's.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from broker.log.compaction import (
    COMPACTING_SUFFIX,
    DamagedSegment,
    Rewritten,
    rewrite_segment,
)
from broker.log.disk import OS_DISK, Disk, fsync_directory, read_file, write_file
from broker.log.interface import (
    FsyncPolicy,
    IMessageLog,
    IMessageStore,
    OneNodeStore,
    Retention,
    StoreError,
)
from broker.log.positions import PositionStore
from broker.log.records import encode_records
from broker.log.repair import REPAIRING_SUFFIX, find_damage, repair_segment
from broker.log.segment import INDEX_EVERY, SEGMENT_NAME, Segment

log = Logger()

Blocking = Callable[..., "Deferred[Any]"]
"""Runs `work(*args)` off the reactor (a thread; the simulator's own clock)
and fires with its result."""


@dataclass(frozen=True)
class FileStoreSettings:
    segment_bytes: int = 64 * 1024 * 1024
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    """A confirm (and a delivery) means the message is on disk, by default:
    group commit makes it cost about a quarter of the ingest rate, where
    `interval` can lose a second of confirmed messages to a machine crash."""
    fsync_interval: float = 1.0
    retention: Retention = field(default_factory=Retention)


def topic_directory_name(topic: str) -> str:
    """A safe, collision-free directory name for any valid topic name.

    A readable prefix of letters, digits, '-' and '_' (never '.' or '/'),
    then a SHA-256 digest of the full name, which makes it unique.
    """
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", topic)[:40]
    digest = hashlib.sha256(topic.encode("utf-8")).hexdigest()[:32]
    return f"{readable}-{digest}"


@implementer(IMessageLog)
class FileLog:
    """One topic's log on disk, in its own directory."""

    NAME_FILE = "name"

    def __init__(
        self,
        topic: str,
        directory: Path,
        settings: FileStoreSettings,
        reactor: Any,
        on_fsync: Callable[[float], None] | None = None,
        disk: Disk = OS_DISK,
        blocking: Blocking | None = None,
    ) -> None:
        self.topic = topic
        self.directory = directory
        self._settings = settings
        self._reactor = reactor
        self._disk = disk
        self._blocking = blocking or _in_thread(reactor)
        """Runs the group fsync and compaction's rewrites off the reactor."""
        self.failed: str | None = None
        """Why the log takes no more messages (an fsync failed), or None."""
        self._on_fsync = on_fsync
        """Told how many seconds each group fsync took."""
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self.committed_offset = 0
        self.keep_from: int | None = None
        self.opening: Deferred[None] | None = None
        """Retention by count keeps messages from here on (durable consumers)."""
        self._dirty: set[int] = set()  # fds written since their last fsync
        self._syncing = False
        self._flushes: list[tuple[int, Deferred[None]]] = []
        self._compacting = False
        self._ensure_directory()
        self.damaged_records = 0
        """Records found damaged at start and set aside (broker.log.repair)."""
        self._open_segments()
        self.headered = self.next_offset > self.first_offset
        self.keyed = False
        """Whether a message it holds may carry headers: any it recovered
        might (their records are not looked at for it), and any appended by
        a caller who did not say none has."""

    def _ensure_directory(self) -> None:
        """The topic's directory with its name file, created if missing."""
        disk = self._disk
        if not disk.isdir(self.directory):
            disk.mkdir(self.directory)
        name_file = self.directory / self.NAME_FILE
        if not disk.exists(name_file):
            temporary = self.directory / (self.NAME_FILE + ".tmp")
            write_file(disk, temporary, self.topic.encode("utf-8"), sync=True)
            disk.replace(temporary, name_file)
            fsync_directory(disk, self.directory)
            fsync_directory(disk, self.directory.parent)
        elif read_file(disk, name_file) != self.topic.encode("utf-8"):
            raise StoreError(f"{self.directory} belongs to another topic")

    # Opening and recovery.

    def _open_segments(self) -> None:
        """Reopen the segments: rolled ones through their index, the last (and
        any without a usable index) by reading it, truncating a bad tail. A
        compaction's rewrite that a crash cut short is removed."""
        disk = self._disk
        names = disk.listdir(self.directory)
        for name in names:
            if name.endswith((COMPACTING_SUFFIX, REPAIRING_SUFFIX)):
                disk.unlink(self.directory / name)
        bases = sorted(int(match.group(1)) for match in map(SEGMENT_NAME.match, names) if match)
        for number, base in enumerate(bases):
            path = self.directory / f"{base:020d}.log"
            segment = Segment(path, base, disk.open(path, os.O_RDWR), disk)
            segment.size = disk.fstat(segment.fd).st_size
            following = bases[number + 1] if number + 1 < len(bases) else None
            if self._segments and base != self._segments[-1].end:
                self._set_aside_before(base)
            self._add_segment(segment)
            if following is not None and segment.load_index(following - base):
                continue
            self._recover(segment)
        if not self._segments:
            self._add_segment(self._create_segment(0))
        self._sync_recovered()
        self.committed_offset = self.next_offset

    def _sync_recovered(self) -> None:
        """What the last segment holds may be only in the kernel's cache (a
        process that died before its fsync): synced before anyone reads it
        as committed. (Rolled segments were synced before the next began.)
        An fsync that fails here means a failing disk: the start is refused."""
        for segment in self._segments:
            segment.synced = segment.size
        if self._settings.fsync is FsyncPolicy.NEVER:
            return
        last = self._segments[-1]
        try:
            self._disk.fsync(last.fd)
        except OSError as error:
            for segment in self._segments:
                segment.close()
            raise StoreError(
                f"could not sync {last.path} at start ({error.strerror or error}): "
                "the disk is failing; the broker cannot tell what it holds until the "
                "machine restarts"
            ) from error

    def _recover(self, segment: Segment) -> None:
        """Read a segment whole: damaged records in the middle are set
        aside and read as a gap (broker.log.repair), a torn tail truncated."""
        path = segment.path
        disk = self._disk
        while (bad_at := segment.scan(segment.base)) is not None:
            first = segment.base + segment.count
            size = disk.fstat(segment.fd).st_size
            damage = find_damage(segment.fd, bad_at, first, size, disk)
            if damage is None:
                log.warn(
                    "{path}: torn record at byte {at} (offset {offset}); truncated there "
                    "({lost} bytes dropped)",
                    path=str(path),
                    at=bad_at,
                    offset=first,
                    lost=size - bad_at,
                )
                disk.ftruncate(segment.fd, bad_at)
                disk.fsync(segment.fd)
                return
            aside = repair_segment(path, damage, segment.last_time_ms, disk)
            self.damaged_records += damage.count
            log.error(
                "{path}: {count} damaged record(s) at byte {at}, offsets {first} to {last}: "
                "their bytes set aside in {aside}, their offsets read as a gap, the "
                "records after them served",
                path=str(path),
                count=damage.count,
                at=damage.at,
                first=damage.first,
                last=damage.first + damage.count - 1,
                aside=aside.name,
            )
            disk.close(segment.fd)
            segment.fd = disk.open(path, os.O_RDWR)

    def _set_aside_before(self, base: int) -> None:
        """A hole in the offsets (a vanished segment, or one cut short by
        corruption): the log goes on from `base`, and the segments before
        the hole are renamed *.orphaned for the operator. Keeping the newer
        side means no offset a subscriber has seen ever holds another message."""
        log.error(
            "{dir}: the segments between offset {end} and {base} are missing; the log "
            "now starts at {base}, older segments renamed *.orphaned",
            dir=str(self.directory),
            end=self._segments[-1].end,
            base=base,
        )
        for segment in self._segments:
            segment.close()
            for path in (segment.path, segment.index_path):
                with contextlib.suppress(OSError):
                    self._disk.rename(path, path.with_name(path.name + ".orphaned"))
        self._segments.clear()
        self._bases.clear()

    def _add_segment(self, segment: Segment) -> None:
        self._segments.append(segment)
        self._bases.append(segment.base)

    def _create_segment(self, base: int) -> Segment:
        path = self.directory / f"{base:020d}.log"
        fd = self._disk.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        if self._settings.fsync is not FsyncPolicy.NEVER:
            fsync_directory(self._disk, self.directory)
        return Segment(path, base, fd, self._disk)

    # IMessageLog.

    @property
    def first_offset(self) -> int:
        return self._segments[0].base

    @property
    def next_offset(self) -> int:
        return self._segments[-1].end

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self._segments)

    @property
    def bytes_held(self) -> int:
        """Bytes of its segment files (records with their headers)."""
        return self.size

    def append(self, payloads: Sequence[bytes], headered: bool = True) -> int:
        if self.failed is not None:
            raise StoreError(self.failed)
        disk = self._disk
        active = self._segments[-1]
        if active.size >= self._settings.segment_bytes:
            active = self._roll()
        elif disk.fstat(active.fd).st_nlink == 0:
            active = self._replace_vanished(active)
        first = active.end
        if headered:
            self.headered = True
        time_ms = int(self._reactor.seconds() * 1000)
        parts = encode_records(first, payloads, time_ms)
        data = b"".join(parts)
        try:
            written = disk.pwrite(active.fd, data, active.size)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as error:
            # Leave the file as it was: a partial record would be a torn tail.
            with contextlib.suppress(OSError):
                disk.ftruncate(active.fd, active.size)
            log.error("could not append to {path}: {error}", path=str(active.path), error=error)
            raise StoreError(f"could not store message: {error.strerror or error}") from error
        # Index the new records.
        position = active.size
        count = active.count
        for i in range(0, len(parts), 2):
            if count % INDEX_EVERY == 0:
                active.positions.append(position)
            position += len(parts[i]) + len(parts[i + 1])
            count += 1
        active.size = position
        active.count = count
        active.last_time_ms = time_ms
        policy = self._settings.fsync
        if policy is FsyncPolicy.NEVER:
            self.committed_offset = active.end
        else:
            self._dirty.add(active.fd)
            if policy is FsyncPolicy.INTERVAL:
                self.committed_offset = active.end
            else:
                self._sync_soon()
        return first

    def read(self, offset: int, max_messages: int) -> list[bytes | None]:
        if offset < self.first_offset:
            raise IndexError(f"offset {offset} is before the log's start {self.first_offset}")
        wanted = min(max_messages, self.committed_offset - offset)
        out: list[bytes | None] = []
        number = bisect.bisect_right(self._bases, offset) - 1
        while len(out) < wanted:
            segment = self._segments[number]
            try:
                out += segment.read(offset + len(out), wanted - len(out))
            except OSError as error:
                raise StoreError(f"could not read {segment.path}: {error}") from error
            if out[-1] is None or number + 1 == len(self._segments):
                break
            number += 1
        return out

    def offset_at(self, when: float) -> int:
        """Segments in order: the first whose last record is stamped at or
        after `when` holds the offset (records carry their append time)."""
        when_ms = int(when * 1000)
        for segment in self._segments:
            if segment.count and segment.last_time_ms >= when_ms:
                try:
                    return max(segment.offset_at(when_ms), self.first_offset)
                except OSError as error:
                    raise StoreError(f"could not read {segment.path}: {error}") from error
        return self.next_offset

    def watch(self, grew: Callable[[], None]) -> None:
        """Nothing else appends to this log."""

    def flush(self) -> Deferred[None]:
        if self.committed_offset >= self.next_offset and not self._dirty:
            return succeed(None)
        if self.failed is not None:
            return fail(StoreError(self.failed))
        if self._settings.fsync is FsyncPolicy.NEVER:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._flushes.append((self.next_offset, done))
        self._sync_soon()
        return done

    def apply_retention(self, now: float | None) -> int:
        retention = self._settings.retention
        segments = self._segments
        before = self.first_offset
        total_bytes = sum(s.size for s in segments)
        total_messages = self.next_offset - self.first_offset
        oldest_allowed_ms = (
            None if retention.max_age is None or now is None else (now - retention.max_age) * 1000
        )
        while len(segments) > 1:
            oldest = segments[0]
            too_many = (
                retention.max_messages is not None
                and total_messages - oldest.count >= retention.max_messages
                # Not what durable consumers have yet to ack.
                and (self.keep_from is None or oldest.end <= self.keep_from)
            )
            too_big = (
                retention.max_bytes is not None and total_bytes - oldest.size >= retention.max_bytes
            )
            too_old = oldest_allowed_ms is not None and oldest.last_time_ms < oldest_allowed_ms
            if not (too_many or too_big or too_old):
                break
            segments.pop(0)
            self._bases.pop(0)
            total_bytes -= oldest.size
            total_messages -= oldest.count
            self._dirty.discard(oldest.fd)
            oldest.close()
            self._remove_files(oldest.path)
        return self.first_offset - before

    def purge(self) -> int:
        """Start a new segment at the end and remove every segment before it."""
        dropped = self.next_offset - self.first_offset
        segments = self._segments
        if segments[-1].count:
            self._roll()
        while len(segments) > 1:
            oldest = segments.pop(0)
            self._bases.pop(0)
            self._dirty.discard(oldest.fd)
            oldest.close()
            self._remove_files(oldest.path)
        return dropped

    def close(self) -> None:
        if self._settings.fsync is not FsyncPolicy.NEVER and self.failed is None:
            for segment in self._segments:
                if segment.fd in self._dirty:
                    try:
                        self._disk.fsync(segment.fd)
                    except OSError as error:
                        log.error(
                            "could not sync {path}: {error}", path=str(segment.path), error=error
                        )
        self._dirty.clear()
        if self.failed is None:
            self.committed_offset = self.next_offset
        for segment in self._segments:
            segment.close()

    # Compaction (broker.core.keys decides what goes).

    def compact(self, dropped: Sequence[int], now: bool = False) -> Deferred[list[int]]:
        """Drop the messages at the offsets `dropped` (ascending) that closed
        segments hold: each such segment is rewritten in a thread with gap
        runs in their place, then swapped in atomically. Fires with how many
        were dropped (the active segment's wait until it is closed)."""
        if self._compacting or not dropped:
            return succeed([])
        active = self._segments[-1]
        if now and active.count and dropped[-1] >= active.base:
            self._roll()  # what it holds may go too
        plans = []
        for segment in self._segments[:-1]:
            low = bisect.bisect_left(dropped, segment.base)
            high = bisect.bisect_left(dropped, segment.end)
            if high > low:
                plans.append((segment, frozenset(dropped[low:high])))
        if not plans:
            return succeed([])
        self._compacting = True

        async def run() -> list[int]:
            done: list[int] = []
            try:
                for segment, drop in plans:
                    if await self._compact_segment(segment, drop):
                        done += sorted(drop)
            finally:
                self._compacting = False
            return done

        return Deferred.fromCoroutine(run())

    async def _compact_segment(self, segment: Segment, drop: frozenset[int]) -> bool:
        """Rewrite one segment without `drop`; whether it was swapped in."""
        target = segment.path.with_name(segment.path.name + COMPACTING_SUFFIX)
        disk = self._disk
        try:
            rewritten: Rewritten = await self._blocking(
                rewrite_segment, segment.path, segment.base, drop, target, disk
            )
        except (OSError, DamagedSegment) as error:
            log.warn("compaction of {path} skipped: {error}", path=str(segment.path), error=error)
            with contextlib.suppress(OSError):
                disk.unlink(target)
            return False
        while segment in self._segments and (segment.fd in self._dirty or self._syncing):
            # Its fd is being synced: swap once that is done.
            await deferLater(self._reactor, 0.01, lambda: None)
        if (
            segment not in self._segments
            or segment.fd < 0  # the log was closed meanwhile
            or rewritten.count != segment.count
        ):
            with contextlib.suppress(OSError):
                disk.unlink(target)  # retention took it meanwhile
            return False
        # Without its old index first: a crash between the two renames
        # leaves a segment that is read whole at the next start.
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(segment.index_path)
        disk.replace(target, segment.path)
        fsync_directory(disk, self.directory)
        fd = disk.open(segment.path, os.O_RDWR)
        disk.close(segment.fd)
        segment.fd = fd
        segment.size = segment.synced = rewritten.size
        segment.positions = rewritten.positions
        try:
            segment.write_index()
        except OSError as error:
            log.warn("could not write {path}: {error}", path=str(segment.index_path), error=error)
        return True

    # Internals.

    def _roll(self) -> Segment:
        """Close the active segment (index written, data synced) and start
        another. The old one's records are fsynced first, here: a new
        segment on disk must never follow an old one whose tail a crash
        could still take, or the start would find a hole in the offsets."""
        old = self._segments[-1]
        self._sync_closing(old)
        try:
            new = self._create_segment(old.end)
        except OSError as error:
            raise StoreError(f"could not start a segment: {error.strerror}") from error
        try:
            old.write_index()
        except OSError as error:
            log.warn(
                "could not write {path}: {error}; it will be rebuilt at start",
                path=str(old.index_path),
                error=error,
            )
        self._add_segment(new)
        self.apply_retention(None)  # whole segments go, so only a roll can free one
        return new

    def _sync_closing(self, segment: Segment) -> None:
        """fsync a segment that is closing, now (a group fsync of its last
        records may still be under way), unless fsync is off."""
        if self._settings.fsync is FsyncPolicy.NEVER:
            return
        try:
            self._disk.fsync(segment.fd)
        except OSError as error:
            self._sync_failed(Failure(error), [])
            raise StoreError(self.failed or str(error)) from error
        segment.synced = segment.size

    def _replace_vanished(self, active: Segment) -> Segment:
        """The active segment's file was deleted under us: what it held is
        still readable until restart, then lost; new records go to a new file."""
        log.error(
            "{path} vanished; its {count} message(s) will be gone after a restart; "
            "continuing in a new segment",
            path=str(active.path),
            count=active.count,
        )
        try:
            self._ensure_directory()
        except OSError as error:
            raise StoreError(f"could not store message: {error.strerror or error}") from error
        return self._roll()

    def _sync_soon(self) -> None:
        """Group commit: one fsync covers everything appended before it starts."""
        if self._syncing or not self._dirty:
            return
        self._syncing = True
        fds = list(self._dirty)
        self._dirty.clear()
        covered = self.next_offset
        sizes = [(segment, segment.size) for segment in self._segments if segment.fd in fds]
        started = time.monotonic()
        synced = self._blocking(_fsync_all, self._disk, fds)
        if self._on_fsync is not None:
            on_fsync = self._on_fsync
            synced.addCallback(lambda result: on_fsync(time.monotonic() - started) or result)
        synced.addCallbacks(
            self._synced, self._sync_failed, callbackArgs=(covered, sizes), errbackArgs=(fds,)
        )

    def _synced(self, _: object, covered: int, sizes: list[tuple[Segment, int]]) -> None:
        self._syncing = False
        for segment, size in sizes:
            segment.synced = max(segment.synced, size)
        self.committed_offset = max(self.committed_offset, covered)
        ready = [d for upto, d in self._flushes if upto <= covered]
        self._flushes = [(upto, d) for upto, d in self._flushes if upto > covered]
        for done in ready:
            done.callback(None)
        self._sync_soon()

    def _sync_failed(self, failure: Any, fds: list[int]) -> None:
        """A failed fsync may have dropped what it was to write (Linux marks
        the pages clean): a later fsync that succeeds proves nothing of
        them. So nothing appended since the last good fsync is confirmed or
        delivered, and the log takes no more until the broker restarts and
        reads what the disk really holds (as PostgreSQL does since 2018).
        What the cache holds past the last good fsync is cut off first, so
        that the restarted broker does not read it from the cache as if it
        were on the disk."""
        self._syncing = False
        self._cut_unsynced()
        self.failed = (
            f"could not store message: fsync failed in {self.directory} "
            f"({failure.getErrorMessage()}); restart the broker"
        )
        log.critical(
            "fsync failed in {dir}: {error}; the {count} message(s) since the last good "
            "fsync are not confirmed, and topic {topic!r} takes no more until the broker "
            "restarts",
            dir=str(self.directory),
            error=failure.getErrorMessage(),
            count=self.next_offset - self.committed_offset,
            topic=self.topic,
        )
        self._dirty.clear()
        flushes, self._flushes = self._flushes, []
        for _, done in flushes:
            done.errback(StoreError(self.failed))

    def _cut_unsynced(self) -> None:
        """Truncate each segment to what an fsync is known to have written."""
        for segment in self._segments:
            if segment.size > segment.synced and segment.fd >= 0:
                try:
                    self._disk.ftruncate(segment.fd, segment.synced)
                except OSError as error:
                    log.error("could not cut {path}: {error}", path=str(segment.path), error=error)

    def _remove_files(self, path: Path) -> None:
        for victim in (path, path.with_suffix(".index")):
            try:
                self._disk.unlink(victim)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warn("could not remove {path}: {error}", path=str(victim), error=error)


def _fsync_all(disk: Disk, fds: list[int]) -> None:
    for fd in fds:
        try:
            disk.fsync(fd)
        except OSError as error:
            if error.errno != errno.EBADF:  # closed meanwhile (retention)
                raise


def _in_thread(reactor: Any) -> Blocking:
    """Run blocking disk work in the reactor's thread pool."""

    def blocking(work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work, *args)

    return blocking


@implementer(IMessageStore)
class FileStore(OneNodeStore):
    """The data directory: one FileLog per topic, found again at start, and
    the durable consumers' positions in `consumers.jsonl` beside them."""

    kind = "file"

    def __init__(
        self,
        root: Path,
        settings: FileStoreSettings,
        reactor: Any,
        on_fsync: Callable[[float], None] | None = None,
        disk: Disk = OS_DISK,
        blocking: Blocking | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.settings = settings
        self._reactor = reactor
        self._on_fsync = on_fsync
        self._disk = disk
        self._blocking = blocking
        self.logs: dict[str, FileLog] = {}
        self.positions = PositionStore(self.root, settings.fsync, disk)

    def start(self) -> None:
        """Make sure the directory can be written, and read the positions."""
        disk = self._disk
        try:
            missing = []
            directory = self.root
            while not disk.isdir(directory):
                missing.append(directory)
                directory = directory.parent
            for directory in reversed(missing):
                disk.mkdir(directory)
            probe = self.root / ".writable"
            write_file(disk, probe, b"", sync=False)
            disk.unlink(probe)
        except OSError as error:
            raise StoreError(f"data directory {self.root} is not usable: {error}") from error
        try:
            self.positions.open()
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot keep consumer positions in {self.root}: {error}") from None

    def held_topics(self) -> list[str]:
        return self.topic_names()

    def sync(self) -> None:
        self.sync_all()

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "data_dir": str(self.root),
            "damaged_records": sum(log_.damaged_records for log_ in self.logs.values()),
            "failed_topics": sorted(name for name, log_ in self.logs.items() if log_.failed),
        }

    def delete(self, name: str) -> None:
        """Remove the topic's directory (its log closed first)."""
        topic_log = self.logs.pop(name, None)
        if topic_log is not None:
            topic_log.close()
        directory = self.root / topic_directory_name(name)
        try:
            self._disk.rmtree(directory)
            fsync_directory(self._disk, self.root)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StoreError(
                f"could not delete topic {name!r}: {error.strerror or error}"
            ) from error

    def topic_names(self) -> list[str]:
        """The names of the topics stored here."""
        names = []
        disk = self._disk
        for entry in sorted(self.root / name for name in disk.listdir(self.root)):
            name_file = entry / FileLog.NAME_FILE
            try:
                name = read_file(disk, name_file).decode("utf-8")
            except (OSError, UnicodeDecodeError):
                if disk.isdir(entry):
                    log.warn("{entry} holds no readable topic name; ignored", entry=str(entry))
                continue
            if topic_directory_name(name) != entry.name:
                log.warn(
                    "{entry} names topic {name!r}, which maps elsewhere; ignored",
                    entry=str(entry),
                    name=name,
                )
                continue
            names.append(name)
        return names

    def open(self, topic: str) -> FileLog:
        """The log of `topic`, recovered from disk or created."""
        directory = self.root / topic_directory_name(topic)
        if directory.parent != self.root:  # cannot happen; the name has no '/' or '.'
            raise StoreError(f"topic {topic!r} maps outside the data directory")
        started = time.monotonic()
        try:
            topic_log = FileLog(
                topic,
                directory,
                self.settings,
                self._reactor,
                self._on_fsync,
                self._disk,
                self._blocking,
            )
        except OSError as error:
            where = error.filename or directory
            raise StoreError(
                f"could not open topic {topic!r} ({where}): {error.strerror or error}"
            ) from error
        self.logs[topic] = topic_log
        elapsed = time.monotonic() - started
        if elapsed > 0.1:
            log.info(
                "opened {topic!r} ({count} messages) in {seconds:.2f} s",
                topic=topic,
                count=topic_log.next_offset - topic_log.first_offset,
                seconds=elapsed,
            )
        return topic_log

    def sync_all(self) -> None:
        """The interval policy's tick: sync every log with unsynced writes."""
        for topic_log in self.logs.values():
            if topic_log._dirty:
                topic_log.flush()

    def close(self) -> Deferred[None]:
        for topic_log in self.logs.values():
            topic_log.close()
        self.logs.clear()
        self.positions.close()
        return succeed(None)
