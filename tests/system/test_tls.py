"""TLS over loopback with certificates made in the test: verified
connections, untrusted servers refused by the client, mutual TLS, plain-text
and silent peers on a TLS port, plain and TLS ports side by side, and the
cipher suites a real handshake is offered."""

from __future__ import annotations

import pytest
import pytest_twisted
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
)
from zope.interface import implementer

from broker.app.service import BrokerService
from broker.client import BrokerUnreachable, connect
from broker.security.tls import ServerTLS, TLSConfigError, server_options
from broker.server import BrokerSettings
from broker.wire import StartAt
from tests.certs import Authority, Pair, untrusted_server
from tests.conftest import Inbox
from tests.process import free_port, spawn_broker
from tests.raw import connect_raw

FAST = {"retry_policy": lambda attempt: 0.05}


@pytest.fixture
def ca(tmp_path) -> Authority:
    return Authority(tmp_path / "pki")


@pytest.fixture
def server_pair(ca) -> Pair:
    return ca.issue("server", "localhost", server=True)


async def running(tls: ServerTLS, *ports: str, **settings) -> BrokerService:
    service = BrokerService(list(ports), BrokerSettings(**settings), tls=tls)
    service.privilegedStartService()
    service.startService()
    return service


async def round_trip(client, topic: str) -> None:
    inbox = Inbox()
    await client.subscribe([topic], inbox, start=StartAt.BEGINNING)
    await client.publish(topic, b"secret")
    await inbox.wait(1)
    assert inbox.payloads == [b"secret"]


@pytest_twisted.ensureDeferred
async def test_a_verified_connection_beside_a_plain_port(ca, server_pair, logged_failures):
    tls_port, plain_port = free_port(), free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key),
        f"tls:{tls_port}:interface=127.0.0.1",
        f"tcp:{plain_port}:interface=127.0.0.1",
    )
    secure = connect(reactor, f"tls:localhost:{tls_port}", extensions=True, ca=ca.pem)
    plain = connect(reactor, f"127.0.0.1:{plain_port}")
    try:
        await round_trip(secure, "over-tls")
        await round_trip(plain, "over-tcp")
        logged_failures.assert_none()
    finally:
        await secure.close()
        await plain.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_client_refuses_a_server_it_cannot_verify(tmp_path, ca, logged_failures):
    impostor = untrusted_server(tmp_path)
    port = free_port()
    service = await running(
        ServerTLS(impostor.cert, impostor.key), f"tls:{port}:interface=127.0.0.1"
    )
    client = connect(reactor, f"tls:localhost:{port}", ca=ca.pem, **FAST)
    try:
        with pytest.raises(BrokerUnreachable, match="certificate error: certificate verify failed"):
            await client.connected(timeout=1)
        logged_failures.assert_none()
    finally:
        await client.close()
        await service.stopService()


def test_the_ssl_client_endpoint_is_refused():
    with pytest.raises(ValueError, match="use tls:HOST:PORT"):
        connect(reactor, "ssl:localhost:3001")


