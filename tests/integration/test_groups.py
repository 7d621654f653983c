"""Consumer groups: members of a group share a topic's messages, each
message to one member; a member that goes hands its unacked messages to the
others, their delivery counts kept; plain subscribers still get everything.
In memory on a fake clock, and once over loopback with 30,000 messages."""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from broker.client import Message, connect
from broker.core.delivery import DeliverySettings
from broker.monitoring.metrics import snapshot
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker, start_broker
from broker.wire import StartAt
from tests.conftest import Inbox


def publish_all(broker: InMemoryBroker, client, topic: str, count: int) -> None:
    sent = [client.publish(topic, b"%d" % n) for n in range(count)]
    broker.flush()
    for each in sent:
        broker.result(each)


def test_members_share_the_work_and_plain_subscribers_see_everything():
    broker = InMemoryBroker()
    members = [broker.client(extensions=True, prefetch=8) for _ in range(3)]
    handled: list[list[int]] = [[], [], []]
    for index, member in enumerate(members):
        joined = member.subscribe(
            ["jobs"],
            lambda m, mine=handled[index]: mine.append(m.offset) or True,
            start=StartAt.BEGINNING,
            group="workers",
        )
        broker.flush()
        broker.result(joined)
    watcher = broker.client(extensions=True)
    everything: list[Message] = []
    watcher.subscribe(["jobs"], everything.append, start=StartAt.BEGINNING)
    publisher = broker.client(extensions=True)
    publish_all(broker, publisher, "jobs", 600)
    broker.advance(1)
    offsets = sorted(o for mine in handled for o in mine)
    assert offsets == list(range(600))  # each once
    assert all(mine for mine in handled)  # every member had work
    assert len(everything) == 600
    assert len(broker.core.groups) == 1
    state = snapshot(broker.factory)  # what /metrics and /varz report
    assert (state["groups"], state["durable_consumers"]) == (1, 0)


def test_a_member_that_goes_hands_its_unacked_messages_to_the_others():
    broker = InMemoryBroker(BrokerSettings(delivery=DeliverySettings(ack_delay=0.5)))
    stuck = broker.client(extensions=True, prefetch=5)
    held: list[Deferred] = []
    stuck.subscribe(
        ["jobs"],
        lambda m: held.append(Deferred()) or held[-1],
        start=StartAt.BEGINNING,
        group="workers",
    )
    broker.flush()
    publisher = broker.client(extensions=True)
    publish_all(broker, publisher, "jobs", 5)
    assert len(held) == 5
    healthy = broker.client(extensions=True, prefetch=5)
    done: list[Message] = []
    joined = healthy.subscribe(["jobs"], done.append, group="workers")
    broker.flush()
    broker.result(joined)
    assert done == []  # all five are with the stuck member
    closing = stuck.close()
    broker.advance(0.5)  # the ack delay
    broker.result(closing)
    assert sorted(m.offset for m in done) == [0, 1, 2, 3, 4]
    assert {m.attempt for m in done} == {2}  # delivery counts travel with the message


def test_max_deliveries_and_dead_letters_apply_to_the_group():
    broker = InMemoryBroker(
        BrokerSettings(delivery=DeliverySettings(ack_delay=0.1, max_deliveries=2))
    )
    refusing = [broker.client(extensions=True, prefetch=1) for _ in range(2)]
    for member in refusing:
        member.subscribe(["jobs"], lambda m: False, start=StartAt.BEGINNING, group="g")
    letters: list[Message] = []
    reader = broker.client(extensions=True)
    reader.subscribe(["jobs.dead-letter"], letters.append, start=StartAt.BEGINNING)
    publish_all(broker, broker.client(extensions=True), "jobs", 1)
    broker.advance(1)
    assert len(letters) == 1
    assert broker.core.stats.dead_letters == 1


def test_bad_group_names_are_refused():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    with pytest.raises(ValueError, match="a group name is"):
        client.subscribe(["jobs"], print, group="no spaces")
    with pytest.raises(ValueError, match="not at an offset"):
        client.subscribe(["jobs.*"], print, group="g", start=StartAt.FROM, offset=1)
    with pytest.raises(ValueError, match="need extensions=True"):
        broker.client(extensions=False).subscribe(["jobs"], print, group="g")


async def pool(endpoint: str):
    """Three members of group "pool" on "work", with an Inbox each, and a publisher."""
    members = [connect(reactor, endpoint, extensions=True, prefetch=64) for _ in range(3)]
    publisher = connect(reactor, endpoint, extensions=True)
    inboxes = [Inbox() for _ in members]
    for member, inbox in zip(members, inboxes, strict=True):
        await member.subscribe(["work"], inbox, start=StartAt.BEGINNING, group="pool")
    return members, publisher, inboxes


async def publish_jobs(publisher, count: int) -> None:
    """Publish `count` jobs to "work", confirmed, 5,000 at a time."""
    for first in range(0, count, 5_000):
        sent = [publisher.publish("work", b"job %d" % n) for n in range(first, first + 5_000)]
        for each in sent:
            await each


@pytest_twisted.ensureDeferred
async def test_over_loopback_three_members_share_30000_messages_once_each():
    running = start_broker()
    members, publisher, inboxes = await pool(running.endpoint)
    try:
        await publish_jobs(publisher, 30_000)
        for _ in range(3000):  # up to 30 s
            if sum(len(inbox.messages) for inbox in inboxes) >= 30_000:
                break
            await deferLater(reactor, 0.01, lambda: None)
        offsets = Counter(m.offset for inbox in inboxes for m in inbox.messages)
        assert len(offsets) == 30_000 and set(offsets.values()) == {1}
        shares = [len(inbox.messages) for inbox in inboxes]
        # As fast as one another, each takes its part within 10% of a third.
        assert all(abs(share - 10_000) <= 1_000 for share in shares), shares
    finally:
        for client in [*members, publisher]:
            await client.close()
        await running.stop()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_over_loopback_a_member_that_leaves_mid_run_loses_the_group_nothing():
    running = start_broker(BrokerSettings(delivery=DeliverySettings(ack_delay=0.05)))
    members, publisher, inboxes = await pool(running.endpoint)
    try:
        await publish_jobs(publisher, 10_000)
        await inboxes[0].wait(500)
        await members[0].close()  # mid-run: what it had not acked goes to the others
        for _ in range(3000):
            handled = {m.offset for inbox in inboxes for m in inbox.messages}
            if len(handled) >= 10_000:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert handled == set(range(10_000))
        twice = Counter(m.offset for inbox in inboxes for m in inbox.messages) - Counter(
            range(10_000)
        )
        # Only what the member that left had been handed can come twice.
        assert set(twice) <= {m.offset for m in inboxes[0].messages}
    finally:
        for client in [*members, publisher]:
            await client.close()
        await running.stop()
