"""Positions of durable consumers, kept by the broker so that a consumer
that restarts (or another process with its name) resumes exactly where it
was, with no state of its own.

A position is the lowest offset not yet acked, the offsets above it already
acked, and how far messages were handed out (those below are redeliveries
after a restart). With a data directory, positions live in
`consumers.jsonl`: each change of a consumer appends its whole position as
one JSON line (the last line of a consumer wins at start), written after
each read that changed any, fsynced as --fsync says, and rewritten whole
once the file holds four times what is live, so that it does not grow with
the number of acks. Without one they live as long as the broker.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from broker.log.disk import OS_DISK, Disk, fsync_directory, read_file, write_all, write_file
from broker.log.interface import FsyncPolicy

log = Logger()

POSITIONS_FILE = "consumers.jsonl"
# Rewrite the file once it is this many times larger than its live records
# (and past COMPACT_AT bytes).
COMPACT_RATIO = 4
COMPACT_AT = 64 * 1024


def owner_of(name: str) -> str:
    """Whose bound a durable name counts against: `alice:` for alice's own
    `alice:billing`, the name itself for a shared (or unowned) name."""
    owner, colon, _ = name.partition(":")
    return owner + colon if colon else name


@dataclass
class Position:
    """Where one durable consumer of one topic is."""

    low: int
    """The lowest offset not yet acked (or given up on)."""
    acked: set[int] = field(default_factory=set)
    """Offsets above `low` already acked."""
    delivered: int = 0
    """Messages below this offset were handed out at least once."""
    touched: float = 0.0
    """When it last changed (seconds since the epoch)."""

    def done(self, offset: int) -> None:
        """`offset` was acked, or given up on: the position moves past it."""
        if offset < self.low:
            return
        if offset == self.low:
            self.low += 1
            while self.low in self.acked:
                self.acked.remove(self.low)
                self.low += 1
        else:
            self.acked.add(offset)

    def record(self, topic: str, name: str) -> dict[str, Any]:
        return {
            "topic": topic,
            "name": name,
            "low": self.low,
            "acked": sorted(self.acked),
            "delivered": self.delivered,
            "touched": self.touched,
        }


class PositionStore:
    """The positions of every durable consumer, by (topic, name)."""

    def __init__(
        self,
        directory: Path | None = None,
        fsync: FsyncPolicy = FsyncPolicy.NEVER,
        disk: Disk = OS_DISK,
    ):
        self.positions: dict[tuple[str, str], Position] = {}
        self.kept: Counter[str] = Counter()
        """Positions per owner (`user:` of a user's own names, see
        broker.security.users) or per shared name: what a user's bound counts."""
        self._dirty: set[tuple[str, str]] = set()
        self._fsync = fsync
        self._path = Path(directory) / POSITIONS_FILE if directory is not None else None
        self._disk = disk
        self._file: int | None = None
        """The positions file, open for appending (its descriptor)."""
        self._file_size = 0
        self._unsynced = False
        self._rewritten_size = 0  # the file's size after its last rewrite

    def open(self) -> None:
        """Read the positions kept in the directory, if any (once, at start:
        not when made, so that twistd has dropped its privileges first)."""
        if self._path is not None and self._file is None:
            self._load(self._path)
            self._rewrite()

    def __len__(self) -> int:
        return len(self.positions)

    def get(self, topic: str, name: str) -> Position | None:
        return self.positions.get((topic, name))

    def put(self, topic: str, name: str, position: Position) -> None:
        if (topic, name) not in self.positions:
            self.kept[owner_of(name)] += 1
        self.positions[(topic, name)] = position
        self._dirty.add((topic, name))

    def _forget(self, key: tuple[str, str]) -> None:
        if self.positions.pop(key, None) is not None:
            owner = owner_of(key[1])
            self.kept[owner] -= 1
            if not self.kept[owner]:
                del self.kept[owner]

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def flush(self) -> None:
        """Write the positions changed since the last flush (fsynced under
        --fsync always). If the disk refuses (full, failing), the file is
        cut back to its last whole line and the positions are written again
        at the next flush: until then a restart would redeliver, never skip."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        if self._file is None:
            return
        lines = []
        for key in dirty:
            position = self.positions.get(key)
            record = position.record(*key) if position else {"topic": key[0], "name": key[1]}
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        data = "".join(lines).encode("utf-8")
        try:
            write_all(self._disk, self._file, data)
            if self._fsync is FsyncPolicy.ALWAYS:
                self._disk.fsync(self._file)
        except OSError as error:
            self._dirty |= dirty
            self._refused("write", error)
            return
        self._file_size += len(data)
        if self._fsync is not FsyncPolicy.ALWAYS:
            self._unsynced = True
        # Compared with the size of the last rewrite: no walk over every
        # position on each flush.
        if self._file_size > max(COMPACT_AT, COMPACT_RATIO * self._rewritten_size):
            try:
                self._rewrite()
            except OSError as error:
                log.error(
                    "could not rewrite {path}: {error}; appending to it as before",
                    path=str(self._path),
                    error=error,
                )

    def sync(self) -> None:
        """fsync what was written (the --fsync interval timer calls this)."""
        if self._file is not None and self._unsynced and self._fsync is not FsyncPolicy.NEVER:
            try:
                self._disk.fsync(self._file)
            except OSError as error:
                self._dirty |= set(self.positions)  # (all of them: which were lost is unknown)
                self._refused("sync", error)
                return
            self._unsynced = False

    def _refused(self, what: str, error: OSError) -> None:
        """The disk refused a write or an fsync of the file: cut it back to
        its last line known whole (nothing half-written for the next line
        to run into), and say so."""
        assert self._file is not None
        with contextlib.suppress(OSError):
            self._disk.ftruncate(self._file, self._file_size)
        log.error(
            "could not {what} consumer positions in {path}: {error}; kept in memory and "
            "written again at the next change (a restart before then redelivers)",
            what=what,
            path=str(self._path),
            error=error,
        )

    def remove(self, topic: str, name: str) -> bool:
        """Forget one durable consumer's position (written at the next
        flush); whether there was one."""
        key = (topic, name)
        if key not in self.positions:
            return False
        self._forget(key)
        self._dirty.add(key)
        return True

    def of_topic(self, topic: str) -> list[str]:
        """The names of the durable consumers of `topic` with a position."""
        return sorted(name for kept_topic, name in self.positions if kept_topic == topic)

    def forget_idle(self, now: float, idle: float) -> list[tuple[str, str]]:
        """Forget positions unchanged for `idle` seconds; return whose."""
        gone = [key for key, p in self.positions.items() if now - p.touched > idle]
        for key in gone:
            self._forget(key)
            self._dirty.add(key)
        return gone

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self.sync()
            self._disk.close(self._file)
            self._file = None

    def abandon(self) -> None:
        """Let go of the file with nothing more written (the process died)."""
        self._dirty.clear()
        if self._file is not None:
            self._disk.close(self._file)
            self._file = None

    @property
    def size(self) -> int:
        """Bytes of the positions file (0 without one)."""
        return self._file_size if self._file is not None else 0

    def _load(self, path: Path) -> None:
        try:
            text = read_file(self._disk, path).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                key = (record["topic"], record["name"])
                if "low" not in record:
                    self._forget(key)  # forgotten
                    continue
                if key not in self.positions:
                    self.kept[owner_of(key[1])] += 1
                self.positions[key] = Position(
                    int(record["low"]),
                    {int(offset) for offset in record["acked"]},
                    int(record["delivered"]),
                    float(record["touched"]),
                )
            except (ValueError, KeyError, TypeError):
                # A line cut by a crash (the last) or damaged: the lines
                # before it still hold.
                log.warn(
                    "{path}:{number}: unreadable position; skipped", path=str(path), number=number
                )

    def _rewrite(self) -> None:
        """Write the live positions to a new file and put it in place."""
        assert self._path is not None
        disk = self._disk
        fresh = self._path.with_suffix(".jsonl.new")
        data = "".join(
            json.dumps(position.record(*key), separators=(",", ":")) + "\n"
            for key, position in self.positions.items()
        ).encode("utf-8")
        synced = self._fsync is not FsyncPolicy.NEVER
        try:
            write_file(disk, fresh, data, sync=synced)
            disk.replace(fresh, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                disk.unlink(fresh)
            raise  # (the file in place, and the one open, are as they were)
        opened = disk.open(self._path, os.O_WRONLY | os.O_APPEND)
        if self._file is not None:
            disk.close(self._file)
        self._file = opened
        self._file_size = self._rewritten_size = len(data)
        self._dirty.clear()
        if synced:
            fsync_directory(disk, self._path.parent)