@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_a_client_without_a_certificate(ca, server_pair):
    port = free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key, ca=ca.pem), f"tls:{port}:interface=127.0.0.1"
    )
    alice = ca.issue("alice", "alice", server=False)
    # Under TLS 1.3 the client's handshake ends before the server checks its
    # certificate; with extensions, being ready means the broker answered.
    anonymous = connect(reactor, f"tls:localhost:{port}", extensions=True, ca=ca.pem, **FAST)
    known = connect(
        reactor,
        f"tls:localhost:{port}",
        extensions=True,
        ca=ca.pem,
        certificate=alice.cert,
        private_key=alice.key,
    )
    try:
        with pytest.raises(BrokerUnreachable):
            await anonymous.connected(timeout=1)
        await round_trip(known, "mutual")
    finally:
        await anonymous.close()
        await known.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_plain_text_and_silent_peers_on_a_tls_port_disturb_no_one(ca, server_pair):
    port = free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key),
        f"tls:{port}:interface=127.0.0.1",
        handshake_timeout=0.3,
        close_grace=0.3,
    )
    client = connect(reactor, f"tls:localhost:{port}", extensions=True, ca=ca.pem)
    try:
        talker = await connect_raw(port)
        talker.send(b'\x00\x01\x00\x00\x00\x05["a"]\x00\x01')  # a plain subscribe
        silent = await connect_raw(port)
        await round_trip(client, "undisturbed")
        gone: Deferred = talker.closed
        await gone  # the broker gave up on the plain-text talker...
        await silent.closed  # ...and cut off the silent one once its handshake timed out
        assert service.factory.connections and len(service.factory.connections) == 2
    finally:
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_twistd_serves_plain_and_tls_and_rereads_certificates_on_sighup(tmp_path, ca):
    first = ca.issue("first", "localhost", server=True)
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    tls_port, plain_port = free_port(), free_port()
    broker = spawn_broker(
        tmp_path,
        "--port",
        f"tcp:{plain_port}:interface=127.0.0.1",
        "--port",
        f"tls:{tls_port}:interface=127.0.0.1",
        "--tls-cert",
        str(live_cert),
        "--tls-key",
        str(live_key),
    )
    early = connect(reactor, f"tls:localhost:{tls_port}", extensions=True, ca=ca.pem)
    try:
        await broker.line(f"starting on {tls_port}")
        await round_trip(early, "before-reload")
        plain = connect(reactor, f"127.0.0.1:{plain_port}")
        await round_trip(plain, "plain")
        await plain.close()
        second = ca.issue("second", "localhost", server=True)
        live_cert.write_bytes(second.cert.read_bytes())
        live_key.write_bytes(second.key.read_bytes())
        broker.signal("HUP")
        await broker.line("certificates reloaded from")
        assert (await early.publisher_connected()).transport.connected  # not dropped
        later = connect(reactor, f"tls:localhost:{tls_port}", extensions=True, ca=ca.pem)
        await round_trip(later, "after-reload")
        peer = (await later.publisher_connected()).transport.getPeerCertificate()
        assert (
            peer.get_serial_number()
            == x509.load_pem_x509_certificate(second.cert.read_bytes()).serial_number
        )
        await later.close()
    finally:
        await early.close()
        broker.signal("TERM")
        await broker.ended


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_unusable_tls_and_users_options_in_one_line(tmp_path, server_pair):
    needs_cert = spawn_broker(tmp_path, "--port", "tls:3001")
    assert await needs_cert.ended == 1
    assert "--port tls:3001 needs --tls-cert" in needs_cert.output
    missing = spawn_broker(
        tmp_path, "--port", f"tls:{free_port()}", "--tls-cert", str(tmp_path / "nope.pem")
    )
    assert await missing.ended == 1
    assert "twistd broker: cannot read the certificate" in missing.output
    assert "Traceback" not in missing.output
    bad_users = tmp_path / "users.toml"
    bad_users.write_text('[users.alice]\npassword = "hunter2"\n')
    refused = spawn_broker(tmp_path, "--port", f"tcp:{free_port()}", "--users", str(bad_users))
    assert await refused.ended == 1
    assert "password must be a hash from 'broker users'" in refused.output
    assert "Traceback" not in refused.output


