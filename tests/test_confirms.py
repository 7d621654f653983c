"""Publisher confirms: answers in order, each batch once committed."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from broker import wire
from broker.confirms import SYNC_FAILED, Answer, ConfirmQueue, answers_in_order


def test_answers_follow_publish_order_in_runs():
    order = [("a", True), ("a", True), ("no prefix", False), ("b", True), ("a", True), ("c", True)]
    answers = answers_in_order(order, {"a": 10, "b": 0, "c": "too many topics"})
    assert answers == [
        Answer(count=2, first_offset=10),
        Answer(error="no prefix"),
        Answer(count=1, first_offset=0),
        Answer(count=1, first_offset=12),
        Answer(error="too many topics"),
    ]


def test_a_later_batch_committed_first_waits_for_the_earlier_one():
    written: list[bytes] = []
    queue = ConfirmQueue(written.append)
    first_sync: Deferred[None] = Deferred()
    queue.add([Answer(count=3, first_offset=0)], [first_sync])
    queue.add([Answer(count=1, first_offset=7)], [])  # committed at once, but later
    assert written == []
    first_sync.callback(None)
    assert written == [wire.encode_confirmed(3, 0), wire.encode_confirmed(1, 7)]


def test_a_failed_sync_turns_its_confirms_into_errors():
    written: list[bytes] = []
    queue = ConfirmQueue(written.append)
    sync: Deferred[None] = Deferred()
    queue.add([Answer(count=2, first_offset=0), Answer(error="empty message")], [sync])
    sync.errback(OSError("disk gone"))
    assert written == [wire.encode_error(SYNC_FAILED) * 2 + wire.encode_error("empty message")]
