"""Users over real sockets: a broker service in this process with TLS,
client certificates naming users, passwords checked in the reactor's thread
pool, the users file re-read on a real SIGHUP, and the warning an open
broker gives."""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from broker.app.service import BrokerService
from broker.client import AuthenticationFailed, BrokerError, connect
from broker.security.tls import ServerTLS, certificate_identity
from broker.security.users import hash_secret, user_entry
from broker.server import BrokerSettings
from broker.wire import StartAt, encode_subscribe
from tests.certs import Authority
from tests.conftest import Inbox
from tests.process import free_port
from tests.raw import connect_raw

FAST_HASH = {"n": 2**4, "r": 1, "p": 1}
QUICK = {"retry_policy": lambda attempt: 0.05}


ALICE_HASH = hash_secret("s3cret", **FAST_HASH)


def users_file(path, alice_publishes: list[str]) -> None:
    path.write_text(
        user_entry("alice", "password", ALICE_HASH, alice_publishes, ["orders.>"])
        + '\n[users.device-7]\npublish = ["telemetry.device-7"]\n'
    )


@pytest.fixture
def ca(tmp_path) -> Authority:
    return Authority(tmp_path / "pki")


def wait_for(log_lines, text: str) -> Deferred[None]:
    """Fires once a log line containing `text` has been seen."""
    seen: Deferred[None] = Deferred()

    def check() -> None:
        if log_lines.matching(text):
            seen.callback(None)
        else:
            reactor.callLater(0.01, check)

    check()
    return seen.addTimeout(5, reactor)


@pytest_twisted.ensureDeferred
async def test_certificates_and_passwords_name_users_and_sighup_narrows_them(
    tmp_path, ca, log_lines, logged_failures
):
    server = ca.issue("server", "localhost", server=True)
    users = tmp_path / "users.toml"
    users_file(users, ["orders.>"])
    tls_port, plain_port = free_port(), free_port()
    service = BrokerService(
        [f"tls:{tls_port}:interface=127.0.0.1", f"tcp:{plain_port}:interface=127.0.0.1"],
        BrokerSettings(),
        tls=ServerTLS(server.cert, server.key, ca=ca.pem),
        users_file=users,
    )
    service.privilegedStartService()
    service.startService()
    device = ca.issue("device", "device-7", server=False)
    stranger = ca.issue("stranger", "mallory", server=False)
    clients = [
        connect(
            reactor,
            f"tls:localhost:{tls_port}",
            extensions=True,
            ca=ca.pem,
            certificate=device.cert,
            private_key=device.key,
        ),
        connect(reactor, f"127.0.0.1:{plain_port}", user="alice", password="s3cret"),
        connect(
            reactor,
            f"tls:localhost:{tls_port}",
            extensions=True,
            ca=ca.pem,
            certificate=stranger.cert,
            private_key=stranger.key,
            **QUICK,
        ),
        connect(reactor, f"127.0.0.1:{plain_port}", user="alice", password="nope", **QUICK),
    ]
    by_certificate, by_password, unknown_certificate, wrong_password = clients
    try:
        assert await by_certificate.publish("telemetry.device-7", b"21.5") == 0
        with pytest.raises(BrokerError, match="permission denied"):
            await by_certificate.publish("orders.eu", b"not its topic")
        assert await by_password.publish("orders.eu", b"checked in a thread") == 0
        for refused in (unknown_certificate, wrong_password):
            with pytest.raises(AuthenticationFailed, match="authentication failed"):
                await refused.connected(timeout=1)
        assert log_lines.matching("its certificate names unknown user 'mallory'")
        assert log_lines.matching("wrong password for 'alice'")

        connection = await by_password.publisher_connected()
        users_file(users, ["orders.eu"])
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(log_lines, "users reloaded from")
        with pytest.raises(BrokerError, match="permission denied"):
            await by_password.publish("orders.us", b"no longer")
        assert await by_password.publish("orders.eu", b"still") == 1
        assert await by_password.publisher_connected() is connection  # never dropped
        users.write_text("[users.alice\n")  # broken: the old users stay
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(log_lines, "users not reloaded, the old ones stay")
        assert await by_password.publish("orders.eu", b"still fine") == 2
    finally:
        for client in clients:
            await client.close()
        await service.stopService()
    logged_failures.assert_none()


@pytest_twisted.ensureDeferred
async def test_an_open_broker_on_every_interface_says_so(log_lines):
    exposed = BrokerService([f"tcp:{free_port()}"], BrokerSettings())
    local = BrokerService([f"tcp:{free_port()}:interface=127.0.0.1"], BrokerSettings())
    for service in (exposed, local):
        service.privilegedStartService()
        service.startService()
        await service.stopService()
    warnings = log_lines.matching("may publish to and read every topic")
    assert len(warnings) == 1 and "--users" in warnings[0]


def test_a_certificate_names_its_user_by_the_configured_name(ca):
    pair = ca.issue(
        "both",
        "cn-name",
        server=False,
        alternative_names=[x509.DNSName("dns-name"), x509.RFC822Name("mail@example.org")],
    )
    certificate = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert certificate_identity(certificate, "cn") == "cn-name"
    assert certificate_identity(certificate, "dns") == "dns-name"
    assert certificate_identity(certificate, "email") == "mail@example.org"
    bare = x509.load_pem_x509_certificate(ca.issue("bare", "x", server=False).cert.read_bytes())
    assert certificate_identity(bare, "dns") is None


