"""Header blocks held beside the payloads: a memory log and the Redis
store's batch cache hold plain bytes (which the cyclic collector does not
watch) and give the headers back as they are read."""

from __future__ import annotations

import gc

from broker.log import MemoryLog, Retention
from broker.log.batch_cache import BatchCache
from broker.log.header_table import HeaderTable
from broker.wire.headers import Headers, encode_headers, header_block, with_headers


def headered(data: bytes, **pairs: str) -> bytes:
    return with_headers(data, encode_headers(list(pairs.items())))


def test_a_memory_log_holds_plain_bytes_and_reads_back_the_headers():
    log = MemoryLog(Retention())
    batch = [headered(b"a", kind="x"), b"b", headered(b"c", kind="y", n="1")]
    assert log.append(batch) == 0
    assert log.append([b"d"]) == 3
    assert not any(gc.is_tracked(payload) for payload in log._messages)
    read = log.read(0, 4)
    assert read == [b"a", b"b", b"c", b"d"]
    assert [Headers.of(payload).pairs() for payload in read] == [
        (("kind", "x"),),
        (),
        (("kind", "y"), ("n", "1")),
        (),
    ]
    assert [header_block(payload) for payload in log.read(2, 1)] == [header_block(batch[2])]


def test_a_memory_logs_bytes_count_its_headers_and_retention_drops_them():
    block = encode_headers([("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")])
    log = MemoryLog(Retention(max_bytes=3 * (10 + len(block))))
    for n in range(5):
        log.append([with_headers(b"%010d" % n, block)])
    assert log.bytes_held <= 3 * (10 + len(block))
    assert log.first_offset == 2
    assert [header_block(p) for p in log.read(2, 3)] == [block] * 3
    assert len(log._headers) == 3
    log.purge()
    assert (log.bytes_held, len(log._headers)) == (0, 0)


def test_a_table_drops_blocks_one_by_one_and_from_its_start():
    table = HeaderTable()
    plain = table.take(10, [headered(b"a", k="1"), b"b", headered(b"c", k="2")])
    assert plain == [b"a", b"b", b"c"] and all(type(p) is bytes for p in plain)
    assert len(table) == 2
    table.discard(12)
    assert [header_block(p) for p in table.give(10, list(plain))] == [
        encode_headers([("k", "1")]),
        b"",
        b"",
    ]
    table.drop_before(11)
    assert not table and table.bytes == 0
    untouched = [b"x"]
    assert table.take(0, untouched) is untouched


def test_the_batch_cache_holds_plain_bytes_and_gives_headers_back_across_batches():
    cache = BatchCache(max_bytes=1 << 20)
    cache.add(0, [b"a", headered(b"b", k="1")])
    cache.add(2, [headered(b"c", k="2"), b"d"])
    read = cache.read(1, 3)
    assert read == [b"b", b"c", b"d"]
    assert [Headers.of(p).pairs() for p in read] == [(("k", "1"),), (("k", "2"),), ()]
    assert not any(gc.is_tracked(p) for batch in cache._batches for p in batch)
