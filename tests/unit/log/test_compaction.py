"""Compaction of the file store: closed segments rewritten with gap runs in
place of the dropped messages, swapped in atomically; offsets never change,
reads see gaps, and a restart (after a crash at any point of a rewrite)
reads every segment back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from broker.log import FileStore, FileStoreSettings, FsyncPolicy
from broker.log.compaction import COMPACTING_SUFFIX, rewrite_segment
from broker.log.records import GAP, encode_gap, read_records
from broker.wire.headers import Headers, encode_headers, with_headers


def store(tmp_path: Path) -> FileStore:
    opened = FileStore(
        tmp_path, FileStoreSettings(segment_bytes=4096, fsync=FsyncPolicy.ALWAYS), reactor
    )
    opened.start()
    return opened


def update(key: int, version: int) -> bytes:
    return with_headers(
        b"value %d of k%d " % (version, key) + b"x" * 40, encode_headers([("Key", f"k{key}")])
    )


def read_all(topic_log) -> list[bytes | None]:
    out: list[bytes | None] = []
    offset = topic_log.first_offset
    while offset < topic_log.next_offset:
        batch = topic_log.read(offset, 100)
        out.extend(batch)
        offset += len(batch)
    return out


def test_a_gap_run_reads_back_as_the_offsets_it_stands_for(tmp_path):
    path = tmp_path / "records"
    path.write_bytes(encode_gap(10, 5, 1234))
    fd = os.open(path, os.O_RDONLY)
    try:
        ((_, _, offset, time_ms, payload, count),) = list(
            read_records(fd, 0, path.stat().st_size, with_payload=True)
        )
    finally:
        os.close(fd)
    assert (offset, time_ms, payload, count) == (10, 1234, GAP, 5)


@pytest_twisted.ensureDeferred
async def test_closed_segments_are_rewritten_without_what_was_dropped(tmp_path):
    files = store(tmp_path)
    topic_log = files.open("kv.b")
    written = [update(n % 10, n // 10) for n in range(500)]
    for start in range(0, 500, 50):
        topic_log.append(written[start : start + 50])
    await topic_log.flush()
    before = topic_log.size
    latest = {n % 10: n for n in range(500)}
    dropped = sorted(set(range(500)) - set(latest.values()))
    done = await topic_log.compact(dropped)
    assert done and set(done) <= set(dropped)
    assert topic_log.size < before / 3
    held = read_all(topic_log)
    assert len(held) == 500  # offsets never change
    for offset, payload in enumerate(held):
        if offset in done:
            assert payload is None  # a gap
        else:
            assert payload == written[offset]
            assert Headers.of(payload)["Key"] == f"k{offset % 10}"
    assert topic_log.offset_at(0) == 0
    files.close()
    # Read back from disk after a restart: the same, and appends go on.
    again = store(tmp_path)
    reopened = again.open("kv.b")
    assert read_all(reopened) == held
    assert reopened.append([update(0, 99)]) == 500
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_rewrite_a_crash_cut_short_is_removed_and_nothing_is_lost(tmp_path):
    files = store(tmp_path)
    topic_log = files.open("kv.c")
    written = [update(n % 3, n) for n in range(300)]
    topic_log.append(written)
    topic_log.append([update(0, 1000)])  # (rolls as segments fill)
    await topic_log.flush()
    segment = topic_log._segments[0]
    # As if killed mid-rewrite: a half-written file beside the segment.
    partial = segment.path.with_name(segment.path.name + COMPACTING_SUFFIX)
    rewrite_segment(segment.path, segment.base, frozenset(range(0, 20)), partial)
    partial.write_bytes(partial.read_bytes()[:100])
    # ... or between the index's removal and the rename.
    segment.index_path.unlink()
    files.close()
    again = store(tmp_path)
    reopened = again.open("kv.c")
    assert not list(reopened.directory.glob("*" + COMPACTING_SUFFIX))
    assert read_all(reopened) == [*written, update(0, 1000)]
    again.close()