@pytest_twisted.ensureDeferred
async def test_a_sign_in_under_way_at_a_reload_is_decided_by_the_new_users_file(
    tmp_path, log_lines, logged_failures
):
    """A user removed from the file while its password is being checked does
    not get in (it did, with its old rights, 1.3 s after the reload)."""
    users = tmp_path / "users.toml"
    mallory = user_entry("mallory", "password", hash_secret("pw", **FAST_HASH), ["secret.>"], [])
    users.write_text(mallory)
    port = free_port()
    service = BrokerService([f"tcp:{port}:interface=127.0.0.1"], BrokerSettings(), users_file=users)
    service.privilegedStartService()
    service.startService()
    authenticator = service.factory.broker.authenticator
    run_in_thread = authenticator.run_blocking
    checking: Deferred[None] = Deferred()
    release: Deferred[None] = Deferred()

    def held_first(function, *args):
        """The first check starts once the test releases it: the sign-in is
        under way while the file changes."""
        authenticator.run_blocking = run_in_thread
        reactor.callLater(0, checking.callback, None)
        return release.addCallback(lambda _: run_in_thread(function, *args))

    authenticator.run_blocking = held_first
    client = connect(
        reactor, f"127.0.0.1:{port}", extensions=True, user="mallory", password="pw", **QUICK
    )
    stolen = client.publish("secret.x", b"stolen")  # opens its connection, signs in
    outcome: list[object] = []
    stolen.addBoth(outcome.append)
    try:
        await checking
        users_file(users, ["orders.>"])  # mallory is gone
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(log_lines, "users reloaded from")
        release.callback(None)
        await wait_for(log_lines, "user 'mallory' was removed while signing in")
        await wait_for(log_lines, "authentication failed")
        assert len(outcome) == 1 and isinstance(outcome[0], Failure)
        assert outcome[0].check(AuthenticationFailed)  # never stored
        assert "secret.x" not in [topic.name for topic in service.factory.broker.registry]
    finally:
        await client.close()
        await service.stopService()
    logged_failures.assert_none()


@pytest_twisted.ensureDeferred
async def test_durable_names_are_owned_and_unborn_topics_cost_nothing_over_tcp(tmp_path):
    """Issue 22, cases 4 and 5, over real sockets: alice's and bob's durable
    consumer `billing` are two consumers (bob takes none of alice's), and a
    subscribe-only user naming topics that do not exist leaves the budget of
    --max-topics to the publishers, while it still gets what comes later."""
    users = tmp_path / "users.toml"
    users.write_text(
        user_entry("alice", "password", ALICE_HASH, ["orders.>", "new.>"], ["orders.>"])
        + user_entry("bob", "password", ALICE_HASH, [], ["orders.>", "new.>"])
    )
    port = free_port()
    service = BrokerService(
        [f"tcp:{port}:interface=127.0.0.1"], BrokerSettings(max_topics=3), users_file=users
    )
    service.privilegedStartService()
    service.startService()
    address = f"127.0.0.1:{port}"
    alice = connect(reactor, address, user="alice", password="s3cret")
    alice_reader = connect(reactor, address, user="alice", password="s3cret")
    bob = connect(reactor, address, user="bob", password="s3cret")
    try:
        for n in range(5):
            assert await alice.publish("orders.eu", b"%d" % n) == n
        alices, bobs = Inbox(), Inbox()
        await alice_reader.subscribe(
            ["orders.eu"], alices, durable="billing", start=StartAt.BEGINNING
        )
        await alices.wait(5)
        await bob.subscribe(["orders.eu"], bobs, durable="billing", start=StartAt.BEGINNING)
        await bobs.wait(5)  # his own consumer, from the beginning: all five
        assert bobs.payloads == alices.payloads == [b"0", b"1", b"2", b"3", b"4"]

        waiting = Inbox()
        await bob.subscribe([f"new.{n}" for n in range(10)], waiting)  # 10 > max_topics
        assert await alice.publish("new.7", b"later") == 0  # a topic left to create
        await waiting.wait(1)
        assert [(m.topic, m.payload) for m in waiting.messages] == [("new.7", b"later")]
    finally:
        for client in (alice, alice_reader, bob):
            await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_no_rights_closes_and_a_real_sighup_keeps_a_groups_pattern(tmp_path, log_lines):
    """Issue 22, cases 6 and 7, over real sockets: with no [users.anonymous],
    Go-style connections (no Hello) that ask to subscribe are refused and
    closed at once, not held; and a real SIGHUP that leaves bob's rights as
    they were keeps his `$share/g2/orders.eu.*`."""
    users = tmp_path / "users.toml"
    text = user_entry("bob", "password", ALICE_HASH, [], ["orders.eu.*"]) + user_entry(
        "admin", "password", ALICE_HASH, [">"], [">"]
    )
    users.write_text(text)
    port = free_port()
    service = BrokerService([f"tcp:{port}:interface=127.0.0.1"], BrokerSettings(), users_file=users)
    service.privilegedStartService()
    service.startService()
    address = f"127.0.0.1:{port}"
    bob = connect(reactor, address, user="bob", password="s3cret", prefetch=16)
    admin = connect(reactor, address, user="admin", password="s3cret")
    try:
        go_clients = [await connect_raw(port) for _ in range(50)]
        for client in go_clients:
            client.send(encode_subscribe(["news"], StartAt.CURRENT))
        # Each is told why, then closed (within the reactor's turns, not a timeout).
        await gatherResults([client.closed for client in go_clients]).addTimeout(10, reactor)
        assert all(b"permission denied" in bytes(c.received) for c in go_clients)

        shared = Inbox()
        await bob.subscribe(["orders.eu.*"], shared, group="g2")
        users.write_text(text)  # the same rights
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(log_lines, "users reloaded from")
        assert await admin.publish("orders.eu.7", b"still bob's") == 0
        await shared.wait(1)
        assert shared.payloads == [b"still bob's"]
        assert not log_lines.matching("no longer subscribed")
    finally:
        for each in (bob, admin):
            await each.close()
        await service.stopService()
