"""One behaviour suite, every client: each scenario runs through the Twisted,
the asyncio and the blocking client (tests/clients.py) against a real
`twistd broker`, so that no client can drift from the others."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.sansio.kv import KeyChanged
from broker.sansio.messages import AuthenticationFailed, BrokerError
from broker.sansio.requests import NoResponders, RequestTimedOut
from broker.security.users import hash_secret, user_entry
from broker.wire import StartAt
from tests.clients import (
    KINDS,
    BrokerProcess,
    ConfirmCuttingProxy,
    GoLikeProxy,
    client_of,
    in_thread,
    open_client,
)
from tests.redis_nodes import unique_prefix

pytestmark = pytest.mark.parametrize("kind", KINDS)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the scenarios that need nothing special of it."""
    process = BrokerProcess(tmp_path_factory.mktemp("broker")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["memory", "file", "redis"])
def on_each_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker on each store, for the scenarios every store must pass: in
    memory, in files, and on the shared Redis Cluster (a key prefix of its own)."""
    workdir = tmp_path_factory.mktemp(f"broker-{request.param}")
    if request.param == "memory":
        process = BrokerProcess(workdir)
    elif request.param == "file":
        process = BrokerProcess(workdir, "--data-dir", str(workdir / "data"))
    else:
        cluster = request.getfixturevalue("redis_servers")["cluster"]
        options = ("--store", cluster, "--redis-prefix", unique_prefix())
        process = BrokerProcess(workdir, *options, reactor="asyncio")
    process.start()
    yield process
    process.stop()


def topic_for(request: pytest.FixtureRequest, suffix: str = "") -> str:
    """A topic of this test and client alone, on the shared broker."""
    name = request.node.name.replace("[", ".").replace("]", "").replace("_", "-")
    return f"{name}{suffix}"


@in_thread
def test_publish_is_confirmed_with_offsets_and_replayed_from_the_beginning(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        assert [client.publish(topic, f"m{n}".encode()) for n in range(3)] == [0, 1, 2]
        sub = client.subscribe([topic], start=StartAt.BEGINNING)
        got = sub.take(3)
        assert [(g.offset, g.data) for g in got] == [(0, b"m0"), (1, b"m1"), (2, b"m2")]


@in_thread
def test_many_published_at_once_are_consumed_in_batches_and_a_nacked_batch_comes_again(
    kind, running, request
):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        sent = [(topic, b"m%d" % n) for n in range(300)]
        assert client.publish_many(sent) == list(range(300))
        sub = client.subscribe_batches([topic], start=StartAt.BEGINNING)
        (given_back, *_) = sub.take_batches(1, ack=False)
        batches = sub.take_batches(300)
        got = [g for batch in batches for g in batch]
        assert sorted((g.offset, g.data) for g in got) == [(n, b"m%d" % n) for n in range(300)]
        again = {g.offset: g.attempt for g in got if g.offset in {b.offset for b in given_back}}
        assert set(again.values()) == {2}  # the nacked batch, delivered a second time
        assert all(len(batch) >= 1 for batch in batches)


@pytest.mark.parametrize("start", [StartAt.FROM, StartAt.FROM64])
@in_thread
def test_replay_starts_at_the_offset_asked_for(kind, start, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        for n in range(4):
            client.publish(topic, f"m{n}".encode())
        sub = client.subscribe([topic], start=start, offset=2)
        assert [(g.offset, g.data) for g in sub.take(2)] == [(2, b"m2"), (3, b"m3")]


@in_thread
def test_current_skips_what_was_published_before(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        client.publish(topic, b"old")
        sub = client.subscribe([topic], start=StartAt.CURRENT)
        client.publish(topic, b"new")
        assert [g.data for g in sub.take(1)] == [b"new"]


@in_thread
def test_a_group_gives_each_message_to_one_member(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as first, client_of(kind, running.url) as second:
        one = first.subscribe([topic], group="workers", start=StartAt.BEGINNING)
        two = second.subscribe([topic], group="workers", start=StartAt.BEGINNING)
        for n in range(6):
            first.publish(topic, f"job{n}".encode())
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 6 and time.monotonic() < deadline:
            for sub in (one, two):
                with contextlib.suppress(TimeoutError):
                    got += sub.take(1, timeout=0.2)
        # Six messages, each to one member: a message given to both would
        # show its offset twice.
        assert sorted(g.offset for g in got) == list(range(6))


@in_thread
def test_a_durable_consumer_resumes_at_its_first_unacked_message(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        for n in range(4):
            client.publish(topic, f"m{n}".encode())
        sub = client.subscribe([topic], durable="audit", start=StartAt.BEGINNING)
        assert [g.offset for g in sub.take(2)] == [0, 1]
    with client_of(kind, running.url) as again:
        sub = again.subscribe([topic], durable="audit", start=StartAt.BEGINNING)
        assert [g.offset for g in sub.take(2)] == [2, 3]


@in_thread
def test_a_pattern_takes_the_topics_it_matches(kind, running, request):
    base = topic_for(request)
    with client_of(kind, running.url) as client:
        sub = client.subscribe([f"{base}.*"], start=StartAt.BEGINNING)
        client.publish(f"{base}.eu.deep", b"not matched")
        client.publish(f"{base}.eu", b"eu")
        client.publish(f"{base}.us", b"us")
        got = sub.take(2)
        assert sorted((g.topic, g.data) for g in got) == [
            (f"{base}.eu", b"eu"),
            (f"{base}.us", b"us"),
        ]


@in_thread
def test_nothing_is_lost_through_a_broker_restart(kind, tmp_path, request):
    """Published while the broker is down: sent once it is back; the
    subscriber resumes where it was, from the broker's files."""
    topic = topic_for(request)
    process = BrokerProcess(tmp_path, "--data-dir", str(tmp_path / "data")).start()
    try:
        with client_of(kind, process.url) as client:
            sub = client.subscribe([topic], start=StartAt.BEGINNING)
            assert client.publish(topic, b"before") == 0
            assert [g.data for g in sub.take(1)] == [b"before"]
            process.stop()
            process.start()
            assert client.publish(topic, b"after") == 1
            assert [(g.offset, g.data) for g in sub.take(1)] == [(1, b"after")]
    finally:
        process.stop()


