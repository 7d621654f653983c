"""Keys and compacted topics: which topics are compacted, and, for each, the
index of its keys (the latest offset of each, the offsets its log still
holds of each, and when each deletion was written), from which the
key-value view answers without replaying the topic and compaction learns
what may go.

A message's key is its `Key` header; one with an empty payload is a
tombstone: the key is deleted. Compaction keeps at least the latest message
of every key and drops the older ones (their offsets stay, as gaps); a
tombstone is dropped too once it is older than the tombstone retention, and
its key forgotten."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker.subjects import matches
from broker.wire.headers import expected_revision, message_key, wrong_revision

DEFAULT_TOMBSTONE_RETENTION = 24 * 3600.0
KV_PATTERN = "kv.>"
"""The topics of the key-value view's buckets (`kv.BUCKET`): always compacted."""


@dataclass
class Compaction:
    """Which topics are compacted: those matching one of `patterns`, and
    those an operator turned it on for (`on`), but those turned off."""

    patterns: tuple[str, ...] = (KV_PATTERN,)
    on: set[str] = field(default_factory=set)
    off: set[str] = field(default_factory=set)

    def applies_to(self, topic: str) -> bool:
        if topic in self.on:
            return True
        if topic in self.off:
            return False
        return any(matches(pattern, topic) for pattern in self.patterns)


@dataclass
class KeyEntry:
    """One key of a compacted topic: the offsets held of it, oldest first
    (the last is its latest), and whether the latest deletes it (and when)."""

    offsets: list[int]
    deleted_at: float | None = None


def entry_has(entry: KeyEntry | None, offset: int) -> bool:
    return entry is not None and offset in entry.offsets


class KeyIndex:
    """The keys of one compacted topic."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyEntry] = {}
        self.superseded = 0
        """Offsets held that are no longer any key's latest (what compaction drops)."""
        self.next_offset = 0
        """The offset after the last message indexed."""

    @classmethod
    def from_revisions(cls, next_offset: int, revisions: dict[str, str]) -> KeyIndex:
        """The index a shared store's key revisions make ({key: "7,12,19d"}:
        its latest offsets, oldest first, a deletion's marked "d"), for the
        key-value view's answers (not for compaction: when a deletion
        happened is not kept)."""
        index = cls()
        index.next_offset = next_offset
        for key, entries in revisions.items():
            listed = entries.split(",")
            deleted = 0.0 if listed[-1].endswith("d") else None
            index.keys[key] = KeyEntry([int(entry.rstrip("d")) for entry in listed], deleted)
        return index

    def __len__(self) -> int:
        """Keys that exist (not deleted)."""
        return sum(1 for entry in self.keys.values() if entry.deleted_at is None)

    def add(
        self,
        payloads: Sequence[bytes | None],
        first: int,
        now: float,
        known: Sequence[str | None] | None = None,
    ) -> None:
        """Index messages appended (or read back) from offset `first`
        (their keys `known` already, if the caller read them)."""
        keys = self.keys
        for index, (offset, payload) in enumerate(enumerate(payloads, first)):
            if payload is None:
                continue
            key = message_key(payload) if known is None else known[index]
            if key is None:
                continue
            if offset < self.next_offset and entry_has(keys.get(key), offset):
                continue  # indexed already (a publish stored before, sent again)
            entry = keys.get(key)
            if entry is None:
                entry = keys[key] = KeyEntry([])
            elif entry.offsets:
                self.superseded += 1
            entry.offsets.append(offset)
            entry.deleted_at = None if payload else now
        self.next_offset = max(self.next_offset, first + len(payloads))

    def has_tombstones(self) -> bool:
        return any(entry.deleted_at is not None for entry in self.keys.values())

    def latest(self, key: str) -> int | None:
        """The offset of `key`'s latest message, or None if it has none or
        was deleted."""
        entry = self.keys.get(key)
        if entry is None or entry.deleted_at is not None or not entry.offsets:
            return None
        return entry.offsets[-1]

    def revision(self, key: str) -> int:
        """`key`'s revision: the offset of its latest message (a deletion's
        too) plus one; 0 if none is held (what a compare-and-set names as
        "no such key")."""
        entry = self.keys.get(key)
        return entry.offsets[-1] + 1 if entry is not None and entry.offsets else 0

    def history(self, key: str) -> list[int]:
        entry = self.keys.get(key)
        return list(entry.offsets) if entry is not None else []

    def names(self, prefix: str = "") -> list[str]:
        """The keys that exist, those starting with `prefix`, sorted."""
        return sorted(
            key
            for key, entry in self.keys.items()
            if entry.deleted_at is None and key.startswith(prefix)
        )

    def latest_revisions(self, prefix: str = "") -> dict[str, int]:
        """Key -> its latest offset (deletions included: a watcher skips what
        came before them), for the keys starting with `prefix`."""
        return {
            key: entry.offsets[-1]
            for key, entry in self.keys.items()
            if entry.offsets and key.startswith(prefix)
        }

    def droppable(self, now: float, tombstone_retention: float, before: int) -> list[int]:
        """The offsets below `before` compaction may drop: every key's older
        messages, and the tombstones older than `tombstone_retention`."""
        dropped: list[int] = []
        for entry in self.keys.values():
            offsets = entry.offsets
            keep = len(offsets) - 1
            dropped += [offset for offset in offsets[:keep] if offset < before]
            if (
                entry.deleted_at is not None
                and now - entry.deleted_at >= tombstone_retention
                and offsets
                and offsets[-1] < before
            ):
                dropped.append(offsets[-1])
        dropped.sort()
        return dropped

    def forget(self, dropped: Iterable[int]) -> None:
        """Compaction dropped these offsets: forget them (and the keys left
        with none)."""
        gone = set(dropped)
        for key in list(self.keys):
            entry = self.keys[key]
            kept = [offset for offset in entry.offsets if offset not in gone]
            removed = len(entry.offsets) - len(kept)
            if not removed:
                continue
            if not kept:
                del self.keys[key]
                self.superseded -= removed - 1
            else:
                entry.offsets = kept
                self.superseded -= removed
        self.superseded = max(self.superseded, 0)


