"""The core's Broker alone: what it decides for every front door, with no
connection and a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.log import MemoryStore
from broker.security.permissions import Rules


def test_who_may_publish_where_is_decided_in_the_core():
    broker = Broker(BrokerSettings(), Clock())
    assert broker.publish_refusal("orders.eu", None) is None  # no users file: open
    assert broker.publish_refusal("orders.eu.dead-letter", None) == (
        "permission denied: publish to 'orders.eu.dead-letter': "
        "only the broker writes dead-letter topics"
    )
    rules = Rules.of(["orders.>"], ["orders.secret"])
    assert broker.publish_refusal("orders.eu", rules) is None
    assert broker.publish_refusal("orders.secret", rules) == (
        "permission denied: publish to 'orders.secret'"
    )
    assert broker.publish_refusal("audit", rules) == "permission denied: publish to 'audit'"


def test_a_broker_starts_its_store_and_reopens_what_it_holds():
    class Holding(MemoryStore):
        def held_topics(self):
            return ["kept"]

    broker = Broker(BrokerSettings(), Clock(), store=Holding())
    assert "kept" not in broker.registry
    broker.start()
    assert "kept" in broker.registry
    assert broker.store.status() == {"kind": "memory"}