@in_thread
def test_a_message_id_is_remembered_through_a_restart(kind, tmp_path, request):
    """The restarted broker reads the ids its log's tail holds: the same
    id published again is confirmed with the first copy's offset."""
    topic = topic_for(request)
    process = BrokerProcess(tmp_path, "--data-dir", str(tmp_path / "data")).start()
    try:
        with client_of(kind, process.url) as client:
            assert client.publish(topic, b"first", headers={"Msg-Id": "a"}) == 0
            assert client.publish(topic, b"plain") == 1
        process.stop()
        process.start()
        with client_of(kind, process.url) as client:
            assert client.publish(topic, b"first again", headers={"Msg-Id": "a"}) == 0
            assert client.publish(topic, b"second", headers={"Msg-Id": "b"}) == 2
    finally:
        process.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker with a users file: alice publishes to orders.* only."""
    workdir = tmp_path_factory.mktemp("guarded")
    entry = user_entry("alice", "password", hash_secret("s3cret"), ["orders.*"], ["orders.*"])
    (workdir / "users.toml").write_text(entry)
    process = BrokerProcess(workdir, "--users", str(workdir / "users.toml")).start()
    yield process
    process.stop()


@in_thread
def test_refused_credentials_fail_at_once(kind, guarded):
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        open_client(kind, guarded.url, user="alice", password="wrong")


@in_thread
def test_a_publish_the_user_may_not_make_is_refused(kind, guarded):
    with client_of(kind, guarded.url, user="alice", password="s3cret") as client:
        assert client.publish("orders.eu", b"fine") is not None
        with pytest.raises(BrokerError, match="permission denied"):
            client.publish("payroll", b"no")


@in_thread
def test_a_broker_without_extensions_is_spoken_to_plainly(kind, running, request):
    """As the seed's Go broker is: Hello refused, the plain protocol after."""
    topic = topic_for(request)
    proxy = GoLikeProxy(running.port)
    try:
        with client_of(kind, proxy.url) as client:
            sub = client.subscribe([topic])
            assert client.publish(topic, b"plain") is None  # no confirms to give
            got = sub.take(1)
            assert [(g.topic, g.offset, g.data) for g in got] == [(topic, None, b"plain")]
        assert proxy.hellos >= 1
    finally:
        proxy.close()