ERR_NO_KEY = "a compacted topic takes messages with a Key header"


def refusals(
    payloads: Sequence[bytes], index: KeyIndex | None
) -> tuple[list[str | None] | None, list[str | None]]:
    """Why each publish of a batch to a compacted topic may not be stored
    (None where it may): it has no key, or it names an `Expected-Revision`
    its key has moved on from (a key written earlier in the batch has moved
    on too); None if all may. And each one's key, read once for the index.
    Without an index (a shared store, which checks revisions itself as it
    appends) only the keys are checked."""
    found: list[str | None] = []
    keys: list[str | None] = []
    touched: set[str] = set()
    refused = False
    for payload in payloads:
        key = message_key(payload)
        keys.append(key)
        if key is None:
            found.append(ERR_NO_KEY)
            refused = True
            continue
        problem = None
        expected = expected_revision(payload) if index is not None else ""
        if expected and index is not None:
            if key in touched:
                problem = wrong_revision(key, None)
            elif expected != str(index.revision(key)):
                problem = wrong_revision(key, index.revision(key))
        if problem is None:
            touched.add(key)
        else:
            refused = True
        found.append(problem)
    return (found if refused else None), keys


def merged(outcome: int | str | list[int | str], refused: list[str | None]) -> list[int | str]:
    """Each publish's outcome: the refusals where there are, and for the
    others what the store said of those appended (from a first offset, or
    listed, or one error for all)."""
    stored = sum(1 for problem in refused if problem is None)
    if isinstance(outcome, int):
        given: list[int | str] = list(range(outcome, outcome + stored))
    elif isinstance(outcome, str):
        given = [outcome] * stored
    else:
        given = list(outcome)
    taken = iter(given)
    return [problem if problem is not None else next(taken) for problem in refused]
