"""TLS for the broker and its client: certificates from PEM files, mutual
TLS, and certificates re-read without dropping connections.

The server's context is asked for anew by each connection, so replacing it
(on SIGHUP) changes what new connections get and leaves open ones alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLContextFactory,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()


# Which name of a client certificate is its user (--tls-identity).
IDENTITY_KINDS = ("cn", "dns", "email", "none")

# Mozilla's "intermediate" TLS 1.2 suites (ssl-config.mozilla.org, guidelines
# 5.7): forward secret AEAD only, no CBC, no SHA-1 MACs. The DHE suites of that
# list are left out as the broker loads no DH parameters. TLS 1.3 suites, all
# AEAD, are OpenSSL's own and not limited by this string.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class TLSConfigError(ValueError):
    """Certificates or keys that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ServerTLS:
    """The broker's certificate (a chain allowed), its key, and the CA that
    client certificates must be signed by (None: no client certificate asked)."""

    cert: Path
    key: Path | None = None
    """The private key; None: it is in the certificate's file."""
    ca: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"cannot read the {what} {path}: {error.strerror}") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSConfigError(f"the {what} {path} holds no PEM certificate: {error}") from None
    return found


def _with_key(chain: list[x509.Certificate], cert: Path, key: Path) -> dict[str, Any]:
    """CertificateOptions' arguments for the first certificate of `chain`
    with the private key in `key`, as `cryptography` objects (pyOpenSSL's
    own X509 and PKey are deprecated)."""
    key_pem = _read(key, "private key")
    try:
        private_key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TLSConfigError(f"cannot read the private key {key}: {error}") from None
    if private_key.public_key() != chain[0].public_key():
        raise TLSConfigError(f"the private key {key} does not fit {cert}")
    return {"privateKey": private_key, "certificate": chain[0]}


def _trust_root(path: Path) -> Any:
    """The CAs of a PEM bundle, as a trust root."""
    authorities = [
        ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM))
        for c in _certificates(path, "CA bundle")
    ]
    return ssl.trustRootFromCertificates(authorities)


def server_options(config: ServerTLS) -> ssl.CertificateOptions:
    """CertificateOptions for the broker, or TLSConfigError."""
    chain = _certificates(config.cert, "certificate")
    options = _with_key(chain, config.cert, config.key or config.cert)
    options["extraCertChain"] = chain[1:]
    options["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(
        INTERMEDIATE_CIPHERS
    )
    if config.ca is not None:
        # A trust root makes a certificate required (and checked against it).
        options["trustRoot"] = _trust_root(config.ca)
    try:
        return ssl.CertificateOptions(**options)
    except SSL.Error as error:
        raise TLSConfigError(f"{config.cert}: {error}") from None


@implementer(IOpenSSLContextFactory)
class ReloadableServerContext:
    """The broker's TLS context; `reload()` re-reads the files for the
    connections that come next, keeping the old ones if the new are bad."""

    def __init__(self, config: ServerTLS) -> None:
        self.config = config
        self._options = server_options(config)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def reload(self) -> bool:
        try:
            self._options = server_options(self.config)
        except TLSConfigError as error:
            log.error("certificates not reloaded, the old ones stay: {error}", error=error)
            return False
        log.info("certificates reloaded from {cert}", cert=str(self.config.cert))
        return True


def client_options(
    hostname: str,
    ca: str | Path | None = None,
    certificate: str | Path | None = None,
    private_key: str | Path | None = None,
) -> Any:
    """What a client checks the broker against (the system's trust roots, or
    `ca`), and the certificate it presents, if any."""
    trust = _trust_root(Path(ca)) if ca is not None else None
    presented: dict[str, Any] = {}
    if certificate is not None:
        chain = _certificates(Path(certificate), "certificate")
        presented = _with_key(chain, Path(certificate), Path(private_key or certificate))
        presented["extraCertChain"] = chain[1:]
    return ssl.optionsForClientTLS(hostname, trustRoot=trust, extraCertificateOptions=presented)


@implementer(IHandshakeListener)
class _AfterHandshake(ProtocolWrapper):
    """Starts the protocol it wraps only once the TLS handshake is done (the
    broker verified), so nothing is sent to, or trusted from, a peer that
    has not proved who it is. `ready` fires then, or fails with the reason
    the connection was lost before; a protocol never started is never told
    of a loss."""

    def makeConnection(self, transport: Any) -> None:
        self.ready: Deferred[IProtocol] = Deferred(self._given_up)
        self._started = False
        self.transport = transport
        self.connected = True
        self.factory.registerProtocol(self)

    def _given_up(self, ready: Deferred[IProtocol]) -> None:
        # The caller stopped waiting (a client closed mid-handshake): drop it.
        cast(ITCPTransport, self.transport).abortConnection()

    def handshakeCompleted(self) -> None:
        if self.ready.called:
            return  # given up on
        self._started = True
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        self.ready.callback(self.wrappedProtocol)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._started:
            super().connectionLost(reason)
            return
        self.connected = False
        self.factory.unregisterProtocol(self)
        if not self.ready.called:
            self.ready.errback(reason)


class _AfterHandshakeFactory(WrappingFactory):
    protocol = _AfterHandshake


@implementer(IStreamClientEndpoint)
class HandshakeFirstEndpoint:
    """A TLS client endpoint whose protocols start after the handshake; the
    Deferred fires with the protocol built by the caller's factory."""

    def __init__(self, tls_endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = tls_endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def handshake_done(wrapper: IProtocol) -> Deferred[IProtocol]:
            return cast(_AfterHandshake, wrapper).ready

        connecting = self._endpoint.connect(_AfterHandshakeFactory(factory))
        return connecting.addCallback(handshake_done)


def describe_tls_failure(failure_value: BaseException | None) -> str | None:
    """A readable certificate error, if `failure_value` is one."""
    if not isinstance(failure_value, SSL.Error):
        return None
    reasons = []
    for item in failure_value.args[0] if failure_value.args else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return "certificate error: " + ("; ".join(reasons) or str(failure_value))


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The certificate the peer of a TLS connection presented (verified
    against --tls-ca before any byte of it is read), or None."""
    get = getattr(transport, "getPeerCertificate", None)
    certificate = get() if get is not None else None
    return certificate.to_cryptography() if certificate is not None else None


def certificate_identity(certificate: x509.Certificate, kind: str) -> str | None:
    """The user a client certificate names: its subject's common name
    ("cn"), or its first DNS ("dns") or email ("email") subject alternative
    name; None if it has no such name."""
    if kind == "cn":
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    alternative_names = alternatives.value
    found = (
        alternative_names.get_values_for_type(x509.DNSName)
        if kind == "dns"
        else alternative_names.get_values_for_type(x509.RFC822Name)
    )
    return found[0] if found else None
