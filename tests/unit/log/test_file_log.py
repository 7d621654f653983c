"""The file store: records, segments, index, recovery, retention, names, disk trouble."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock

from broker.log import FileStore, FileStoreSettings, FsyncPolicy, MemoryLog, Retention, StoreError
from broker.log import file as file_module
from broker.log.file import FileLog, topic_directory_name
from broker.log.positions import POSITIONS_FILE
from broker.log.records import HEADER
from broker.wire.headers import Headers, encode_headers, with_headers
from tests.disks import FillableDisk


def store(tmp_path: Path, **settings) -> FileStore:
    settings.setdefault("fsync", FsyncPolicy.NEVER)
    store = FileStore(tmp_path, FileStoreSettings(**settings), reactor)
    store.start()
    return store


def payloads(start: int, stop: int) -> list[bytes]:
    return [b"message %d " % i + b"x" * (i % 50) for i in range(start, stop)]


def read_all(topic_log) -> list[bytes]:
    out: list[bytes] = []
    offset = topic_log.first_offset
    while offset < topic_log.committed_offset:
        batch = topic_log.read(offset, 100)
        out.extend(batch)
        offset += len(batch)
    return out


def test_round_trip_and_reopen(tmp_path):
    s = store(tmp_path)
    topic_log = s.open("orders")
    assert topic_log.append(payloads(0, 10)) == 0
    assert topic_log.append(payloads(10, 25)) == 10
    assert read_all(topic_log) == payloads(0, 25)
    s.close()
    again = store(tmp_path)
    assert again.topic_names() == ["orders"]
    reopened = again.open("orders")
    assert (reopened.first_offset, reopened.next_offset) == (0, 25)
    assert read_all(reopened) == payloads(0, 25)
    assert reopened.append([b"next"]) == 25


def test_a_purge_drops_every_segment_and_offsets_go_on_after_a_restart(tmp_path):
    s = store(tmp_path, segment_bytes=1000)
    topic_log = s.open("orders")
    for i in range(0, 100, 10):
        topic_log.append(payloads(i, i + 10))
    assert len(list(topic_log.directory.glob("*.log"))) > 2
    assert topic_log.purge() == 100
    assert (topic_log.first_offset, topic_log.next_offset) == (100, 100)
    assert len(list(topic_log.directory.glob("*.log"))) == 1  # the new, empty one
    assert topic_log.purge() == 0  # nothing more to drop, no new segment
    assert topic_log.append([b"after"]) == 100
    s.close()
    reopened = store(tmp_path, segment_bytes=1000).open("orders")
    assert (reopened.first_offset, reopened.next_offset) == (100, 101)
    assert read_all(reopened) == [b"after"]


def test_a_deleted_topic_leaves_nothing_on_disk(tmp_path):
    s = store(tmp_path)
    s.open("orders").append(payloads(0, 5))
    s.open("audit").append(payloads(0, 1))
    s.delete("orders")
    assert s.topic_names() == ["audit"]
    s.close()
    assert store(tmp_path).topic_names() == ["audit"]
    store(tmp_path).delete("never-there")  # nothing to remove is no error


def test_segments_roll_and_reads_cross_them(tmp_path):
    s = store(tmp_path, segment_bytes=1000)
    topic_log = s.open("t")
    for i in range(0, 300, 7):
        topic_log.append(payloads(i, min(300, i + 7)))
    files = sorted(p.name for p in topic_log.directory.iterdir())
    logs = [f for f in files if f.endswith(".log")]
    assert len(logs) > 10
    assert len([f for f in files if f.endswith(".index")]) == len(logs) - 1
    assert read_all(topic_log) == payloads(0, 300)
    s.close()
    # Rolled segments are reopened through their index; without it, by reading them.
    (topic_log.directory / logs[3].replace(".log", ".index")).unlink()
    reopened = store(tmp_path, segment_bytes=1000).open("t")
    assert read_all(reopened) == payloads(0, 300)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(min_value=0, max_value=499), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=80),
)
def test_seeking_anywhere(tmp_path_factory, offsets, count):
    root = tmp_path_factory.mktemp("seek")
    topic_log = store(root, segment_bytes=2048).open("t")
    topic_log.append(payloads(0, 500))
    expected = payloads(0, 500)
    for offset in offsets:
        assert (
            topic_log.read(offset, count)
            == expected[offset : offset + count][: len(topic_log.read(offset, count))]
        )
        assert topic_log.read(offset, count)[0] == expected[offset]


def test_a_torn_tail_is_truncated_at_the_last_good_record(tmp_path, caplog):
    s = store(tmp_path)
    topic_log = s.open("t")
    topic_log.append(payloads(0, 20))
    path = topic_log.directory / f"{0:020d}.log"
    s.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 3)  # a crash in the middle of the last record
    reopened = store(tmp_path).open("t")
    assert reopened.next_offset == 19
    assert read_all(reopened) == payloads(0, 19)
    assert reopened.append([b"after the crash"]) == 19
    assert read_all(reopened)[-1] == b"after the crash"


def _damage(path: Path, record: int, at: int) -> bytes:
    """Flip the byte `at` bytes into record number `record`; the record's bytes."""
    data = bytearray(path.read_bytes())
    position = 0
    for _ in range(record):
        (_, length, _, _) = HEADER.unpack_from(data, position)
        position += HEADER.size + length
    (_, length, _, _) = HEADER.unpack_from(data, position)
    whole = bytes(data[position : position + HEADER.size + length])
    data[position + at] ^= 0xFF
    path.write_bytes(bytes(data))
    return whole


