"""Permissions against a hostile user, in a broker in memory on a fake
clock: dead-letter topics read only with the right to their parent and
written only by the broker, a reload that keeps a group's pattern
subscription when the rights it was granted by are unchanged, group and
durable names owned per user (and durable positions bounded per user), and
subscribes to topics that do not exist, which cost no topic."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol

from broker.client import Message
from broker.core.consumer import MAX_AWAITED_TOPICS
from broker.security.permissions import Rules
from broker.security.users import (
    DEFAULT_MAX_DURABLES,
    User,
    Users,
    UsersFileError,
    hash_secret,
    load_users,
)
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker
from broker.wire import (
    ACTION_PUBLISH,
    ERR_PERMISSION_DENIED,
    ERR_TOO_MANY_CONNECTIONS,
    STATUS_SUBSCRIBED,
    StartAt,
    encode_error,
    encode_publish,
    encode_subscribe,
    encode_u16,
)

FAST = {"n": 2**4, "r": 1, "p": 1}  # scrypt made cheap for tests


PASSWORD = hash_secret("pw", **FAST)


def user(name: str, publish=(), subscribe=(), deny_subscribe=(), **extra) -> User:
    return User(
        name,
        password_hash=PASSWORD,
        publish=Rules.of(publish),
        subscribe=Rules.of(subscribe, deny_subscribe),
        **extra,
    )


def users(*listed: User) -> Users:
    return Users({u.name: u for u in listed})


def subscribed(broker: InMemoryBroker, client, topics, inbox, **options) -> None:
    done = client.subscribe(topics, inbox.append, **options)
    broker.flush()
    broker.result(done)


def refusal(broker: InMemoryBroker, deferred) -> str:
    return str(failure_of(broker, deferred))


USERS = Users(
    {
        "admin": user("admin", publish=[">"], subscribe=[">"]),
        "eve": user(
            "eve", publish=["orders.eu.*"], subscribe=["orders.eu.*"], deny_subscribe=["orders.eu"]
        ),
        "ops": user("ops", subscribe=["orders.*.dead-letter"]),
        "bob": user("bob", subscribe=["orders.eu.*"]),
    }
)


def failure_of(broker: InMemoryBroker, deferred) -> BaseException:
    with pytest.raises(BaseException) as caught:
        broker.result(deferred)
    return caught.value


def dead_letter(broker: InMemoryBroker, payload: bytes) -> None:
    """What the broker itself writes when a message of orders.eu is given up."""
    broker.core.registry.get("orders.eu.dead-letter").append([payload])


def test_a_dead_letter_topic_is_read_only_with_the_right_to_read_its_topic():
    broker = InMemoryBroker(users=USERS)
    dead_letter(broker, b"the forbidden topic's message")
    eve = broker.client(user="eve", password="pw", extensions=True, prefetch=16)
    # By name: its pattern matches the name, but the topic is orders.eu's.
    named = eve.subscribe(["orders.eu.dead-letter"], lambda m: True, start=StartAt.BEGINNING)
    broker.flush()
    assert "permission denied" in str(failure_of(broker, named))
    # By a pattern that matches it by chance: never delivered.
    inbox: list[Message] = []
    matched = eve.subscribe(["orders.eu.*"], inbox.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(matched)
    admin = broker.client(user="admin", password="pw", extensions=True)
    sent = admin.publish("orders.eu.paris", b"hers to read")
    broker.flush()
    broker.result(sent)
    dead_letter(broker, b"another")
    broker.flush()
    assert [(m.topic, m.payload) for m in inbox] == [("orders.eu.paris", b"hers to read")]
    # A pattern that spells out the dead-letter part grants it explicitly.
    ops = broker.client(user="ops", password="pw", extensions=True, prefetch=16)
    letters: list[Message] = []
    granted = ops.subscribe(["orders.eu.dead-letter"], letters.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(granted)
    assert [m.payload for m in letters] == [b"the forbidden topic's message", b"another"]


def test_only_the_broker_writes_a_dead_letter_topic():
    broker = InMemoryBroker(users=USERS)
    for name in ("eve", "admin"):
        client = broker.client(user=name, password="pw", extensions=True)
        forged = client.publish("orders.eu.dead-letter", b"forged")
        broker.flush()
        assert "only the broker writes dead-letter topics" in str(failure_of(broker, forged))
    open_broker = InMemoryBroker()  # without a users file too
    anyone = open_broker.client(extensions=True)
    forged = anyone.publish("jobs.dead-letter", b"forged")
    open_broker.flush()
    assert "only the broker writes dead-letter topics" in str(failure_of(open_broker, forged))


def test_a_reload_keeps_a_groups_pattern_subscription_its_rights_still_allow(log_lines):
    broker = InMemoryBroker(users=USERS)
    bob = broker.client(user="bob", password="pw", extensions=True, prefetch=16)
    bob_too = broker.client(user="bob", password="pw", extensions=True, prefetch=16)
    shared: list[Message] = []
    plain: list[Message] = []
    subscribed = [
        bob.subscribe(["orders.eu.*"], shared.append, group="g2"),
        bob_too.subscribe(["orders.eu.*"], plain.append),
    ]
    broker.flush()
    for deferred in subscribed:
        broker.result(deferred)
    broker.factory.reload_users(Users(dict(USERS.by_name)))
    broker.flush()
    assert not log_lines.matching("no longer subscribed")
    admin = broker.client(user="admin", password="pw", extensions=True)
    sent = admin.publish("orders.eu.7", b"still both")
    broker.flush()
    broker.result(sent)
    assert [m.payload for m in shared] == [b"still both"]
    assert [m.payload for m in plain] == [b"still both"]


class GoStyle(Protocol):
    """A plain client: no Hello, so the user anonymous; it sends `frames` at once."""

    def __init__(self, frames: bytes) -> None:
        self.frames = frames
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.frames)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def go_style(broker: InMemoryBroker, frames: bytes) -> GoStyle:
    client = GoStyle(frames)
    factory = Factory()
    factory.buildProtocol = lambda address: client  # type: ignore[method-assign]
    broker.connect(factory)
    return client


def test_a_connection_whose_user_may_do_nothing_is_closed_after_its_refusal():
    """With no [users.anonymous], a plain client's refused subscribe or
    publish used to leave its connection open for as long as it liked."""
    broker = InMemoryBroker(users=USERS)
    subscriber = go_style(broker, encode_subscribe(["orders.eu"], StartAt.CURRENT))
    publisher = go_style(broker, encode_u16(ACTION_PUBLISH) + encode_publish("orders.eu", b"x"))
    broker.flush()
    assert subscriber.received == encode_error(f"{ERR_PERMISSION_DENIED}: subscribe to 'orders.eu'")
    assert publisher.received == encode_error(f"{ERR_PERMISSION_DENIED}: publish to 'orders.eu'")
    assert broker.connections == 0
    # A user with some rights keeps its connection after a refusal.
    bob = broker.client(user="bob", password="pw", extensions=True)
    refused = bob.subscribe(["orders.us"], lambda m: True)
    broker.flush()
    assert "permission denied" in str(failure_of(broker, refused))
    assert broker.connections == 1


def test_anonymous_connections_have_a_limit_of_their_own():
    users = Users({**USERS.by_name, "anonymous": User("anonymous", subscribe=Rules.of(["news"]))})
    broker = InMemoryBroker(BrokerSettings(max_anonymous_connections=3), users=users)
    subscribe = encode_subscribe(["news"], StartAt.CURRENT)
    readers = [go_style(broker, subscribe) for _ in range(4)]
    broker.flush()
    assert [r.received for r in readers[:3]] == [encode_u16(STATUS_SUBSCRIBED)] * 3
    assert readers[3].received == encode_error(ERR_TOO_MANY_CONNECTIONS)
    assert broker.connections == 3
    # Signed-in users do not count against it.
    admin = broker.client(user="admin", password="pw", extensions=True)
    ready = admin.connected(timeout=1)
    broker.flush()
    broker.result(ready)


# Case 4: group and durable names.


def test_a_durable_name_is_its_users_own_unless_the_file_shares_it():
    alice = user("alice", publish=["orders.>"], subscribe=["orders.>"])
    bob = user("bob", subscribe=["orders.>"])
    broker = InMemoryBroker(users=users(alice, bob))
    publisher = broker.client(user="alice", password="pw", extensions=True)
    alices, bobs = [], []
    alice_reader = broker.client(user="alice", password="pw", extensions=True)
    subscribed(broker, alice_reader, ["orders.eu"], alices, durable="billing")
    bob_reader = broker.client(user="bob", password="pw", extensions=True)
    subscribed(broker, bob_reader, ["orders.eu"], bobs, durable="billing")
    for n in range(4):
        publisher.publish("orders.eu", b"%d" % n)
    broker.flush()
    # Each has its own position: both see every message, neither takes the other's.
    assert [m.payload for m in alices] == [b"0", b"1", b"2", b"3"]
    assert [m.payload for m in bobs] == [b"0", b"1", b"2", b"3"]
    kept = {name for _, name in broker.core.groups.positions.positions}
    assert kept == {"alice:billing", "bob:billing"}

    shared = InMemoryBroker(
        users=users(
            user("alice", publish=["orders.>"], subscribe=["orders.>"], durables=frozenset({"b"})),
            user("bob", subscribe=["orders.>"], durables=frozenset({"b"})),
        )
    )
    publisher = shared.client(user="alice", password="pw", extensions=True)
    alices, bobs = [], []
    for name, inbox in (("alice", alices), ("bob", bobs)):
        reader = shared.client(user=name, password="pw", extensions=True)
        subscribed(shared, reader, ["orders.eu"], inbox, durable="b")
    for n in range(4):
        publisher.publish("orders.eu", b"%d" % n)
    shared.flush()
    # One shared consumer: each message went to one of them, once.
    assert sorted(m.payload for m in alices + bobs) == [b"0", b"1", b"2", b"3"]
    assert {name for _, name in shared.factory.broker.groups.positions.positions} == {"b"}


def test_a_group_name_is_its_users_own():
    broker = InMemoryBroker(
        users=users(
            user("alice", publish=["jobs"], subscribe=["jobs"]), user("bob", subscribe=["jobs"])
        )
    )
    publisher = broker.client(user="alice", password="pw", extensions=True)
    alices, bobs = [], []
    for name, inbox in (("alice", alices), ("bob", bobs)):
        reader = broker.client(user=name, password="pw", extensions=True)
        subscribed(broker, reader, ["jobs"], inbox, group="workers")
    for n in range(3):
        publisher.publish("jobs", b"%d" % n)
    broker.flush()
    assert len(alices) == len(bobs) == 3


def test_a_user_may_keep_a_bounded_number_of_durable_positions():
    broker = InMemoryBroker(
        users=users(
            user("eve", subscribe=[">"], max_durables=2),
            user("admin", publish=[">"], subscribe=[">"]),
        )
    )
    admin = broker.client(user="admin", password="pw", extensions=True)
    made = [admin.publish(f"t.{n}", b"x") for n in range(1, 4)]
    broker.flush()
    assert [broker.result(m) for m in made] == [0, 0, 0]
    eve = broker.client(user="eve", password="pw", extensions=True)
    subscribed(broker, eve, ["t.1", "t.2"], [], durable="d")
    refused = eve.subscribe(["t.3"], lambda m: None, durable="d")
    broker.flush()
    assert "too many durable consumers: user eve may keep 2" in refusal(broker, refused)
    subscribed(broker, eve, ["t.1"], [], durable="d")  # one it has: no new position
    assert len(broker.core.groups.positions.positions) == 2
    # Waiting for a topic that does not exist counts too, when subscribed...
    refused = eve.subscribe(["t.4"], lambda m: None, durable="d")
    broker.flush()
    assert "too many durable consumers" in refusal(broker, refused)
    subscribed(broker, admin, ["t.3"], [], durable="d")  # another user's are not eve's
    assert len(broker.core.groups.positions.positions) == 3


def test_a_durable_consumer_whose_topic_comes_past_its_users_bound_is_told(log_lines):
    """Two connections each wait for a topic with room for one position:
    the second topic to come finds the bound reached, and says so."""
    broker = InMemoryBroker(
        users=users(
            user("eve", subscribe=[">"], max_durables=1),
            user("admin", publish=[">"], subscribe=[">"]),
        )
    )
    first, second = (broker.client(user="eve", password="pw", extensions=True) for _ in "12")
    inbox: list[Message] = []
    subscribed(broker, first, ["t.4"], inbox, durable="d")
    subscribed(broker, second, ["t.5"], [], durable="d")
    admin = broker.client(user="admin", password="pw", extensions=True)
    admin.publish("t.4", b"for eve")
    admin.publish("t.5", b"x")
    broker.flush()
    assert [m.payload for m in inbox] == [b"for eve"]
    said = "durable consumer not joined, its user's max_durables reached: $durable/d/t.5"
    assert log_lines.matching(f"broker error: {said}")  # what the client heard
    # Not asked for again on reconnect:
    assert "$durable/d/t.5" not in second._subscriptions.subscribed
    assert list(broker.core.groups.positions.positions) == [("t.4", "eve:d")]


def test_the_users_file_lists_shared_names_and_a_bound(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text(
        '[users.alice]\ngroups = ["workers"]\ndurables = ["billing"]\nmax_durables = 5\n'
        "[users.bob]\n"
    )
    loaded = load_users(path)
    alice, bob = loaded.by_name["alice"], loaded.by_name["bob"]
    assert alice.owned_group("workers", durable=False) == "workers"
    assert alice.owned_group("workers", durable=True) == "alice:workers"
    assert alice.owned_group("billing", durable=True) == "billing"
    assert alice.max_durables == 5 and bob.max_durables == DEFAULT_MAX_DURABLES
    for bad, said in [
        ('groups = ["no/slash"]', "a group name is 1-64"),
        ('durables = "billing"', "a list of group names"),
        ("max_durables = -1", "max_durables must be an integer, 0 or more"),
        ("max_durables = true", "max_durables must be an integer, 0 or more"),
    ]:
        path.write_text(f"[users.alice]\n{bad}\n")
        with pytest.raises(UsersFileError, match=said):
            load_users(path)


# Case 5: subscribes cost no topic.


def test_subscribing_to_topics_that_do_not_exist_uses_none_of_the_topic_budget():
    broker = InMemoryBroker(
        BrokerSettings(max_topics=5),
        users=users(user("reader", subscribe=[">"]), user("admin", publish=[">"], subscribe=[">"])),
    )
    reader = broker.client(user="reader", password="pw")  # plain protocol, as Go clients
    inbox: list[Message] = []
    subscribed(broker, reader, [f"new.{n}" for n in range(4)], inbox)
    assert len(broker.core.registry) == 0
    admin = broker.client(user="admin", password="pw", extensions=True)
    sent = [admin.publish(f"admin.{n}", b"x") for n in range(4)]
    sent.append(admin.publish("new.2", b"for the reader"))
    broker.flush()
    assert [broker.result(s) for s in sent] == [0, 0, 0, 0, 0]
    assert [(m.topic, m.payload) for m in inbox] == [("new.2", b"for the reader")]
    assert broker.core.registry.awaited == 3
    closing = reader.close()
    broker.flush()
    broker.result(closing)
    assert broker.core.registry.awaited == 0  # they went with the connection


def test_a_connection_waits_for_a_bounded_number_of_topics():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    subscribed(broker, client, [f"t.{n}" for n in range(MAX_AWAITED_TOPICS)], [])
    refused = client.subscribe(["one.more"], lambda m: None)
    broker.flush()
    assert "too many topics" in refusal(broker, refused)
    assert broker.core.registry.awaited == MAX_AWAITED_TOPICS


def test_a_durable_consumer_waiting_for_its_topic_starts_at_its_first_message():
    broker = InMemoryBroker()
    client = broker.client(extensions=True)
    inbox: list[Message] = []
    subscribed(broker, client, ["later"], inbox, durable="d", start=StartAt.CURRENT)
    client.publish("later", b"first")
    broker.flush()
    assert [m.payload for m in inbox] == [b"first"]
    assert broker.core.groups.positions.get("later", "d") is not None


# Case 6: connections refused everything.
