"""Users and permissions in a broker, in memory on a fake clock: passwords,
tokens, anonymous (Go-style) clients, per-topic publish and subscribe rules,
connection limits, reloads that narrow a connected user's rights, and the
slowdown of repeated failures. Loopback, TLS and process tests are in
test_auth_live.py."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from broker.client import AuthenticationFailed, Message
from broker.client.protocols import PublisherProtocol
from broker.security.auth import FailureThrottle
from broker.security.permissions import Rules
from broker.security.users import User, Users, hash_secret, hash_token
from broker.server import BrokerSettings
from broker.testing import InMemoryBroker
from broker.wire import (
    ACTION_PUBLISH,
    ERR_AUTH_FAILED,
    ERR_INVALID_HELLO,
    StartAt,
    encode_hello,
    encode_publish,
    encode_u16,
)

FAST = {"n": 2**4, "r": 1, "p": 1}  # scrypt made cheap for tests
TOKEN = "t0k3n-for-the-ingest-job"


def make_users(**extra: User) -> Users:
    return Users(
        {
            "alice": User(
                "alice",
                password_hash=hash_secret("s3cret", **FAST),
                publish=Rules.of(["orders.>"], ["orders.secret"]),
                subscribe=Rules.of(["orders.*", "audit"], ["orders.secret"]),
            ),
            "ingest": User("ingest", token_hash=hash_token(TOKEN), publish=Rules.of(["metrics.>"])),
            **extra,
        }
    )


def failure_of(broker: InMemoryBroker, deferred: Deferred) -> BaseException:
    with pytest.raises(BaseException) as caught:
        broker.result(deferred)
    return caught.value


def closed(broker: InMemoryBroker, client) -> None:
    closing = client.close()
    broker.flush()
    broker.result(closing)


def test_a_right_password_signs_in_and_wrong_ones_are_refused_and_logged(log_lines):
    broker = InMemoryBroker(users=make_users())
    alice = broker.client(user="alice", password="s3cret")
    sent = alice.publish("orders.eu", b"pizza")
    broker.flush()
    assert broker.result(sent) == 0
    assert broker.result(alice.publisher_connected()).server["user"] == "alice"
    for user, password, logged in [
        ("alice", "guess", "wrong password for 'alice'"),
        ("mallory", "s3cret", "unknown user 'mallory'"),
    ]:
        intruder = broker.client(user=user, password=password)
        waiting = intruder.connected(timeout=1)
        broker.advance(1)
        refused = failure_of(broker, waiting)
        # Refused credentials are AuthenticationFailed (they were reported as
        # BrokerUnreachable and retried for ever), and every later call too.
        assert isinstance(refused, AuthenticationFailed)
        assert f"refused the credentials: {ERR_AUTH_FAILED}" in str(refused)
        assert any("127.0.0.1" in line for line in log_lines.matching(logged))
        later = intruder.publish("orders.eu", b"after")
        assert isinstance(failure_of(broker, later), AuthenticationFailed)
        attempts = len(log_lines.matching(logged))
        broker.advance(30)
        assert len(log_lines.matching(logged)) == attempts  # no more retries
        closed(broker, intruder)
    assert "guess" not in log_lines.text  # never the password
    assert broker.connections == 1  # each refused connection was closed


def test_a_token_signs_in_as_its_user():
    broker = InMemoryBroker(users=make_users())
    job = broker.client(token=TOKEN)
    sent = job.publish("metrics.cpu", b"0.5")
    broker.flush()
    assert broker.result(sent) == 0
    assert broker.result(job.publisher_connected()).server["user"] == "ingest"
    wrong = broker.client(token="not-" + TOKEN)
    waiting = wrong.connected(timeout=1)
    broker.advance(1)
    assert ERR_AUTH_FAILED in str(failure_of(broker, waiting))


def test_publishes_outside_the_users_rights_are_refused_one_by_one():
    broker = InMemoryBroker(users=make_users())
    alice = broker.client(user="alice", password="s3cret")
    sent = [
        alice.publish("orders.eu", b"1"),
        alice.publish("billing", b"2"),  # no allow pattern
        alice.publish("orders.secret", b"3"),  # denied, though orders.> allows it
        alice.publish("orders.us.east", b"4"),  # orders.> takes more tokens
    ]
    broker.flush()
    assert broker.result(sent[0]) == 0
    assert "permission denied: publish to 'billing'" in str(failure_of(broker, sent[1]))
    assert "permission denied: publish to 'orders.secret'" in str(failure_of(broker, sent[2]))
    assert broker.result(sent[3]) == 0  # the stream stayed in step
    assert "billing" not in [topic.name for topic in broker.core.registry]


def test_a_publisher_without_confirms_gets_one_error_per_refused_message():
    broker = InMemoryBroker(users=make_users())
    errors: list[str] = []
    plain = PublisherProtocol(confirms=False, credentials={"user": "alice", "password": "s3cret"})
    plain.on_error = errors.append
    broker.connect(_factory_of(plain))
    broker.flush()
    for topic in ["orders.eu", "billing", "orders.eu", "billing"]:
        plain.publish(topic, b"x")
    broker.flush()
    assert errors == ["permission denied: publish to 'billing'"] * 2
    assert broker.core.registry.get("orders.eu").log.next_offset == 2
    assert not plain.lost.called  # refused messages, not a refused connection


def test_a_subscribe_naming_any_forbidden_topic_is_refused_whole():
    broker = InMemoryBroker(users=make_users())
    alice = broker.client(user="alice", password="s3cret")
    received: list[Message] = []
    refused = alice.subscribe(["orders.eu", "orders.secret"], received.append)
    broker.flush()
    assert "permission denied: subscribe to 'orders.secret'" in str(failure_of(broker, refused))
    two = alice.subscribe(["billing", "orders.eu.x", "audit"], received.append)
    broker.flush()
    assert "subscribe to 'billing' (and 1 more)" in str(failure_of(broker, two))
    alice.publish("orders.eu", b"not for the refused subscription")
    broker.flush()
    assert received == []
    allowed = alice.subscribe(["orders.eu", "audit"], received.append, start=StartAt.BEGINNING)
    broker.flush()
    broker.result(allowed)
    assert [m.payload for m in received] == [b"not for the refused subscription"]


def test_anonymous_go_style_clients_get_what_the_file_grants_and_nothing_by_default():
    closed = InMemoryBroker(users=make_users())
    client = closed.client(extensions=False)  # no Hello, as the Go clients
    refused = client.subscribe(["orders.eu"], lambda m: None)
    publisher_connected = client.publisher_connected()
    closed.flush()
    sent = closed.result(publisher_connected)
    errors: list[str] = []
    sent.on_error = errors.append
    sent.publish("orders.eu", b"x")
    closed.flush()
    assert "permission denied: subscribe to 'orders.eu'" in str(failure_of(closed, refused))
    assert errors == ["permission denied: publish to 'orders.eu'"]

    anonymous = User("anonymous", subscribe=Rules.of(["public.>"]))
    open_to_read = InMemoryBroker(users=make_users(anonymous=anonymous))
    refusals: list[str] = []
    reader = open_to_read.client(extensions=False, on_publish_error=refusals.append)
    inbox: list[Message] = []
    reading = reader.subscribe(["public.news"], inbox.append, start=StartAt.BEGINNING)
    reader.publish("public.news", b"no")
    open_to_read.flush()
    open_to_read.result(reading)
    assert refusals == ["permission denied: publish to 'public.news'"]
    assert inbox == []


def test_a_user_connection_limit_refuses_one_more():
    limited = User("bob", password_hash=hash_secret("pw", **FAST), max_connections=2)
    broker = InMemoryBroker(users=make_users(bob=limited))
    first, second = (broker.client(user="bob", password="pw") for _ in range(2))
    for client in (first, second):
        ready = client.connected(timeout=1)
        broker.flush()
        broker.result(ready)
    third = broker.client(user="bob", password="pw")
    waiting = third.connected(timeout=1)
    broker.advance(1)
    assert "too many connections for this user" in str(failure_of(broker, waiting))
    closed(broker, first)
    broker.advance(1)  # the third's retries now find room
    assert broker.core.user_connections["bob"] == 2


def test_a_reload_takes_away_what_a_connected_user_may_no_longer_do(log_lines):
    broker = InMemoryBroker(users=make_users())
    alice = broker.client(user="alice", password="s3cret")
    inbox: list[Message] = []
    subscribed = alice.subscribe(["orders.eu", "orders.us"], inbox.append)
    broker.flush()
    broker.result(subscribed)
    narrower = make_users()
    narrower.by_name["alice"] = User(
        "alice",
        password_hash=broker.core.authenticator.users.by_name["alice"].password_hash,
        publish=Rules.of(["orders.eu"]),
        subscribe=Rules.of(["orders.eu"]),
    )
    broker.factory.reload_users(narrower)
    broker.flush()
    sent = [alice.publish("orders.eu", b"kept"), alice.publish("orders.us", b"refused")]
    broker.flush()
    assert broker.result(sent[0]) == 0
    assert "permission denied" in str(failure_of(broker, sent[1]))
    assert [m.payload for m in inbox] == [b"kept"]
    assert log_lines.matching("no longer subscribed to 'orders.us'")
    broker.drop_connections()
    broker.advance(1)  # reconnected: only what is still allowed is asked for again
    again = alice.publish("orders.eu", b"after")
    broker.advance(1)
    assert broker.result(again) == 1
    assert [m.payload for m in inbox] == [b"kept", b"after"]


def test_a_removed_user_is_disconnected():
    broker = InMemoryBroker(users=make_users())
    alice = broker.client(user="alice", password="s3cret")
    ready = alice.connected(timeout=1)
    broker.flush()
    broker.result(ready)
    assert broker.connections == 1
    without = make_users()
    del without.by_name["alice"]
    broker.factory.reload_users(without)
    broker.flush()
    assert broker.connections == 0
    broker.advance(1)  # its reconnection is refused, and the application told
    assert ERR_AUTH_FAILED in (alice.last_problem or "")
    assert isinstance(alice.refused, AuthenticationFailed)
    assert isinstance(failure_of(broker, alice.connected()), AuthenticationFailed)
    broker.advance(30)
    assert broker.connections == 0


def test_frames_after_hello_wait_for_the_password_check():
    checks: list[tuple[Deferred, object]] = []

    def later(function, *args):
        answer: Deferred = Deferred()
        checks.append((answer, lambda: function(*args)))
        return answer

    broker = InMemoryBroker(users=make_users())
    broker.core.authenticator.run_blocking = later

    class Eager(Protocol):
        def connectionMade(self):
            # Hello, the publish action and a publish in one write, before any answer.
            hello = {"version": 1, "confirms": True, "user": "alice", "password": "s3cret"}
            self.transport.write(
                encode_hello(hello)
                + encode_u16(ACTION_PUBLISH)
                + encode_publish("orders.eu", b"early")
            )

    publisher = Eager()
    broker.connect(_factory_of(publisher))
    broker.flush()
    assert len(checks) == 1 and "orders.eu" not in [t.name for t in broker.core.registry]
    answer, run = checks[0]
    answer.callback(run())
    broker.flush()
    assert broker.core.registry.get("orders.eu").log.next_offset == 1


def test_repeated_failures_from_one_address_are_answered_ever_later():
    clock = Clock()
    throttle = FailureThrottle(clock, free=3, first_delay=0.5, longest=4, forget_after=60)
    delays = []
    for _ in range(8):
        delays.append(throttle.delay("10.0.0.1"))
        throttle.failed("10.0.0.1")
    assert delays == [0, 0, 0, 0.5, 1, 2, 4, 4]
    assert throttle.delay("10.0.0.2") == 0  # per address
    clock.advance(61)
    assert throttle.delay("10.0.0.1") == 0  # forgotten when quiet
    small = FailureThrottle(clock, max_addresses=100)
    for n in range(1000):
        small.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(small) == 100  # memory stays bounded


def test_the_broker_waits_before_checking_a_guessers_next_attempt():
    # Five failures: the next attempt waits 2 s, longer than the handshake timeout.
    broker = InMemoryBroker(BrokerSettings(handshake_timeout=1.0), users=make_users())
    for _ in range(5):
        guesser = broker.client(user="alice", password="guess", retry_policy=lambda a: 100)
        guesser.connected().addErrback(lambda failure: None)
        broker.advance(1.0)  # the fourth and fifth wait 0.5 s and 1 s
        assert ERR_AUTH_FAILED in (guesser.last_problem or "")
        closed(broker, guesser)

    class HelloOnly(Protocol):
        received = b""

        def connectionMade(self):
            hello = {"version": 1, "user": "alice", "password": "s3cret"}
            self.transport.write(encode_hello(hello))

        def dataReceived(self, data):
            self.received += data

    raw = HelloOnly()
    broker.connect(_factory_of(raw))
    broker.advance(1.5)
    assert raw.received == b""  # even the right password waits its turn...
    assert broker.connections == 1  # ...and is not cut off by the handshake timeout
    broker.advance(0.5)
    assert b'"user":"alice"' in raw.received
    broker.advance(1.0)  # its role is still to come: the handshake clock runs again
    assert raw.received.endswith(b"handshake timed out") and broker.connections == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.dictionaries(
        st.sampled_from(["user", "password", "token", "prefetch"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=50)
        | st.text(min_size=4000, max_size=5000)
        | st.lists(st.text(max_size=3), max_size=3)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
def test_odd_credentials_in_hello_never_break_the_broker(fields):
    broker = InMemoryBroker(users=make_users())
    odd = PublisherProtocol(credentials=fields)  # type: ignore[arg-type]
    broker.connect(_factory_of(odd))
    broker.advance(1)
    answered = odd.negotiated
    results: list = []
    answered.addBoth(results.append)
    assert results, "the broker answered"
    if isinstance(results[0], Failure):
        assert ERR_INVALID_HELLO in str(results[0].value) or ERR_AUTH_FAILED in str(
            results[0].value
        )
    alice = broker.client(user="alice", password="s3cret")
    sent = alice.publish("orders.eu", b"still fine")
    broker.flush()
    assert broker.result(sent) == 0


def _factory_of(protocol):
    from twisted.internet.protocol import Factory

    factory = Factory()
    factory.buildProtocol = lambda address: protocol  # type: ignore[method-assign]
    return factory


def test_a_refused_client_backs_off_further_with_each_refusal():
    broker = InMemoryBroker(users=make_users())
    asked: list[int] = []

    def policy(attempt: int) -> float:
        asked.append(attempt)
        return 1.0

    wrong = broker.client(
        user="alice", password="guess", retry_policy=policy, retry_on_auth_failure=True
    )
    wrong.connected().addErrback(lambda failure: None)
    for _ in range(4):
        broker.advance(1.0)
    # Each attempt connects by TCP before it is refused; the steps still grow.
    assert len(asked) >= 4 and asked == sorted(asked) and asked[-1] > asked[0]
    closed(broker, wrong)


def _signing_in(authenticator, answers: list, at: dict, clock: Clock, user: str, password: str):
    from broker.wire.hello import HelloRequest

    index = len(answers)
    answer = authenticator.authenticate("10.0.0.9", HelloRequest(user=user, password=password))

    def done(result):
        at[index] = clock.seconds()
        return result

    answers.append(answer.addBoth(done))


def test_guesses_sent_at_once_wait_their_turns_one_after_another():
    """After five failures, guesses sent together are checked one at a time,
    each after the wait the failures before it have earned (they were all
    answered after the same 2 s, each wait computed when it arrived)."""
    from broker.security.auth import AuthenticationFailed, Authenticator

    clock = Clock()
    authenticator = Authenticator(make_users(), clock)
    answers: list[Deferred] = []
    at: dict[int, float] = {}
    for _ in range(5):
        _signing_in(authenticator, answers, at, clock, "alice", "guess")
        clock.advance(2)
    clock.advance(10)
    base = clock.seconds()
    for _ in range(5):
        _signing_in(authenticator, answers, at, clock, "alice", "guess")
    clock.pump([0.25] * 400)
    waited = [round(at[i] - base, 2) for i in range(5, 10)]
    assert waited == [2, 2 + 4, 2 + 4 + 8, 2 + 4 + 8 + 16, 2 + 4 + 8 + 16 + 30]
    for answer in answers:
        answer.addErrback(lambda failure: failure.trap(AuthenticationFailed))
    # Past a bound, an address's attempts are refused at once: memory stays bounded.
    for _ in range(authenticator.max_waiting + 2):  # one checked, the rest waiting
        _signing_in(authenticator, answers, at, clock, "alice", "guess")
    assert len(at) == 11 and at[len(answers) - 1] == clock.seconds()
    clock.pump([1] * 600)
    for answer in answers:
        answer.addErrback(lambda failure: failure.trap(AuthenticationFailed))


def test_a_success_forgives_only_the_failures_of_the_user_who_succeeded():
    from broker.security.auth import AuthenticationFailed, Authenticator

    clock = Clock()
    authenticator = Authenticator(make_users(), clock)
    answers: list[Deferred] = []
    at: dict[int, float] = {}
    for _ in range(3):  # two guesses at alice's password, then ingest signs in
        _signing_in(authenticator, answers, at, clock, "alice", "guess")
        _signing_in(authenticator, answers, at, clock, "alice", "guess")
        answers.append(authenticator.authenticate("10.0.0.9", _token_request()))
        clock.pump([0.5] * 20)
    assert authenticator.throttle.delay("10.0.0.9") == 4  # six failures count
    authenticator.throttle.succeeded("10.0.0.9", "alice")
    assert authenticator.throttle.delay("10.0.0.9") == 0
    for answer in answers:
        answer.addErrback(lambda failure: failure.trap(AuthenticationFailed))


def _token_request():
    from broker.wire.hello import HelloRequest

    return HelloRequest(token=TOKEN)


def test_a_sign_in_is_decided_against_the_users_file_in_force_when_it_completes():
    """A reload while a password is being checked: a user removed meanwhile
    is refused, one whose rights narrowed gets the narrower rights."""
    from broker.security.auth import AuthenticationFailed, Authenticator
    from broker.wire.hello import HelloRequest

    checks: list[tuple[Deferred, object]] = []

    def later(function, *args):
        answer: Deferred = Deferred()
        checks.append((answer, lambda: function(*args)))
        return answer

    clock = Clock()
    users = make_users()
    authenticator = Authenticator(users, clock, run_blocking=later)
    removed = authenticator.authenticate("10.0.0.1", HelloRequest(user="alice", password="s3cret"))
    narrowed = authenticator.authenticate("10.0.0.2", HelloRequest(user="alice", password="s3cret"))
    without_alice = Users({"ingest": users.by_name["ingest"]})
    authenticator.users = without_alice
    answer, run = checks.pop(0)
    answer.callback(run())
    failures: list[Failure] = []
    removed.addErrback(failures.append)
    assert failures and failures[0].check(AuthenticationFailed)
    assert "removed" in failures[0].getErrorMessage()

    alice = users.by_name["alice"]
    smaller = User(
        "alice",
        password_hash=alice.password_hash,
        publish=Rules.of(["orders.eu"]),
        subscribe=alice.subscribe,
    )
    authenticator.users = Users({"alice": smaller})
    answer, run = checks.pop(0)
    answer.callback(run())
    signed_in: list[User] = []
    narrowed.addCallback(signed_in.append)
    assert signed_in == [smaller]
    assert not signed_in[0].publish.permits("orders.us")
