"""The recent batches a node holds per topic of a shared store."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.log.batch_cache import BatchCache


def batch(first: int, count: int, size: int = 10) -> list[bytes]:
    return [b"%0*d" % (size, first + index) for index in range(count)]


def test_reads_span_batches_that_follow_each_other():
    cache = BatchCache(max_bytes=10_000)
    cache.add(0, batch(0, 5))
    cache.add(5, batch(5, 5))
    cache.add(20, batch(20, 5))  # a gap: 10..19 are not held
    assert cache.read(3, 4) == batch(3, 4)
    assert cache.read(3, 100) == batch(3, 7)  # stops at the gap
    assert cache.read(10, 1) is None
    assert cache.read(22, 10) == batch(22, 3)
    assert cache.read(25, 1) is None


def test_the_least_recently_used_batch_goes_first_and_the_one_in_use_stays():
    cache = BatchCache(max_bytes=250)  # room for two batches of 100 bytes
    cache.add(0, batch(0, 10))
    cache.add(10, batch(10, 10))
    assert cache.read(0, 1) is not None  # a cursor reading history uses batch 0
    cache.add(20, batch(20, 10))  # a new append: batch 10, unused, goes
    assert cache.read(10, 1) is None
    assert cache.read(0, 1) == batch(0, 1)
    assert cache.read(20, 1) == batch(20, 1)
    assert cache.bytes == 200


def test_a_batch_larger_than_the_bound_is_still_held_alone():
    cache = BatchCache(max_bytes=50)
    cache.add(0, batch(0, 3))
    cache.add(3, batch(3, 20))
    assert len(cache) == 1
    assert cache.read(3, 20) == batch(3, 20)


def test_adding_without_evicting_keeps_every_batch_until_evict():
    cache = BatchCache(max_bytes=100)
    for first in range(0, 50, 10):
        cache.add(first, batch(first, 10), evict=False)
    assert cache.read(0, 50) == batch(0, 50)
    cache.read(0, 1)  # batch 0 used last
    cache.evict()
    assert len(cache) == 1 and cache.read(0, 1) == batch(0, 1)


def test_retention_drops_whole_batches_before_an_offset():
    cache = BatchCache(max_bytes=10_000)
    cache.add(0, batch(0, 5))
    cache.add(5, batch(5, 5))
    cache.drop_before(7)  # the batch holding 7 stays
    assert cache.read(4, 1) is None
    assert cache.read(5, 5) == batch(5, 5)
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=30))
def test_whatever_it_holds_is_right_and_within_bounds(batches):
    cache = BatchCache(max_bytes=300)
    for first, count in batches:
        cache.add(first, batch(first, count))
    assert cache.bytes <= 300 or len(cache) == 1
    for offset in range(0, 230):
        held = cache.read(offset, 5)
        if held is not None:
            # Overlapping batches hold the same messages at the same offsets.
            assert held == batch(offset, len(held))


def test_a_newer_batch_replaces_what_it_overlaps():
    """After a failover a shared store gives offsets out again: the batch
    heard last is the one that holds them."""
    cache = BatchCache(max_bytes=10_000)
    cache.add(0, batch(0, 10))
    cache.add(10, [b"stale"] * 10)
    cache.add(20, [b"stale"] * 5)
    cache.forget_from(12)  # the store holds up to 12 now: both stale batches go
    assert cache.read(10, 1) is None and cache.read(20, 1) is None
    cache.add(5, [b"new"] * 10)  # overlaps the first batch: it replaces it
    assert cache.read(0, 1) is None
    assert cache.read(5, 20) == [b"new"] * 10
    assert cache.bytes == 30