@pytest.mark.parametrize(
    ("where", "at"),
    [("payload", HEADER.size + 2), ("length field", 5), ("offset field", 12)],
)
def test_a_damaged_record_in_the_middle_is_set_aside_and_the_rest_served(
    tmp_path, log_lines, where, at
):
    s = store(tmp_path)
    topic_log = s.open("t")
    topic_log.append(payloads(0, 20))
    path = topic_log.directory / f"{0:020d}.log"
    s.close()
    whole = _damage(path, 15, at)
    again = store(tmp_path)
    reopened = again.open("t")
    # Nothing after it is lost: offset 15 reads as a gap, 16-19 are served.
    assert reopened.next_offset == 20
    assert read_all(reopened) == [*payloads(0, 15), None, *payloads(16, 20)]
    aside = path.with_name(path.name + ".damaged-15")
    damaged = bytearray(whole)
    damaged[at] ^= 0xFF
    assert aside.read_bytes() == bytes(damaged)  # its bytes as found, for the operator
    assert again.status()["damaged_records"] == 1
    assert "offsets 15 to 15" in log_lines.text and str(path) in log_lines.text
    assert reopened.append([b"after"]) == 20
    again.close()
    # Repaired once: the next start finds nothing wrong.
    log_lines.lines.clear()
    third = store(tmp_path)
    assert read_all(third.open("t"))[-2:] == [payloads(19, 20)[0], b"after"]
    assert third.status()["damaged_records"] == 0 and "damaged" not in log_lines.text


def test_a_corrupt_record_in_a_rolled_segment_is_skipped_not_served(tmp_path):
    s = store(tmp_path, segment_bytes=1000)
    topic_log = s.open("t")
    for i in range(100):
        topic_log.append(payloads(i, i + 1))
    first = topic_log.directory / f"{0:020d}.log"
    data = bytearray(first.read_bytes())
    data[HEADER.size + 1] ^= 0xFF  # record 0's payload
    first.write_bytes(bytes(data))
    assert topic_log.read(0, 10)[0] is None
    # The rest of the log is unaffected.
    assert topic_log.read(50, 10) == payloads(50, 60)


def test_retention_in_the_file_store(tmp_path):
    by_messages = store(tmp_path / "m", segment_bytes=500, retention=Retention(max_messages=50))
    topic_log = by_messages.open("t")
    for i in range(200):
        topic_log.append(payloads(i, i + 1))
    assert 50 <= topic_log.next_offset - topic_log.first_offset < 80
    assert read_all(topic_log) == payloads(topic_log.first_offset, 200)

    by_bytes = store(tmp_path / "b", segment_bytes=500, retention=Retention(max_bytes=2000))
    topic_log = by_bytes.open("t")
    for i in range(200):
        topic_log.append(payloads(i, i + 1))
    assert 2000 <= topic_log.size < 2000 + 1100

    by_age = store(tmp_path / "a", segment_bytes=500, retention=Retention(max_age=60))
    topic_log = by_age.open("t")
    for i in range(100):
        topic_log.append(payloads(i, i + 1))
    segments = len(list(topic_log.directory.glob("*.log")))
    assert topic_log.apply_retention(reactor.seconds()) == 0
    removed = topic_log.apply_retention(reactor.seconds() + 61)
    assert removed > 0 and len(list(topic_log.directory.glob("*.log"))) == 1 < segments
    assert read_all(topic_log) == payloads(topic_log.first_offset, 100)


def test_retention_in_the_memory_store():
    by_messages = MemoryLog(Retention(max_messages=10))
    for i in range(10_000):
        by_messages.append([b"%d" % i])
    assert (by_messages.first_offset, by_messages.next_offset) == (9990, 10_000)
    assert by_messages.read(9990, 100) == [b"%d" % i for i in range(9990, 10_000)]
    by_bytes = MemoryLog(Retention(max_bytes=100))
    by_bytes.append([b"x" * 60, b"y" * 60, b"z" * 30])
    assert by_bytes.first_offset == 1 and by_bytes.bytes_held == 90
    now = [1000.0]
    by_age = MemoryLog(Retention(max_age=10), clock=lambda: now[0])
    by_age.append([b"old"])
    now[0] += 5
    by_age.append([b"newer"])
    assert by_age.apply_retention(1012) == 1
    assert by_age.read(by_age.first_offset, 5) == [b"newer"]
    assert by_age.apply_retention(1016) == 1
    assert by_age.first_offset == by_age.next_offset == 2


