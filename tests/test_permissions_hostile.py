"""Permissions against a hostile user, in a broker in memory on a fake
clock: dead-letter topics read only with the right to their parent and
written only by the broker, and a reload that keeps a group's pattern
subscription when the rights it was granted by are unchanged."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol

from broker.client import Message
from broker.permissions import Rules
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker
from broker.users import User, Users, hash_secret
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


def user(name: str, publish=(), subscribe=(), deny_subscribe=()) -> User:
    return User(
        name,
        password_hash=hash_secret("pw", **FAST),
        publish=Rules.of(publish),
        subscribe=Rules.of(subscribe, deny_subscribe),
    )


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
    broker.factory.registry.get("orders.eu.dead-letter").append([payload])


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
    """A seed client: no Hello, so the user anonymous; it sends `frames` at once."""

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
    """With no [users.anonymous], a seed client's refused subscribe or
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
