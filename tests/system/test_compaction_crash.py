"""Compaction survives a crash at any point: a `twistd broker --data-dir`
with small segments (so that closed ones are rewritten often), under
confirmed key-value writes, killed with SIGKILL again and again while its
compaction works in the background; after each restart every key holds the
last value confirmed to it, and the key index (rebuilt from the disk)
knows each one."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from broker.log.records import GAP, read_records
from tests.clients import BrokerProcess, client_of, in_thread, wait_until


def gap_runs_in(path: Path) -> int:
    """The gap runs (compaction's) a segment file holds."""
    fd = os.open(path, os.O_RDONLY)
    try:
        records = read_records(fd, 0, os.fstat(fd).st_size, with_payload=True)
        return sum(1 for *_, payload, _ in records if payload is GAP)
    finally:
        os.close(fd)


def gap_runs_in_all(data: Path) -> int:
    return sum(gap_runs_in(path) for path in data.rglob("*.log"))


@in_thread
def test_every_confirmed_value_survives_kills_during_compaction(tmp_path):
    data = tmp_path / "data"
    process = BrokerProcess(
        tmp_path, "--data-dir", str(data), "--segment-bytes", "16384", "--fsync", "always"
    ).start()
    latest: dict[str, bytes] = {}
    rounds = random.Random(7)
    try:
        for round_ in range(4):
            kill_at = 1150 + rounds.randrange(300)
            with client_of("blocking", process.url) as client:
                kv = client.kv("crash")
                for n in range(1500):
                    key = f"k{n % 40}"
                    value = b"round %d update %d " % (round_, n) + b"x" * 60
                    kv.put(key, value)
                    latest[key] = value  # confirmed: fsynced
                    if n == 1100:
                        # Over 1,000 superseded: compaction has work. Wait
                        # until it rewrites a segment, so that the kill
                        # finds it at work.
                        seen = gap_runs_in_all(data)
                        wait_until(
                            lambda seen=seen: gap_runs_in_all(data) > seen, what="a compaction"
                        )
                    if n == kill_at:
                        process.process.send_signal(signal.SIGKILL)
                        break
            process.process.wait(15)
            process.start()
            with client_of("blocking", process.url) as client:
                kv = client.kv("crash")
                wait_until(lambda kv=kv: kv.keys() == sorted(latest), what="the keys back")
                for key, value in latest.items():
                    got = kv.get(key)
                    assert got is not None and got.value == value, key
    finally:
        process.stop()
