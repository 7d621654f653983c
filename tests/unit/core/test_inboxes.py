"""Request and reply in the core: inboxes are memory-only topics anyone may
answer and no pattern reads, a request to a topic nobody reads is answered
by the broker at once, and idle inboxes go."""

from __future__ import annotations

from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.core.inboxes import INBOX_IDLE
from broker.log import FileStore, FileStoreSettings, MemoryLog
from broker.security.permissions import Rules
from broker.wire.headers import Headers, encode_headers, with_headers


def a_request(inbox: str, correlation: str = "7") -> bytes:
    pairs = [("Reply-To", inbox), ("Correlation-Id", correlation)]
    return with_headers(b"question", encode_headers(pairs))


def test_an_inbox_is_kept_in_memory_and_anyone_may_answer_it(tmp_path):
    clock = Clock()
    store = FileStore(tmp_path, FileStoreSettings(), clock)
    broker = Broker(BrokerSettings(), clock, store)
    broker.start()
    try:
        only_orders = Rules.of(["orders.>"], [])
        assert broker.publish_refusal("_INBOX.abc", only_orders) is None
        assert broker.publish_refusal("audit", only_orders) is not None
        assert broker.append("_INBOX.abc", [b"answer"], only_orders, "p").first == 0
        assert isinstance(broker.registry.get("_INBOX.abc").log, MemoryLog)
        assert "_INBOX.abc" in broker.inboxes
        assert list(store.held_topics()) == []  # nothing of it on disk
    finally:
        broker.close()


def test_a_request_nobody_reads_is_answered_by_the_broker_at_once():
    broker = Broker(BrokerSettings(), Clock())
    appended = broker.append("rpc.nobody", [a_request("_INBOX.me")], None, "p", headered=True)
    assert appended.first == 0  # stored all the same
    (reply,) = broker.registry.get("_INBOX.me").log.read(0, 10)
    assert Headers.of(reply).pairs() == (("Status", "503"), ("Correlation-Id", "7"))
    assert broker.stats.no_responders == 1
    # Not a request: nothing answered.
    broker.append("rpc.nobody", [b"plain"], None, "p")
    assert broker.registry.get("_INBOX.me").log.next_offset == 1


def test_a_pattern_never_takes_an_inbox():
    broker = Broker(BrokerSettings(), Clock())
    broker.registry.get("_INBOX.x")
    assert not any(True for _ in broker.registry.patterns.match("_INBOX.x"))
    taken = []

    class Holder:
        def topic_created(self, topic):
            taken.append(topic.name)

    holder = Holder()
    broker.registry.patterns.add(">", holder)
    broker.registry.get("_INBOX.y")
    broker.registry.get("orders")
    assert taken == ["orders"]


def test_an_inbox_nobody_waits_on_goes_once_idle():
    clock = Clock()
    broker = Broker(BrokerSettings(), clock)
    broker.append("_INBOX.gone", [b"late reply"], None, "p")
    clock.advance(INBOX_IDLE / 2)
    broker.sweep_inboxes()
    assert "_INBOX.gone" in broker.registry
    clock.advance(INBOX_IDLE)
    broker.sweep_inboxes()
    assert "_INBOX.gone" not in broker.registry
    assert broker.inboxes == set()