@pytest_twisted.ensureDeferred
async def test_closing_during_a_pending_handshake_is_clean(ca, logged_failures):
    dropped: Deferred[None] = Deferred()

    class Silent(Protocol):
        def connectionLost(self, reason=None):
            dropped.callback(None)

    silent = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    port = silent.getHost().port
    client = connect(reactor, f"tls:localhost:{port}", ca=ca.pem, **FAST)
    try:
        with pytest.raises(BrokerUnreachable):
            await client.connected(timeout=0.3)  # connected by TCP, the handshake pending
        await client.close()
        # The client gives up the half-made connection itself, not at exit.
        await dropped.addTimeout(5, reactor)
    finally:
        await client.close()
        await silent.stopListening()
    logged_failures.assert_none()


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Fires `done` with the suite a TLS handshake agreed on, or fails with
    why the connection was lost before it."""

    def __init__(self) -> None:
        self.done: Deferred[str] = Deferred()

    def handshakeCompleted(self) -> None:
        self.done.callback(self.transport.getHandle().get_cipher_name())
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.errback(reason)


async def agreed_suite(port: int, ca: Authority, tls12_ciphers: str | None) -> str:
    """The suite a client offering only `tls12_ciphers` under TLS 1.2 (None:
    OpenSSL's defaults, TLS 1.3 allowed) gets from the broker."""
    trust = Certificate.loadPEM(ca.pem.read_bytes())
    if tls12_ciphers is None:
        creator = optionsForClientTLS("localhost", trustRoot=trust)
    else:
        creator = CertificateOptions(
            trustRoot=trust,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(tls12_ciphers),
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
        )
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, creator)
    handshake = await endpoint.connect(Factory.forProtocol(_Handshake))
    return await handshake.done.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_tls12_offers_only_mozillas_intermediate_suites(ca, server_pair):
    port = free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key), f"tls:{port}:interface=127.0.0.1"
    )
    try:
        # CBC with a SHA-1 MAC, which OpenSSL's default list still offers.
        with pytest.raises(SSL.Error):
            await agreed_suite(port, ca, "ECDHE-ECDSA-AES128-SHA")
        for suite in (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ):
            assert await agreed_suite(port, ca, suite) == suite
        assert (await agreed_suite(port, ca, None)).startswith("TLS_")  # TLS 1.3
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_an_open_warning_names_no_port_that_verifies_client_certificates(
    ca, server_pair, log_lines
):
    # Every interface, so that the ports count as reachable from elsewhere.
    mutual, plain = free_port(), free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key, ca=ca.pem), f"tls:{mutual}"
    )
    await service.stopService()
    assert not log_lines.matching("may publish to and read every topic")
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key, ca=ca.pem), f"tls:{mutual}", str(plain)
    )
    await service.stopService()
    (warning,) = log_lines.matching("may publish to and read every topic")
    assert f"--port {plain} " in warning
    service = await running(ServerTLS(server_pair.cert, server_pair.key), f"tls:{mutual}")
    await service.stopService()
    assert log_lines.matching(f"anyone who can reach --port tls:{mutual} may publish")


def test_a_key_that_does_not_fit_the_certificate_is_named(ca, server_pair, tmp_path):
    other = ca.issue("other", "localhost", server=True)
    with pytest.raises(TLSConfigError, match=f"the private key {other.key} does not fit"):
        server_options(ServerTLS(server_pair.cert, other.key))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(TLSConfigError, match=f"cannot read the private key {garbage}"):
        server_options(ServerTLS(server_pair.cert, garbage))


@pytest_twisted.ensureDeferred
async def test_a_client_speaking_plain_text_to_a_tls_port_is_told_so(ca, server_pair):
    """It used to report connected and a publish fired None, the message
    gone and nothing said; now nothing is confirmed and the reason names TLS."""
    port = free_port()
    service = await running(
        ServerTLS(server_pair.cert, server_pair.key), f"tls:{port}:interface=127.0.0.1"
    )
    client = connect(reactor, f"127.0.0.1:{port}", **FAST)
    outcome: list[object] = []
    client.publish("lost", b"never sent in clear").addBoth(outcome.append)
    try:
        with pytest.raises(
            BrokerUnreachable, match=r"is it a TLS port\? then connect to tls:HOST:PORT"
        ):
            await client.connected(timeout=2)
        assert outcome == []  # still waiting for a broker, never reported sent
    finally:
        await client.close()
        await service.stopService()
