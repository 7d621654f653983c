"""Pattern subscriptions (`*` one token, `>` the rest), in memory on a fake
clock: existing and later topics, start positions, unsubscribing, topics
held both by name and by pattern, dead-letter topics, permissions, resuming
after a reconnect; and the Go clients' literal names, unchanged."""

from __future__ import annotations

import argparse

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from broker.bench.scenarios import Bench
from broker.client import BrokerError, Message, connect
from broker.core.delivery import DeliverySettings
from broker.security.permissions import Rules
from broker.security.users import User, Users
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox


def seen(messages: list[Message]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in messages]


def published(broker: InMemoryBroker, client, *pairs: tuple[str, bytes]) -> None:
    sent = [client.publish(topic, payload) for topic, payload in pairs]
    broker.flush()
    for each in sent:
        broker.result(each)


def test_a_pattern_takes_matching_topics_now_and_later():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    published(broker, client, ("orders.eu", b"1"), ("orders.us.east", b"2"), ("billing", b"3"))
    inbox: list[Message] = []
    subscribed = client.subscribe(["orders.>"], inbox.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(subscribed)
    assert sorted(seen(inbox)) == [("orders.eu", b"1"), ("orders.us.east", b"2")]
    published(broker, client, ("orders.asia", b"4"), ("orders", b"not one token more"))
    assert seen(inbox)[-1] == ("orders.asia", b"4") and len(inbox) == 3
    assert [m.offset for m in inbox if m.topic == "orders.asia"] == [0]


def test_star_is_one_token_and_current_skips_what_is_there():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    published(broker, client, ("a.x", b"old"))
    inbox: list[Message] = []
    subscribed = client.subscribe(["a.*"], inbox.append, start=StartAt.CURRENT)
    broker.flush()
    broker.result(subscribed)
    published(broker, client, ("a.x", b"new"), ("a.x.y", b"too deep"), ("a.z", b"later"))
    assert sorted(seen(inbox)) == [("a.x", b"new"), ("a.z", b"later")]


def test_offsets_and_bad_patterns_are_refused_by_the_client_and_the_broker():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    with pytest.raises(ValueError, match="not at an offset"):
        client.subscribe(["a.>"], print, start=StartAt.FROM, offset=3)
    with pytest.raises(ValueError, match="'>' must be the last token"):
        client.subscribe(["a.>.b"], print)
    connected = client.subscriber_connected()
    broker.flush()
    protocol = broker.result(connected)
    for topics, start, offset, text in [
        (["a.>"], StartAt.FROM, 1, "not at an offset"),
        (["a.>.b"], StartAt.BEGINNING, 0, "invalid topic pattern"),
    ]:
        refused = protocol.subscribe(topics, start, offset)
        broker.flush()
        with pytest.raises(BrokerError, match=text):
            broker.result(refused)


def test_unsubscribing_a_pattern_keeps_what_is_also_held_by_name():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    inbox: list[Message] = []
    both = client.subscribe(["jobs.>", "jobs.kept"], inbox.append, start=StartAt.BEGINNING)
    published(broker, client, ("jobs.kept", b"1"), ("jobs.other", b"2"))
    broker.result(both)
    gone = client.unsubscribe(["jobs.>"])
    broker.flush()
    broker.result(gone)
    published(broker, client, ("jobs.kept", b"3"), ("jobs.other", b"4"), ("jobs.new", b"5"))
    assert seen(inbox) == [("jobs.kept", b"1"), ("jobs.other", b"2"), ("jobs.kept", b"3")]
    holders = broker.core.registry.patterns
    assert len(holders) == 0


def test_dead_letters_reach_a_pattern_only_when_it_names_them():
    broker = InMemoryBroker(
        BrokerSettings(delivery=DeliverySettings(max_deliveries=1, ack_delay=0.1))
    )
    client = broker.client(extensions=True)
    everything: list[Message] = []
    letters: list[Message] = []
    client.subscribe(["work.>"], lambda m: everything.append(m) or False, start=StartAt.BEGINNING)
    client.subscribe(["work.*.dead-letter"], letters.append, start=StartAt.BEGINNING)
    published(broker, client, ("work.a", b"poison"))
    broker.advance(1)
    assert seen(everything) == [("work.a", b"poison")]  # not its own dead letter
    assert [m.topic for m in letters] == ["work.a.dead-letter"]


def test_a_pattern_takes_only_what_the_user_may_read():
    users = Users(
        {
            "anonymous": User(
                "anonymous",
                publish=Rules.of([">"]),
                subscribe=Rules.of(["orders.>"], ["orders.secret"]),
            )
        }
    )
    broker = InMemoryBroker(users=users)
    client = broker.client(extensions=True)
    published(broker, client, ("orders.eu", b"1"), ("orders.secret", b"2"))
    inbox: list[Message] = []
    allowed = client.subscribe(["orders.*"], inbox.append, start=StartAt.BEGINNING)
    refused = client.subscribe([">"], inbox.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(allowed)
    with pytest.raises(BrokerError, match="permission denied: subscribe to '>'"):
        broker.result(refused)
    published(broker, client, ("orders.secret", b"3"), ("orders.us", b"4"))
    assert seen(inbox) == [("orders.eu", b"1"), ("orders.us", b"4")]


def test_a_reconnect_resumes_a_patterns_topics_without_repeats_and_finds_new_ones():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    inbox: list[Message] = []
    subscribed = client.subscribe(["logs.*"], inbox.append, start=StartAt.BEGINNING)
    published(broker, client, ("logs.api", b"1"), ("logs.db", b"2"))
    broker.result(subscribed)
    broker.drop_connections()
    other = broker.client(extensions=True)
    published(broker, other, ("logs.api", b"while away"))  # before the client is back
    broker.advance(1)  # reconnected and resubscribed
    published(broker, client, ("logs.api", b"3"), ("logs.cache", b"4"))
    assert sorted(seen(inbox)) == sorted(
        [
            ("logs.api", b"1"),
            ("logs.db", b"2"),
            ("logs.api", b"while away"),
            ("logs.api", b"3"),
            ("logs.cache", b"4"),
        ]
    )
    gone = client.unsubscribe(["logs.*"])
    broker.flush()
    broker.result(gone)
    published(broker, client, ("logs.api", b"5"))
    assert len(inbox) == 5  # the pattern's topics went with it, by name too


def test_go_clients_names_stay_literal():
    broker = InMemoryBroker()
    plain = broker.client(extensions=False)  # no Hello: the plain protocol
    inbox: list[Message] = []
    subscribed = plain.subscribe(["metrics.*"], inbox.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(subscribed)
    published(broker, plain, ("metrics.cpu", b"not it"), ("metrics.*", b"the literal topic"))
    assert seen(inbox) == [("metrics.*", b"the literal topic")]


@pytest_twisted.ensureDeferred
async def test_over_loopback_many_patterns_held_and_one_that_matches_new_topics():
    running = start_broker()
    args = argparse.Namespace(size=100, messages=0, prefetch=1, timeout=10)
    bench = Bench(reactor, "127.0.0.1", running.port, args, lambda: float("nan"))
    client = connect(reactor, running.endpoint, extensions=True)
    try:
        await bench.hold_patterns(3000)
        assert len(running.factory.broker.registry.patterns) == 3000
        inbox = Inbox()
        await client.subscribe(["sensors.*.temperature"], inbox, start=StartAt.BEGINNING)
        for room in ["kitchen", "hall", "attic"]:
            await client.publish(f"sensors.{room}.temperature", room.encode())
        await client.publish("sensors.kitchen.humidity", b"not this")
        await inbox.wait(3)
        assert sorted(inbox.payloads) == [b"attic", b"hall", b"kitchen"]
        assert {m.topic for m in inbox.messages} == {
            "sensors.kitchen.temperature",
            "sensors.hall.temperature",
            "sensors.attic.temperature",
        }
    finally:
        await client.close()
        await running.stop()


def test_a_group_of_a_pattern_shares_each_matching_topic_new_ones_included():
    broker = InMemoryBroker()
    publisher = broker.client(extensions=True)
    published(broker, publisher, ("orders.eu", b"e0"))
    members = [broker.client(extensions=True, prefetch=4) for _ in range(2)]
    handled: list[Message] = []
    for member in members:
        joined = member.subscribe(
            ["orders.>"], handled.append, start=StartAt.BEGINNING, group="shippers"
        )
        broker.flush()
        broker.result(joined)
    watcher = broker.client(extensions=True)
    everything: list[Message] = []
    watcher.subscribe(["orders.>"], everything.append, start=StartAt.BEGINNING)
    pairs = [
        (f"orders.{region}", b"%s%d" % (region.encode(), n))
        for n in range(20)
        for region in ("eu", "us")
    ]
    published(broker, publisher, *pairs)
    broker.advance(1)
    assert sorted(seen(handled)) == sorted([("orders.eu", b"e0"), *pairs])  # each once
    assert len(everything) == 41
    assert len(broker.core.groups) == 2  # one group per matching topic


def test_a_durable_pattern_resumes_each_topic_at_its_first_unacked():
    broker = InMemoryBroker(BrokerSettings(delivery=DeliverySettings(ack_delay=0.5)))
    publisher = broker.client(extensions=True)
    first: list[Message] = []

    def ack_even(message: Message):
        first.append(message)
        return True if message.offset % 2 == 0 else Deferred()

    consumer = broker.client(extensions=True, prefetch=20)
    consumer.subscribe(["logs.>"], ack_even, start=StartAt.BEGINNING, durable="archive")
    broker.flush()
    published(
        broker, publisher, *[(f"logs.{app}", b"%d" % n) for app in ("api", "db") for n in range(4)]
    )
    assert len(first) == 8
    closing = consumer.close()
    broker.advance(0.5)
    broker.result(closing)
    resumed: list[Message] = []
    again = broker.client(extensions=True, prefetch=20)
    again.subscribe(["logs.>"], resumed.append, start=StartAt.BEGINNING, durable="archive")
    broker.advance(1)
    assert sorted((m.topic, m.offset) for m in resumed) == [
        ("logs.api", 1),
        ("logs.api", 3),
        ("logs.db", 1),
        ("logs.db", 3),
    ]