NASTY_NAMES = [
    "../escape",
    "..",
    ".",
    "/etc/passwd",
    "a/../../b",
    " ",
    "con",
    "ü/ß",
    "x" * 255,
    "..\\..\\win",
    "topic.d",
    "a" * 40 + "1",
    "a" * 40 + "2",
    "\u202e",
]


def test_topic_names_never_leave_the_data_directory(tmp_path):
    root = tmp_path / "data"
    s = store(root)
    for name in NASTY_NAMES:
        s.open(name).append([name.encode()])
    directories = [p for p in root.iterdir() if p.name != POSITIONS_FILE]
    assert len(directories) == len(NASTY_NAMES)
    for directory in directories:
        assert directory.parent == root.resolve() and directory.is_dir()
        assert not directory.name.startswith(".")
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(store(root).topic_names()) == sorted(NASTY_NAMES)
    assert len({topic_directory_name(n) for n in NASTY_NAMES}) == len(NASTY_NAMES)


def test_a_full_disk_refuses_the_batch_and_leaves_the_log_intact(tmp_path):
    disk = FillableDisk()
    files = FileStore(tmp_path, FileStoreSettings(fsync=FsyncPolicy.NEVER), reactor, disk=disk)
    files.start()
    topic_log = files.open("t")
    topic_log.append(payloads(0, 5))
    path = topic_log.directory / f"{0:020d}.log"
    size = path.stat().st_size
    disk.full, disk.written_when_full = True, 0.5  # half the batch lands, then ENOSPC
    with pytest.raises(StoreError, match="No space left"):
        topic_log.append(payloads(5, 10))
    assert path.stat().st_size == size and topic_log.next_offset == 5
    disk.full = False
    assert topic_log.append(payloads(5, 10)) == 5
    assert read_all(store(tmp_path).open("t")) == payloads(0, 10)


def test_an_unusable_data_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="data directory"):
        store(blocker / "data")


@pytest_twisted.ensureDeferred
async def test_fsync_always_commits_in_groups(tmp_path, monkeypatch):
    syncs: list[int] = []
    real = file_module._fsync_all
    monkeypatch.setattr(
        file_module, "_fsync_all", lambda disk, fds: (syncs.append(1), real(disk, fds))
    )
    topic_log: FileLog = store(tmp_path, fsync=FsyncPolicy.ALWAYS).open("t")
    for i in range(200):
        topic_log.append([b"%d" % i])
    assert topic_log.committed_offset < 200  # nobody may read what is not on disk
    await topic_log.flush()
    assert topic_log.committed_offset == topic_log.next_offset == 200
    assert 1 <= len(syncs) <= 3, syncs  # one fsync covered many appends
    assert topic_log.read(0, 200) == [b"%d" % i for i in range(200)]


def test_a_vanished_active_segment_is_replaced_and_the_log_stays_dense(tmp_path):
    topic_log = store(tmp_path).open("t")
    topic_log.append(payloads(0, 5))
    for path in topic_log.directory.iterdir():
        path.unlink()
    topic_log.directory.rmdir()  # the whole topic directory, even
    assert topic_log.append(payloads(5, 8)) == 5
    assert read_all(topic_log) == payloads(0, 8)  # the old file is still open
    # After a restart, what the vanished file held is gone; offsets go on from 5.
    reopened = store(tmp_path).open("t")
    assert (reopened.first_offset, reopened.next_offset) == (5, 8)
    assert read_all(reopened) == payloads(5, 8)


def test_a_missing_middle_segment_leaves_a_dense_log_and_the_rest_set_aside(tmp_path):
    topic_log = store(tmp_path, segment_bytes=500).open("t")
    for i in range(60):
        topic_log.append(payloads(i, i + 1))
    logs = sorted(topic_log.directory.glob("*.log"))
    assert len(logs) >= 4
    logs[1].unlink()
    reopened = store(tmp_path, segment_bytes=500).open("t")
    assert reopened.first_offset == int(logs[2].stem)
    assert read_all(reopened) == payloads(reopened.first_offset, 60)
    assert (topic_log.directory / (logs[0].name + ".orphaned")).exists()