@in_thread
def test_headers_travel_with_a_message_and_a_plain_subscriber_gets_the_payload_alone(
    kind, running, request
):
    topic = topic_for(request)
    pairs = [("Content-Type", "application/json"), ("traceparent", "00-ab-01"), ("tag", "ü")]
    with (
        client_of(kind, running.url) as client,
        client_of(kind, running.url, extensions=False) as plain,
    ):
        seed_sub = plain.subscribe([topic])
        assert client.publish(topic, b"{}", headers=pairs) == 0
        assert client.publish(topic, b"[]", headers={"TAG": "x"}) == 1
        assert client.publish(topic, b"none") == 2
        got = client.subscribe([topic], start=StartAt.BEGINNING).take(3)
        assert [(g.data, g.headers) for g in got] == [
            (b"{}", tuple(pairs)),
            (b"[]", (("TAG", "x"),)),
            (b"none", ()),
        ]
        plainly = [seed_sub.take(1)[0] for _ in range(3)]  # one in flight at a time
        assert [(g.data, g.headers) for g in plainly] == [
            (b"{}", ()),
            (b"[]", ()),
            (b"none", ()),
        ]
        with pytest.raises(ValueError, match="not a token"):
            client.publish(topic, b"x", headers={"bad name": "x"})


@in_thread
def test_headers_to_a_broker_that_does_not_take_them_are_refused_not_dropped(
    kind, running, request
):
    topic = topic_for(request)
    proxy = GoLikeProxy(running.port)
    try:
        with client_of(kind, proxy.url) as client:
            with pytest.raises(BrokerError, match="does not take headers"):
                client.publish(topic, b"x", headers={"a": "b"})
            assert client.publish(topic, b"plain") is None  # the connection goes on
    finally:
        proxy.close()


@in_thread
def test_a_publish_whose_confirm_was_lost_is_stored_once(kind, running, request):
    topic = topic_for(request)
    proxy = ConfirmCuttingProxy(running.port)
    try:
        with client_of(kind, proxy.url) as client:
            # Stored, its confirm cut off with the connection, sent again on
            # the next: confirmed with the first copy's offset.
            assert client.publish(topic, b"once") == 0
            assert client.publish(topic, b"next") == 1
        assert proxy.cuts == 1
    finally:
        proxy.close()
    with client_of(kind, running.url) as reader:
        got = reader.subscribe([topic], start=StartAt.BEGINNING).take(2)
        # The id the client gave is the broker's business: not delivered.
        assert [(g.offset, g.data, g.headers) for g in got] == [(0, b"once", ()), (1, b"next", ())]


