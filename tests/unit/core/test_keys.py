"""Keys and compacted topics in the core: the key index, the checks a
compacted topic makes of each publish, compaction in place in memory, and
the key-value view's answers, with a fake clock."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from broker.core import Broker, BrokerSettings
from broker.core.keys import Compaction, KeyIndex
from broker.log import MemoryStore, Retention
from broker.wire.headers import Headers, encode_headers, with_headers


def keyed(key: str, data: bytes = b"v", **extra: str) -> bytes:
    pairs = [("Key", key), *((name.replace("_", "-"), value) for name, value in extra.items())]
    return with_headers(data, encode_headers(pairs))


def a_broker(**settings) -> tuple[Broker, Clock]:
    clock = Clock()
    clock.advance(1000)
    store = MemoryStore(Retention(), clock=clock.seconds)
    return Broker(BrokerSettings(**settings), clock, store), clock


def test_which_topics_are_compacted():
    compaction = Compaction(("kv.>", "config.*"))
    assert compaction.applies_to("kv.users") and compaction.applies_to("config.eu")
    assert not compaction.applies_to("orders")
    compaction.on.add("orders")
    compaction.off.add("config.us")
    assert compaction.applies_to("orders") and not compaction.applies_to("config.us")


def test_the_index_knows_each_keys_latest_and_what_may_go():
    index = KeyIndex()
    index.add([keyed("a", b"1"), keyed("b", b"1"), keyed("a", b"2"), b"plain"], 0, now=0)
    index.add([keyed("b", b"")], 4, now=10)  # b deleted at 10
    assert (index.latest("a"), index.latest("b"), index.revision("b")) == (2, None, 5)
    assert index.names() == ["a"] and len(index) == 1
    assert index.history("a") == [0, 2]
    assert index.superseded == 2
    assert index.droppable(now=20, tombstone_retention=100, before=5) == [0, 1]
    assert index.droppable(now=200, tombstone_retention=100, before=5) == [0, 1, 4]
    index.forget([0, 1, 4])
    assert index.keys.keys() == {"a"} and index.superseded == 0


def test_a_compacted_topic_refuses_keyless_and_stale_writes_one_by_one():
    broker, _ = a_broker()
    first = broker.append("kv.b", [keyed("k", b"1")], None, "p", headered=True)
    assert first.first == 0
    batch = [
        b"no key",
        keyed("k", b"2", expected_revision="1"),  # k's revision: offset 0 + 1
        keyed("k", b"3", expected_revision="2"),  # k moved on in this batch
        keyed("new", b"x", expected_revision="0"),  # 0: must not exist yet
    ]
    appended = broker.append("kv.b", batch, None, "p", headered=True)
    assert appended.first == [
        "a compacted topic takes messages with a Key header",
        1,
        "wrong last revision for key 'k': written earlier in the batch",
        2,
    ]
    assert broker.key_indexes["kv.b"].latest("k") == 1


def test_compaction_in_memory_leaves_gaps_and_keeps_each_keys_latest():
    broker, clock = a_broker(tombstone_retention=60)
    for round_ in range(3):
        payloads = [keyed(f"k{n}", b"%d" % round_) for n in range(4)]
        broker.append("kv.b", payloads, None, "p", headered=True)
    broker.append("kv.b", [keyed("k0", b"")], None, "p", headered=True)  # deleted
    broker.compact_topics(force=True)
    log = broker.registry.get("kv.b").log
    held = log.read(0, 13)
    # k0's last value went too: its deletion came after it.
    assert [bytes(p) if p is not None else None for p in held] == [None] * 9 + [
        b"2",
        b"2",
        b"2",
        b"",
    ]
    assert broker.stats.compacted == 9
    clock.advance(61)
    broker.compact_topics(force=True)
    assert log.read(12, 1) == [None]  # the tombstone too, after its retention
    assert broker.key_indexes["kv.b"].names() == ["k1", "k2", "k3"]


def test_the_key_value_view_is_answered_from_the_index():
    broker, _ = a_broker()
    broker.append("kv.b", [keyed("a", b"1"), keyed("ab", b"2"), keyed("a", b"3")], None, "p", True)

    def ask(operation: str, **pairs: str) -> bytes:
        headers = [("Reply-To", "_INBOX.me"), ("Correlation-Id", operation), *pairs.items()]
        request = with_headers(b"?", encode_headers(headers))
        broker.append(f"$KV.{operation}.b", [request], None, "p", headered=True)
        inbox = broker.registry.get("_INBOX.me").log
        return inbox.read(inbox.next_offset - 1, 1)[0]

    got = ask("GET", Key="a")
    assert bytes(got) == b"3" and Headers.of(got)["Revision"] == "3"
    assert Headers.of(ask("GET", Key="zz"))["Status"] == "404"
    assert json.loads(bytes(ask("KEYS", Prefix="a"))) == ["a", "ab"]
    history = json.loads(bytes(ask("HISTORY", Key="a")))
    assert [entry["revision"] for entry in history] == [1, 3]
    revisions = json.loads(bytes(ask("REVISIONS")))
    assert revisions == {"next": 3, "revisions": {"a": 2, "ab": 1}}
    assert "$KV.GET.b" not in broker.registry  # requests are stored nowhere


def test_a_bad_key_value_request_or_revision_is_refused_and_stores_nothing():
    broker, _ = a_broker()
    request = with_headers(b"?", encode_headers([("Reply-To", "_INBOX.me")]))
    refused = broker.append("$KV.DROP.b", [request], None, "p", headered=True)
    assert refused.refusal == "no such key-value request: '$KV.DROP.b'"
    assert broker.append("$KV.GET", [request], None, "p", headered=True).refusal
    assert "$KV.DROP.b" not in broker.registry and "_INBOX.me" not in broker.registry
    stale = broker.append("kv.b", [keyed("k", b"1", expected_revision="soon")], None, "p", True)
    assert stale.first == ["wrong last revision for key 'k': it is 0"]
    assert broker.registry.get("kv.b").log.next_offset == 0  # nothing stored
