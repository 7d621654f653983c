"""An operator's actions in the core alone (broker.core.admin), on the
memory store with a fake clock: purge, delete, peek, durable consumers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.core.admin import Administration, AdminRefused
from broker.wire import StartAt
from tests.unit.core.test_consumer import consumer_of


def result(deferred: Deferred) -> Any:
    """What an already-fired Deferred holds (the memory store answers at once)."""
    got: list = []
    deferred.addBoth(got.append)
    assert got, "it answered at once"
    if hasattr(got[0], "raiseException"):
        got[0].raiseException()
    return got[0]


def test_a_purge_drops_every_message_and_offsets_go_on():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("orders", [b"a", b"b", b"c"])
    admin = Administration(broker)
    assert result(admin.purge("orders", "tester")) == 3
    assert result(admin.info("orders"))["messages"] == 0
    assert broker.registry.publish("orders", [b"d"]) == 3
    consumer, door = consumer_of(broker)
    consumer.subscribe(["orders"], StartAt.BEGINNING, 0, door.accepted)
    assert door.deliveries == [("orders", 3, b"d")]


def test_a_topic_being_read_is_not_deleted_and_one_nobody_reads_is():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("orders", [b"a"])
    admin = Administration(broker)
    consumer, door = consumer_of(broker)
    consumer.subscribe(["orders"], StartAt.BEGINNING, 0, door.accepted)
    with pytest.raises(AdminRefused) as refused:
        admin.delete("orders", "tester")
    assert refused.value.status == 409 and "1 reader(s)" in refused.value.text
    consumer.close()
    result(admin.delete("orders", "tester"))
    assert "orders" not in broker.registry and result(admin.topics()) == []
    with pytest.raises(AdminRefused) as missing:
        admin.info("orders")
    assert missing.value.status == 404


def test_a_peek_shows_messages_without_consuming_them_and_keeps_to_its_bytes():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("t", [b"one", b"\xff\xfe", b"three", b"four"])
    admin = Administration(broker)
    peeked = result(admin.peek("t", 1, 10, max_bytes=7))
    assert peeked == {
        "topic": "t",
        "messages": [
            {"offset": 1, "size": 2, "data_base64": "//4="},
            {"offset": 2, "size": 5, "data": "three"},
        ],
        "next": 3,
    }
    # Past the end: nothing, and where it would go on from.
    assert result(admin.peek("t", 9, 10, 100)) == {"topic": "t", "messages": [], "next": 9}


def test_a_durable_consumer_is_reset_or_forgotten_only_with_no_member_reading():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.publish("jobs", [b"a", b"b", b"c"])
    admin = Administration(broker)
    consumer, door = consumer_of(broker, prefetch=1)
    consumer.subscribe(["$durable/billing/jobs"], StartAt.BEGINNING, 0, door.accepted)
    assert consumer.ack()
    consumer.keep_positions()
    with pytest.raises(AdminRefused) as live:
        result(admin.reset_durable("jobs", "billing", 0, "tester"))
    assert live.value.status == 409
    consumer.close()  # b was in flight: the group holds it to redo
    assert result(admin.reset_durable("jobs", "billing", 0, "tester"))["position"] == 0
    again, again_door = consumer_of(broker)
    again.subscribe(["$durable/billing/jobs"], StartAt.BEGINNING, 0, again_door.accepted)
    assert [offset for _, offset, _ in again_door.deliveries] == [0, 1, 2]  # from the reset
    again.close()
    result(admin.delete_durable("jobs", "billing", "tester"))
    assert result(admin.consumers()) == []
    with pytest.raises(AdminRefused) as gone:
        result(admin.delete_durable("jobs", "billing", "tester"))
    assert gone.value.status == 404


def test_create_makes_a_topic_once_and_refuses_a_bad_name():
    broker = Broker(BrokerSettings(), Clock())
    admin = Administration(broker)
    assert admin.create("new", "tester")[1] is True
    assert admin.create("new", "tester")[1] is False
    with pytest.raises(AdminRefused) as bad:
        admin.create("", "tester")
    assert bad.value.status == 400