def test_an_offset_is_found_by_the_time_it_was_appended(tmp_path):
    """Three messages a second for 100 seconds: the first offset appended at
    or after a time, in files (across segments and index entries) and in
    memory; before everything the oldest held, after everything the next."""
    clock = Clock()
    clock.advance(1_000_000)
    start = clock.seconds()
    files = FileStore(
        tmp_path, FileStoreSettings(fsync=FsyncPolicy.NEVER, segment_bytes=4000), clock
    )
    files.start()
    logs = [files.open("t"), MemoryLog(Retention(), clock=clock.seconds)]
    for second in range(100):
        for topic_log in logs:
            topic_log.append(payloads(second * 3, second * 3 + 3))
        clock.advance(1)
    assert len(list(logs[0].directory.glob("*.log"))) > 3
    for topic_log in logs:
        found = [
            topic_log.offset_at(start + at) for at in (-10, 0, 0.5, 42, 42.001, 99, 99.5, 1000)
        ]
        assert found == [0, 0, 3, 126, 129, 297, 300, 300]
    # What a purge dropped is not found.
    for topic_log in logs:
        topic_log.purge()
        assert topic_log.offset_at(start) == 300


def test_messages_with_headers_are_read_back_with_them_beside_plain_ones(tmp_path):
    """Records of both kinds side by side, read back after a reopen (the
    index rebuilt by a scan, as after a crash)."""
    block = encode_headers([("Content-Type", "text/plain"), ("k", "ü")])
    written = [b"plain", with_headers(b"with", block), b"more", with_headers(b"x" * 300, block)]
    files = store(tmp_path)
    files.open("t").append(written)
    files.close()
    again = store(tmp_path).open("t")
    read = again.read(0, 10)
    assert read == written
    assert [Headers.of(payload).pairs() for payload in read] == [
        (),
        (("Content-Type", "text/plain"), ("k", "ü")),
        (),
        (("Content-Type", "text/plain"), ("k", "ü")),
    ]


def test_a_torn_or_stale_index_is_not_trusted(tmp_path):
    """An index is written without an fsync: a crash may leave it torn (its
    CRC fails) or speaking of a segment that has since changed size. Either
    way the segment is read whole at start, and every record served."""
    s = store(tmp_path, segment_bytes=1000)
    topic_log = s.open("t")
    for i in range(0, 200, 5):
        topic_log.append(payloads(i, i + 5))
    s.close()
    indexes = sorted(topic_log.directory.glob("*.index"))
    torn = bytearray(indexes[1].read_bytes())
    torn[0] ^= 0xFF  # its first position, wrong: the CRC tells
    indexes[1].write_bytes(bytes(torn))
    # Another segment's index, of the right length and count but the wrong size.
    indexes[3].write_bytes(indexes[2].read_bytes())
    reopened = store(tmp_path, segment_bytes=1000).open("t")
    assert read_all(reopened) == payloads(0, 200)


@pytest_twisted.ensureDeferred
async def test_a_failed_fsync_confirms_nothing_since_the_last_good_one(tmp_path):
    """Linux may drop what a failed fsync was to write and mark it written:
    nothing appended since the last good fsync is committed, the cache is
    cut back to what is known on disk (so a restarted broker does not read
    it as stored), the log refuses more until the broker restarts, and the
    restart serves what the disk holds."""
    disk = FillableDisk()
    files = FileStore(tmp_path, FileStoreSettings(fsync=FsyncPolicy.ALWAYS), reactor, disk=disk)
    files.start()
    topic_log = files.open("t")
    topic_log.append(payloads(0, 3))
    await topic_log.flush()
    path = topic_log.directory / f"{0:020d}.log"
    synced_size = path.stat().st_size
    disk.failing = True
    topic_log.append(payloads(3, 6))
    with pytest.raises(StoreError, match=r"fsync failed.*restart the broker"):
        await topic_log.flush()
    assert topic_log.committed_offset == 3 and read_all(topic_log) == payloads(0, 3)
    assert path.stat().st_size == synced_size  # what may never reach the disk is cut
    with pytest.raises(StoreError, match="restart the broker"):
        topic_log.append(payloads(6, 7))
    assert files.status()["failed_topics"] == ["t"]
    disk.failing = False
    files.close()
    again = store(tmp_path, fsync=FsyncPolicy.ALWAYS).open("t")
    assert again.append(payloads(3, 4)) == 3
    await again.flush()
    assert read_all(again) == payloads(0, 4)


def test_a_failing_fsync_at_start_refuses_to_open_the_log_naming_its_file(tmp_path):
    """What a dead broker left may be only in the kernel's cache: it is
    synced before it is served; if that fails, the disk is failing, and the
    start says so, naming the file."""
    store(tmp_path).open("t").append(payloads(0, 3))
    disk = FillableDisk()
    disk.failing = True
    files = FileStore(tmp_path, FileStoreSettings(fsync=FsyncPolicy.ALWAYS), reactor, disk=disk)
    with pytest.raises(StoreError, match=r"could not sync .*00000000000000000000\.log at start"):
        files.open("t")
