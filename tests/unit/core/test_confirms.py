"""Publisher confirms: answers in order, each batch once committed."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from broker import wire
from broker.core.confirms import (
    SYNC_FAILED,
    Answer,
    ConfirmQueue,
    answers_in_order,
    answers_of_topic,
)
from broker.wire.hello import parse_hello_request


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


def test_by_topic_answers_name_their_publishes_in_runs():
    assert answers_of_topic([3, 4, 6], 10) == [
        Answer(count=2, first_offset=10, sequence=3),
        Answer(count=1, first_offset=12, sequence=6),
    ]
    assert answers_of_topic([1, 2], "refused") == [
        Answer(error="refused", sequence=1),
        Answer(error="refused", sequence=2),
    ]


def test_by_topic_a_topic_waits_only_for_its_own_earlier_answers():
    written: list[bytes] = []
    queue = ConfirmQueue(written.append, by_topic=True)
    hanging: Deferred[list[Answer]] = Deferred()
    queue.add(hanging, [], "slow")
    queue.add([Answer(count=1, first_offset=5, sequence=1)], [], "fast")
    queue.add([Answer(count=1, first_offset=0, sequence=2)], [], "slow")  # behind its topic's
    assert written == [wire.encode_confirmed_at(1, 1, 5)]
    hanging.callback([Answer(error="outcome unknown: x", sequence=0)])
    assert written[1:] == [
        wire.encode_refused_at(0, "outcome unknown: x"),
        wire.encode_confirmed_at(2, 1, 0),
    ]
    assert len(queue) == 0


def test_by_topic_frames_decode_to_what_was_sent():
    class Events:  # what a client protocol hears (wire.ClientEvents)
        def __init__(self) -> None:
            self.seen: list[tuple] = []

        def confirmed_at(self, sequence: int, count: int, first_offset: int) -> None:
            self.seen.append(("confirmed", sequence, count, first_offset))

        def refused_at(self, sequence: int, text: str) -> None:
            self.seen.append(("refused", sequence, text))

        def hello_received(self, fields: dict) -> None:
            self.seen.append(("hello", fields["confirm_order"]))

    events = Events()
    decoder = wire.ClientDecoder(events, 1 << 20)
    decoder.expect_hello()
    stream = (
        wire.encode_hello({"version": 1, "confirms": True, "confirm_order": "topic"})
        + wire.encode_confirmed_at(2**40, 3, 2**50)
        + wire.encode_refused_at(7, "no")
        + wire.encode_refused_at(8, "")
    )
    for byte in range(len(stream)):  # however TCP splits it
        decoder.feed(stream[byte : byte + 1])
    assert events.seen == [
        ("hello", "topic"),
        ("confirmed", 2**40, 3, 2**50),
        ("refused", 7, "no"),
        ("refused", 8, ""),
    ]


def test_a_hello_asks_for_confirms_per_topic_or_is_invalid():
    assert parse_hello_request(b'{"confirm_order": "topic"}').confirm_order == "topic"
    assert parse_hello_request(b"{}").confirm_order is None
    with pytest.raises(wire.ProtocolError, match="invalid hello"):
        parse_hello_request(b'{"confirm_order": "shuffled"}')


def test_publishes_stored_before_are_answered_with_the_first_copys_offsets():
    # Topic a's batch: stored at 10 and 11, the second publish a copy of 3.
    order = [("a", True), ("a", True), ("a", True), ("b", True)]
    answers = answers_in_order(order, {"a": [10, 3, 11], "b": [4]})
    assert answers == [
        Answer(count=1, first_offset=10),
        Answer(count=1, first_offset=3),
        Answer(count=1, first_offset=11),
        Answer(count=1, first_offset=4),
    ]
    assert answers_in_order([("a", True), ("a", True)], {"a": [5, 6]}) == [
        Answer(count=2, first_offset=5)
    ]
    assert answers_of_topic([0, 1, 2, 5], [7, 8, 2, 9]) == [
        Answer(count=2, first_offset=7, sequence=0),
        Answer(count=1, first_offset=2, sequence=2),
        Answer(count=1, first_offset=9, sequence=5),
    ]
