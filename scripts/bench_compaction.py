"""Compaction, measured: N keyed updates to K keys published (with confirms,
by the blocking client, in batches) to a compacted topic (`kv.bench`) of a
`twistd broker --data-dir` started here, beside the same updates to a topic
that is not compacted, in the same run; then the disk each topic takes,
how long compaction takes to catch up, how many messages it dropped a
second, and the key-value view's get and put rates.

    python scripts/bench_compaction.py [--updates 1000000] [--keys 10000]
        [--segment-bytes 16777216] [--runs 1]

Prints Markdown. Run it with the installed (compiled) broker's Python, as
`broker-bench` is (`pip install .`), for figures worth quoting.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import broker.sync  # noqa: E402
from broker.bench.process import free_port  # noqa: E402
from broker.log.file import topic_directory_name  # noqa: E402

BATCH = 1000


def start_broker(data: Path, segment_bytes: int) -> tuple[subprocess.Popen[bytes], int, int]:
    port, monitor = free_port(), free_port()
    twistd = Path(sys.executable).with_name("twistd")
    process = subprocess.Popen(
        [
            str(twistd),
            "-n",
            "--pidfile=",
            "broker",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--monitor",
            f"tcp:{monitor}:interface=127.0.0.1",
            "--data-dir",
            str(data),
            "--segment-bytes",
            str(segment_bytes),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port, monitor


def metric(monitor: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def disk(data: Path, topic: str) -> int:
    """Bytes of a topic's segment files."""
    directory = data / topic_directory_name(topic)
    return sum(path.stat().st_size for path in directory.iterdir() if path.suffix == ".log")


def publish_updates(client: broker.sync.SyncClient, topic: str, updates: int, keys: int) -> float:
    """Seconds to publish `updates` keyed messages (confirmed), in batches."""
    value = b"v" * 80
    started = time.perf_counter()
    for first in range(0, updates, BATCH):
        client.publish_many(
            [
                (topic, value, {"Key": f"key-{n % keys}"})
                for n in range(first, min(first + BATCH, updates))
            ]
        )
    return time.perf_counter() - started


def one_run(updates: int, keys: int, segment_bytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        process, port, monitor = start_broker(data, segment_bytes)
        try:
            with broker.sync.connect(f"tcp://127.0.0.1:{port}", timeout=30) as client:
                plain_seconds = publish_updates(client, "bench.plain", updates, keys)
                kv_seconds = publish_updates(client, "kv.bench", updates, keys)
                published = time.perf_counter()
                before = disk(data, "kv.bench")
                # What the background compaction did meanwhile; then the rest,
                # the active segment's too, as an operator asks for it.
                during = metric(monitor, "broker_compacted_messages_total")
                admin = urllib.request.Request(
                    f"http://127.0.0.1:{monitor}/admin/topics/kv.bench/compaction",
                    data=b'{"compacted": true}',
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                urllib.request.urlopen(admin, timeout=30).read()
                expected = updates - keys
                while metric(monitor, "broker_compacted_messages_total") < expected:
                    if time.perf_counter() - published > 300:
                        break
                    time.sleep(0.05)
                caught_up = time.perf_counter() - published
                dropped = metric(monitor, "broker_compacted_messages_total")
                after = disk(data, "kv.bench")
                plain_disk = disk(data, "bench.plain")
                kv = client.kv("bench")
                started = time.perf_counter()
                for n in range(2000):
                    kv.get(f"key-{n % keys}")
                gets = 2000 / (time.perf_counter() - started)
                started = time.perf_counter()
                for n in range(2000):
                    kv.put(f"key-{n % keys}", b"v" * 80)
                puts = 2000 / (time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(30)
    return {
        "publish_plain": updates / plain_seconds,
        "publish_compacted": updates / kv_seconds,
        "compacted_during": during,
        "caught_up_seconds": caught_up,
        "dropped": dropped,
        "disk_plain": plain_disk,
        "disk_before": before,
        "disk_after": after,
        "kv_get": gets,
        "kv_put": puts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--segment-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--runs", type=int, default=1)
    options = parser.parse_args()
    runs = [
        one_run(options.updates, options.keys, options.segment_bytes) for _ in range(options.runs)
    ]
    median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    mib = 1024 * 1024
    print(f"{options.updates:,} updates to {options.keys:,} keys, medians of {len(runs)} run(s):\n")
    print("| figure | value |")
    print("| --- | ---: |")
    rows = [
        ("publish msg/s, topic not compacted", f"{median['publish_plain']:,.0f}"),
        (
            "publish msg/s, compacted topic (compaction running)",
            f"{median['publish_compacted']:,.0f}",
        ),
        ("messages dropped while publishing", f"{median['compacted_during']:,.0f}"),
        ("seconds from the last publish until all dropped", f"{median['caught_up_seconds']:.1f}"),
        ("messages dropped in all", f"{median['dropped']:,.0f}"),
        ("disk, topic not compacted", f"{median['disk_plain'] / mib:,.1f} MiB"),
        ("disk, compacted topic, after publishing", f"{median['disk_before'] / mib:,.1f} MiB"),
        ("disk, compacted topic, once compacted", f"{median['disk_after'] / mib:,.1f} MiB"),
        ("key-value get/s (one at a time)", f"{median['kv_get']:,.0f}"),
        ("key-value put/s (one at a time)", f"{median['kv_put']:,.0f}"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