@in_thread
def test_a_message_id_published_again_is_stored_once(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        assert client.publish(topic, b"a", headers={"Msg-Id": "order-17"}) == 0
        assert client.publish(topic, b"a again", headers={"msg-id": "order-17"}) == 0
        batch = [
            (topic, b"b", {"Msg-Id": "order-18", "kind": "x"}),
            (topic, b"b again", {"Msg-Id": "order-18"}),
            (topic, b"c", None),
        ]
        assert client.publish_many(batch) == [1, 1, 2]
        got = client.subscribe([topic], start=StartAt.BEGINNING).take(3)
        assert [(g.offset, g.data, g.headers) for g in got] == [
            (0, b"a", ()),
            (1, b"b", (("kind", "x"),)),
            (2, b"c", ()),
        ]


@in_thread
def test_a_request_gets_its_responders_reply(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        client.reply(topic, lambda asked: (b"re: " + asked.data, {"Served-By": "one"}))
        for n in range(3):
            got = client.request(topic, b"question %d" % n, headers={"Tenant": "acme"})
            assert got.data == b"re: question %d" % n
            headers = dict(got.headers)
            assert headers["Served-By"] == "one"
            assert got.topic.startswith("_INBOX.")


@in_thread
def test_a_request_nobody_reads_fails_at_once_and_one_unanswered_times_out(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        began = time.monotonic()
        with pytest.raises(NoResponders, match="no responders"):
            client.request(f"{topic}.nobody", b"anyone?", timeout=30)
        assert time.monotonic() - began < 10  # answered by the broker, not by the timeout
        client.reply(topic, lambda asked: None)  # reads, never replies
        with pytest.raises(RequestTimedOut):
            client.request(topic, b"hello?", timeout=0.5)


@in_thread
def test_a_delayed_message_comes_when_due_and_an_expired_one_never(kind, running, request):
    topic = topic_for(request)
    with client_of(kind, running.url) as client:
        sub = client.subscribe([topic], start=StartAt.BEGINNING)
        published = time.time()
        assert client.publish(topic, b"in a second", delay=1.0) == 0
        assert client.publish(topic, b"at once") == 1
        (first,) = sub.take(1)
        assert (first.offset, first.data) == (1, b"at once")
        (later,) = sub.take(1)
        assert (later.offset, later.data) == (0, b"in a second")
        assert time.time() >= published + 0.99  # not before it was due
        # An expiring message nobody took in time is skipped by all.
        assert client.publish(topic, b"short-lived", ttl=0.3) == 2
        assert client.publish(topic, b"lasting", ttl=600) == 3
        while time.time() < published + 1.3:  # the time itself is the condition
            time.sleep(0.05)
        replay = client.subscribe([topic], start=StartAt.FROM, offset=2)
        assert [(g.offset, g.data) for g in replay.take(1)] == [(3, b"lasting")]


@in_thread
def test_a_key_value_bucket_puts_gets_and_deletes_without_replaying(kind, on_each_store, request):
    bucket = topic_for(request).replace(".", "-")
    with client_of(kind, on_each_store.url) as client:
        kv = client.kv(bucket)
        first = kv.put("color", b"red")
        assert kv.put("size", b"10") == first + 1
        second = kv.put("color", b"blue")
        got = kv.get("color")
        assert (got.key, got.value, got.revision, got.deleted) == ("color", b"blue", second, False)
        assert kv.get("nothing") is None
        assert kv.keys() == ["color", "size"] and kv.keys("co") == ["color"]
        assert [(e.value, e.revision) for e in kv.history("color")] == [
            (b"red", first),
            (b"blue", second),
        ]
        deleted = kv.delete("size")
        assert kv.get("size") is None and kv.keys() == ["color"]
        assert kv.history("size")[-1].deleted and kv.history("size")[-1].revision == deleted


@in_thread
def test_an_update_on_a_key_that_moved_on_fails(kind, on_each_store, request):
    bucket = topic_for(request).replace(".", "-")
    with client_of(kind, on_each_store.url) as client:
        kv = client.kv(bucket)
        created = kv.update("lock", b"mine", 0)  # 0: only if it has none
        with pytest.raises(KeyChanged, match="wrong last revision"):
            kv.update("lock", b"theirs", 0)
        moved = kv.update("lock", b"mine again", created)
        with pytest.raises(KeyChanged):
            kv.update("lock", b"stale", created)
        assert kv.get("lock").revision == moved


@in_thread
def test_a_watch_gives_current_values_then_changes(kind, on_each_store, request):
    bucket = topic_for(request).replace(".", "-")
    with client_of(kind, on_each_store.url) as client:
        kv = client.kv(bucket)
        kv.put("app.a", b"1")
        kv.put("app.b", b"1")
        kv.put("app.a", b"2")  # supersedes a's first
        kv.put("other", b"x")
        kv.put("app.gone", b"1")
        kv.delete("app.gone")  # deleted before the watch: not shown
        with client_of(kind, on_each_store.url) as writer:
            # A second client deletes a key once the current values came.
            later = writer.kv(bucket)
            entries = kv.watch(3, "app.", change=lambda: later.delete("app.b"), after=2)
        assert [(e.key, e.value, e.deleted) for e in entries] == [
            ("app.b", b"1", False),
            ("app.a", b"2", False),
            ("app.b", b"", True),
        ]


@in_thread
def test_the_asyncio_and_blocking_clients_load_no_twisted(kind):
    if kind == "twisted":
        pytest.skip("the Twisted client is Twisted")
    module = {"asyncio": "broker.aio", "blocking": "broker.sync"}[kind]
    program = f"import sys, {module}; print(sorted(m for m in sys.modules if 'twisted' in m))"
    shown = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert shown.stdout.strip() == "[]"
