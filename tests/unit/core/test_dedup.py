"""Exactly-once publishing in the core: a topic's window of message ids,
the split of a batch into new and already stored, and the Broker's use of
them, with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.core.dedup import DedupWindow, deduplicate, recall
from broker.log import MemoryStore
from broker.wire.headers import encode_headers, message_id, with_headers, with_message_id


def identified(data: bytes, mid: str) -> bytes:
    return with_message_id(data, mid)


def test_a_window_forgets_ids_older_than_its_span():
    window = DedupWindow(span=120, max_ids=100)
    window.remember([(b"a", 0), (b"b", 1)], now=1000)
    window.remember([(b"c", 2)], now=1100)
    window.expire(1120)
    assert window.offsets == {b"a": 0, b"b": 1, b"c": 2}
    window.expire(1121)  # a and b were stored 121 s ago
    assert window.offsets == {b"c": 2}
    window.expire(1221)
    assert window.offsets == {}


def test_a_window_keeps_at_most_max_ids_the_oldest_going_first():
    window = DedupWindow(span=120, max_ids=3)
    window.remember([(b"a", 0), (b"b", 1)], now=0)
    window.remember([(b"c", 2), (b"d", 3)], now=1)
    assert list(window.offsets) == [b"b", b"c", b"d"]
    window.remember([(b"e", 4)], now=1)
    assert list(window.offsets) == [b"c", b"d", b"e"]
    window.expire(121.5)  # the batch of time 1 is all that is left, and it goes
    assert len(window) == 0


def test_an_id_remembered_again_keeps_its_first_offset():
    window = DedupWindow(span=120, max_ids=10)
    window.remember([(b"a", 0)], now=0)
    window.remember([(b"a", 5)], now=1)
    assert window.offsets == {b"a": 0}
    window.expire(120.5)
    assert window.offsets == {}


def test_a_batch_is_split_into_new_and_already_stored():
    window = DedupWindow(span=120, max_ids=10)
    window.remember([(b"old", 7)], now=0)
    payloads = [
        identified(b"1", "new"),
        b"plain",
        identified(b"2", "old"),
        identified(b"3", "new"),  # the batch's own first copy
        with_headers(b"4", encode_headers([("kind", "x"), ("MSG-ID", "other")])),
    ]
    batch = deduplicate(payloads, window)
    assert batch.fresh == [payloads[0], payloads[1], payloads[4]]
    assert batch.duplicates == 2
    assert batch.offsets(20) == [20, 21, 7, 20, 22]
    assert batch.stored_ids(20) == [(b"new", 20), (b"other", 22)]


def test_ids_are_recalled_from_a_logs_tail():
    window = DedupWindow(span=120, max_ids=10)
    recall(window, [identified(b"x", "a"), None, b"plain", identified(b"y", "b")], 40, now=5)
    assert window.offsets == {b"a": 40, b"b": 43}


def test_the_broker_stores_an_id_once_and_answers_with_the_first_offset():
    clock = Clock()
    broker = Broker(BrokerSettings(dedup_window=60), clock, MemoryStore(clock=clock.seconds))
    first = broker.append(
        "t", [identified(b"a", "1"), identified(b"b", "2")], None, "p", headered=True
    )
    assert first.first == 0
    again = broker.append(
        "t", [identified(b"b", "2"), identified(b"c", "3")], None, "p", headered=True
    )
    assert again.first == [1, 2]
    only_old = broker.append("t", [identified(b"a", "1")], None, "p", headered=True)
    assert (only_old.first, only_old.size) == ([0], 0)
    assert broker.stats.duplicates == 2
    assert broker.stats.published_messages == 3
    clock.advance(61)
    broker.expire_message_ids()
    late = broker.append("t", [identified(b"a", "1")], None, "p", headered=True)
    assert late.first == 3  # the window had passed


def test_a_window_made_after_a_start_recalls_the_ids_its_log_holds():
    clock = Clock()
    broker = Broker(BrokerSettings(dedup_window=60, dedup_max_ids=2), clock)
    # Appended as a broker before this one would have (ids not looked at).
    broker.append("t", [identified(b"a", "1"), b"plain", identified(b"b", "2")], None, "p")
    assert "t" not in broker.dedup_windows
    # At most the last max_ids messages are read back: "1" is not among them.
    appended = broker.append(
        "t", [identified(b"b", "2"), identified(b"a", "1")], None, "p", headered=True
    )
    assert appended.first == [2, 3]


def test_without_a_window_ids_are_not_looked_at():
    broker = Broker(BrokerSettings(dedup_window=0), Clock())
    for expected in (0, 1):
        appended = broker.append("t", [identified(b"a", "1")], None, "p", headered=True)
        assert appended.first == expected
    assert message_id(identified(b"a", "1")) == b"1"
