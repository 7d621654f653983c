"""Micro-benchmarks of the hot pure pieces (codec, logs, window), run in CI
as a smoke test: they check results, never timings. Figures come from
`python -m pytest tests/test_micro_benchmarks.py --benchmark-enable`."""

from __future__ import annotations

from broker import wire
from broker.log import FileStore, FileStoreSettings, FsyncPolicy, MemoryLog, Retention
from broker.wire import ServerDecoder, StartAt
from tests.system.test_scripts import load_script

PAYLOAD = b"x" * 100
BURST = wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_publish("bench", PAYLOAD) * 1000


class Count:
    """Counts publishes; ignores every other decoder event."""

    def __init__(self) -> None:
        self.count = 0

    def published(self, topic: str, payloads: list[bytes]) -> None:
        self.count += len(payloads)

    def __getattr__(self, name: str):
        return lambda *args: None


def test_decode_1000_publishes(benchmark):
    def decode() -> int:
        events = Count()
        decoder = ServerDecoder(events, 1 << 20)
        for start in range(0, len(BURST), 65536):
            decoder.feed(BURST[start : start + 65536])
        return events.count

    assert benchmark(decode) == 1000


ACKS = b"".join(wire.encode_ack_id(i) for i in range(1000))


def test_decode_1000_acks(benchmark):
    acked: list[int] = []

    class Acks(Count):
        def acked_ids(self, delivery_ids) -> None:
            acked.extend(delivery_ids)

    def decode() -> int:
        acked.clear()
        decoder = ServerDecoder(Acks(), 1 << 20)
        decoder.feed(wire.encode_subscribe(["bench"], StartAt.CURRENT))
        decoder.extended = True  # as after an agreed Hello
        decoder.feed(ACKS)
        return len(acked)

    assert benchmark(decode) == 1000
    assert acked == list(range(1000))


def test_encode_1000_deliveries(benchmark):
    prefix = wire.extended_delivery_prefix("bench")

    def encode() -> int:
        parts = []
        for offset in range(1000):
            parts += (prefix, wire.encode_delivery_tail(offset, 1, offset, 100), PAYLOAD)
        return len(b"".join(parts))

    assert benchmark(encode) == 1000 * (len(prefix) + 18 + 100)


def test_memory_log_append_and_read(benchmark):
    def append_and_read() -> int:
        log = MemoryLog(Retention(max_messages=5000))
        for _ in range(10):
            log.append([PAYLOAD] * 1000)
        return len(log.read(log.first_offset, 64))

    assert benchmark(append_and_read) == 64


def test_file_log_append_and_read(benchmark, tmp_path):
    from twisted.internet import reactor

    store = FileStore(tmp_path, FileStoreSettings(fsync=FsyncPolicy.NEVER), reactor)
    store.start()
    topic_log = store.open("bench")

    def append_and_read() -> int:
        first = topic_log.append([PAYLOAD] * 1000)
        return len(topic_log.read(first, 64))

    assert benchmark(append_and_read) == 64
    store.close()


def test_window_delivers_and_acks_1000(benchmark):
    window = load_script().window  # 1,000 deliveries and acks, prefetch 256
    assert benchmark(window) == 1000
