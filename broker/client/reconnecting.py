"""`BrokerClient`: publishes and subscribes through one broker, reconnecting
with backoff, and `connect()`, which makes one from an endpoint string.

Each role has its own connection (a connection's role is fixed), kept up by
a `ClientService`. The service only keeps a TCP connection up; what the
client waits for is its own: a connection is *ready* once it has negotiated
(and, for the subscriber, resubscribed). Twisted's ClientService cannot take
a connection lost while its `prepareConnection` is pending, which an early
close by the server (a TLS port spoken to in plain text, the seed's broker
refusing Hello) would do on every attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from broker.client.kv import KeyValue
from broker.client.protocols import (
    BatchHandler,
    Handler,
    PublisherProtocol,
    SubscriberProtocol,
)
from broker.client.requesting import DEFAULT_RESPONDERS, Requester, responder
from broker.sansio.messages import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ExtensionsRefused,
    Message,
    Publish,
    QueueFull,
    check_topics,
    credentials_of,
    prepared,
    prepared_one,
)
from broker.sansio.publishing import Outbox, Pending
from broker.sansio.requests import Reply
from broker.sansio.subscriptions import Subscriptions
from broker.security.tls import HandshakeFirstEndpoint, client_options, describe_tls_failure
from broker.wire import ERR_TOO_MANY_CONNECTIONS, StartAt
from broker.wire.headers import HeaderPairs

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "BrokerClient",
    "BrokerUnreachable",
    "QueueFull",
    "connect",
    "credentials_of",
]

log = Logger()
T = TypeVar("T")
P = TypeVar("P", PublisherProtocol, SubscriberProtocol)

# Publishes a client holds for a connection, by default, before publish() fails.
DEFAULT_MAX_QUEUED = 10_000


class _Role(Generic[P]):
    """One role's connection: the service that keeps it up, and the protocol
    that is ready on it (negotiated, and whatever `prepare` adds)."""

    def __init__(
        self,
        client: BrokerClient,
        name: str,
        build: Callable[[], P],
        prepare: Callable[[P], Deferred[None] | None],
    ) -> None:
        self._client = client
        self.name = name
        self._build: Callable[[], P] = build
        self._prepare: Callable[[P], Deferred[None] | None] = prepare
        self.service: ClientService | None = None
        self.current: P | None = None
        self._waiters: list[Deferred[P]] = []

    @property
    def started(self) -> bool:
        return self.service is not None

    def start(self) -> None:
        if self.service is None and self._client.refused is None:
            # Set before it starts: a connection may be ready at once.
            self.service = self._client._service(_Factory(self._make))
            self.service.startService()

    def when_ready(self) -> Deferred[P]:
        """The ready protocol, now or once the next one is."""
        if self._client.refused is not None:
            return fail(self._client.refused)
        self.start()
        if self.current is not None and not self.current.lost.called:  # ready at once
            return succeed(self.current)
        waiter: Deferred[P] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def stop(self, reason: Exception | None = None) -> Deferred[None] | None:
        service, self.service = self.service, None
        self.current = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(reason or ConnectionDone("the client was closed"))
        return service.stopService() if service is not None else None

    def _make(self) -> P:
        protocol = self._build()
        protocol.negotiated.addCallbacks(
            lambda _: self._negotiated(protocol), lambda f: self._client._negotiation_failed(f)
        )
        protocol.lost.addCallback(lambda _: self._lost(protocol))
        return protocol

    def _negotiated(self, protocol: P) -> None:
        # Without Hello a connection negotiates inside connectionMade, before
        # the endpoint (and so ClientService) knows it is up; a close() from a
        # caller woken then would cancel a connector no longer connecting
        # (NotConnectingError, then AlreadyCalledError). Go on a tick later.
        self._client._reactor.callLater(0, self._take, protocol)

    def _take(self, protocol: P) -> Deferred[None] | None:
        if protocol.lost.called or self.service is None:
            return None
        prepared = self._prepare(protocol)
        if prepared is None:
            self._ready(protocol)
            return None
        return prepared.addCallbacks(lambda _: self._ready(protocol), lambda _: None)

    def _ready(self, protocol: P) -> None:
        if protocol.lost.called or self.service is None:
            return
        self.current = protocol
        self._client._now_connected()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(protocol)

    def _lost(self, protocol: P) -> None:
        if self.current is protocol:
            self.current = None


class _Factory(Factory):
    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> Protocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Wraps the broker's endpoint to report each failed attempt once."""

    def __init__(self, endpoint: IStreamClientEndpoint, report: Callable[[str], None]) -> None:
        self._endpoint = endpoint
        self._report = report

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                problem = describe_tls_failure(failure.value)
                self._report(problem or f"cannot connect: {failure.getErrorMessage()}")
            return failure

        return attempt.addErrback(failed)


class BrokerClient:
    """Publishes and subscribes through one broker, reconnecting with backoff.

    After a reconnection the subscriber resubscribes to all its topics: with
    extensions from where it left off; without them at Current, since the
    seed's deliveries carry no offsets and what was published meanwhile cannot
    be found again. A broker that refuses the extensions (the Go broker) is
    remembered: the client reconnects and speaks the plain protocol to it.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        reactor: Any = None,
        *,
        retry_policy: Callable[[int], float] | None = None,
        on_publish_error: Callable[[str], None] | None = None,
        extensions: bool = True,
        prefetch: int = 256,
        max_queued: int = DEFAULT_MAX_QUEUED,
        where: str = "the broker",
        credentials: dict[str, str] | None = None,
        retry_on_auth_failure: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._endpoint = _ReportingEndpoint(endpoint, self._attempt_failed)
        self._reactor = reactor
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        self._on_publish_error = on_publish_error
        self._credentials = credentials
        # Credentials travel in Hello, so they need the extensions.
        self.extensions = extensions or bool(credentials)
        """True if the client asks for the extensions (until a broker refuses them)."""
        self.prefetch = prefetch
        self.where = where
        self.last_problem: str | None = None
        """Why the last attempt to connect failed, if it did."""
        # Credentials refused in a row: each connected by TCP, so the
        # service's own count starts over; this keeps the backoff growing.
        self._refusals = 0
        self._connected_waiters: list[Deferred[None]] = []
        self._subscriptions: Subscriptions[Handler | BatchHandler] = Subscriptions()
        self._publisher: _Role[PublisherProtocol] = _Role(
            self, "publisher", self._build_publisher, self._adopt
        )
        self._subscriber: _Role[SubscriberProtocol] = _Role(
            self, "subscriber", self._build_subscriber, self._resubscribe
        )
        self._outbox: Outbox[Deferred[int | None] | _Slot] = Outbox(
            _settle, _fail, max_queued, on_error=self._publish_error
        )
        self._closed = False
        self._requester: Requester | None = None
        self.retry_on_auth_failure = retry_on_auth_failure
        """Whether refused credentials are tried again, with backoff."""
        self.refused: AuthenticationFailed | None = None
        """Why the broker refused the credentials, once it has (and the
        client stopped): every call fails with it from then on."""

    # Connecting.

    def connected(self, timeout: float | None = None) -> Deferred[None]:
        """Fires once a connection to the broker is ready (opening the
        publisher's if none is open yet); with a timeout, fails with
        BrokerUnreachable saying why if none is ready by then. The client
        keeps trying either way."""
        if self._publisher.current is not None or self._subscriber.current is not None:
            return succeed(None)
        if self.refused is not None:
            return fail(self.refused)
        if self._closed:
            return fail(ConnectionDone("the client is closed"))
        if not (self._publisher.started or self._subscriber.started):
            self._publisher.start()
        waiter: Deferred[None] = Deferred(self._connected_waiters.remove)
        self._connected_waiters.append(waiter)
        if timeout is not None:

            def timed_out(result: object, seconds: float) -> Failure:
                reason = self.last_problem or "no answer"
                return Failure(
                    BrokerUnreachable(f"cannot reach {self.where} within {seconds} s: {reason}")
                )

            waiter.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)
        return waiter

    def _now_connected(self) -> None:
        self._refusals = 0
        if self.last_problem is not None:
            log.info("connected to {where}", where=self.where)
            self.last_problem = None
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _give_up(self, reason: AuthenticationFailed) -> None:
        """The broker refused the credentials: trying again would be refused
        too (and count as guessing), so stop, and fail every waiting call."""
        self.refused = reason
        self.last_problem = str(reason)
        log.error("{reason}; not retrying", reason=reason)
        for role in (self._publisher, self._subscriber):
            role.stop(reason)
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.errback(reason)
        self._outbox.fail_all(reason)

    def _attempt_failed(self, problem: str) -> None:
        """Once per attempt (so once per backoff step), with the reason."""
        self.last_problem = problem
        log.warn("{where}: {problem}; retrying", where=self.where, problem=problem)

    def _negotiation_failed(self, failure: Failure) -> None:
        if failure.check(AuthenticationFailed):
            self._refusals += 1
            text = failure.getErrorMessage()
            if self.retry_on_auth_failure or text == ERR_TOO_MANY_CONNECTIONS or self._closed:
                self._attempt_failed(f"the broker refused the credentials: {text}")
            else:
                self._give_up(AuthenticationFailed(f"{self.where} refused the credentials: {text}"))
            return
        if failure.check(ExtensionsRefused):
            if self.extensions:
                log.info(
                    "{where} refused the extensions ({text}); reconnecting with the plain protocol",
                    where=self.where,
                    text=failure.getErrorMessage(),
                )
            self.extensions = False
            return
        if self._closed:
            return
        certificate_error = describe_tls_failure(failure.value)
        if certificate_error is not None:
            self._attempt_failed(certificate_error)
            return
        hint = (
            ""
            if self.where.startswith(("tls:", "unix:")) or not self.extensions
            else "; is it a TLS port? then connect to tls:HOST:PORT"
        )
        self._attempt_failed(
            f"the connection closed before the broker answered ({failure.getErrorMessage()}){hint}"
        )

    def _service(self, factory: Factory) -> ClientService:
        return ClientService(
            self._endpoint,
            factory,
            retryPolicy=lambda attempt: self._retry_policy(attempt + self._refusals),
            clock=self._reactor,
        )

    # Publishing.

    def publish(
        self,
        topic: str,
        payload: bytes,
        headers: HeaderPairs | None = None,
        *,
        delay: float | None = None,
        ttl: float | None = None,
    ) -> Deferred[int | None]:
        """Send one message.

        With confirms, fires with the offset it was stored at once the broker
        confirms it (resent after a reconnect until then), or fails with
        BrokerError. Without, fires with None once it is handed to a live
        connection. Messages published before a connection is up wait for it,
        in order, up to `max_queued` of them; past that publish() fails at
        once with QueueFull. Cancelling the Deferred of a message not yet
        written withdraws it; one already written is stored all the same.
        With `delay`, subscribers get it that many seconds from now, not
        before; with `ttl`, not once that many seconds have passed.
        """
        payload = prepared_one(topic, payload, headers, delay, ttl)
        if self.refused is not None:
            return fail(self.refused)
        if self._closed:
            return fail(ConnectionDone("the client is closed"))
        outbox = self._outbox
        # The canceller is told of the Deferred and finds its publish: a
        # closure over the publish would make a reference cycle of each,
        # and the cyclic collector would spend a quarter of the time.
        done: Deferred[int | None] = Deferred(outbox.withdraw_handle)
        pending: Pending[Deferred[int | None] | _Slot] = Pending(topic, payload, done)
        try:
            outbox.add(pending)
        except QueueFull as full:
            return fail(full)
        if outbox.connection is None:
            self._publisher.start()
        return done

    def publish_many(self, messages: Iterable[Publish]) -> Deferred[list[int | None]]:
        """Send many (topic, payload) messages at once: fires with their
        offsets, in order, once all are confirmed, or fails with the first
        refusal (the others are stored all the same). One Deferred for all:
        cheaper than a publish() each. Cancelling it withdraws those not
        yet written."""
        batch = prepared(messages)
        if self.refused is not None:
            return fail(self.refused)
        if self._closed:
            return fail(ConnectionDone("the client is closed"))
        outbox = self._outbox
        if outbox.connection is None and len(outbox.queue) + len(batch) > outbox.max_queued:
            return fail(QueueFull(f"{len(outbox.queue)} messages already wait for a connection"))
        gathered = _Gathered(len(batch), outbox)
        for index, (topic, payload) in enumerate(batch):
            outbox.add(Pending(topic, payload, _Slot(gathered, index)))
        if outbox.connection is None:
            self._publisher.start()
        return gathered.done

    @property
    def max_queued(self) -> int:
        """Publishes held while disconnected before publish() fails."""
        return self._outbox.max_queued

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed: queued, or written and unanswered."""
        return len(self._outbox)

    def publisher_connected(self) -> Deferred[PublisherProtocol]:
        """The publisher connection, once it is up and has negotiated."""
        return self._publisher.when_ready()

    def _build_publisher(self) -> PublisherProtocol:
        protocol = PublisherProtocol(
            confirms=self.extensions, credentials=self._credentials if self.extensions else None
        )
        protocol.on_error = self._publish_error
        return protocol

    def _adopt(self, protocol: PublisherProtocol) -> None:
        """A new connection has negotiated: it carries every publish from now
        on, starting with those queued, in order (what the last connection
        left unanswered comes first)."""
        sent = self._outbox.adopt(protocol.publisher)
        if sent:
            log.info("sent {n} queued message(s)", n=sent)
        protocol.lost.addCallback(lambda _: self._publisher_lost(protocol))

    def _publisher_lost(self, protocol: PublisherProtocol) -> None:
        # Unanswered publishes of the lost connection go again, before anything
        # published since; the next connection sends them (ClientService
        # reconnects by itself).
        self._outbox.lost(protocol.publisher)
        if self._closed:
            self._outbox.fail_all(ConnectionDone("the client was closed"))
            if self._requester is not None:
                self._requester.close(ConnectionDone("the client was closed"))
        elif self.refused is not None:
            self._outbox.fail_all(self.refused)

    def _publish_error(self, text: str) -> None:
        if self._on_publish_error is not None:
            self._on_publish_error(text)

    # Subscribing.

    def subscribe(
        self,
        topics: Iterable[str],
        handler: Handler,
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> Deferred[None]:
        """Subscribe `handler` to `topics`; fires once the broker confirms.

        With `group` (and the extensions), join that consumer group of each
        topic instead: each message goes to one member of the group. A new
        group starts where `start` says; a member that joins an existing one
        takes up where the group is. With `durable`, the broker keeps the
        consumer's position (in its data directory, if it has one): a process
        that subscribes again with the same name, after a restart of its own
        or of the broker, resumes at the first message not acked. Several
        processes with one durable name share its messages, as a group.
        """
        return self._subscribe(topics, handler, start, offset, group, durable)

    def subscribe_batches(
        self,
        topics: Iterable[str],
        handler: Callable[[list[Message]], Any],
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> Deferred[None]:
        """As `subscribe`, but `handler` gets a list of messages: those that
        came in one read from the broker (up to the prefetch), in order. Its
        result answers them all (acked, unless it is False or a failure),
        in one write: the fastest way to consume."""
        return self._subscribe(topics, BatchHandler(handler), start, offset, group, durable)

    def _subscribe(
        self,
        topics: Iterable[str],
        handler: Handler | BatchHandler,
        start: StartAt,
        offset: int,
        group: str | None,
        durable: str | None,
    ) -> Deferred[None]:
        names = check_topics(topics)
        subscriptions = self._subscriptions
        asked, needs = subscriptions.plan_subscribe(
            names, handler, start, offset, self.extensions, group, durable
        )

        async def subscribe() -> None:
            protocol = await self._subscriber.when_ready()
            if needs is not None and not (protocol.server or {}).get(needs):
                raise BrokerError(
                    "this broker does not take patterns"
                    if needs == "patterns"
                    else "this broker has no consumer groups"
                )
            await protocol.subscribe(asked, start, offset)
            subscriptions.subscribed_to(asked)

        return self._retrying(subscribe)

    def unsubscribe(self, topics: Iterable[str]) -> Deferred[None]:
        """Stop the deliveries of `topics`; fires once the broker confirms."""
        names = check_topics(topics)
        subscriptions = self._subscriptions

        async def unsubscribe() -> None:
            sent = subscriptions.plan_unsubscribe(names)
            protocol = await self._subscriber.when_ready()
            await protocol.unsubscribe(sent)
            subscriptions.unsubscribed([*names, *sent])

        return self._retrying(unsubscribe)

    # Request and reply.

    def request(
        self,
        topic: str,
        data: bytes,
        headers: HeaderPairs | None = None,
        timeout: float = 5.0,
    ) -> Deferred[Message]:
        """Publish a request to `topic` and fire with its reply (a Message),
        or fail with NoResponders (nobody reads the topic: the broker says
        so at once) or RequestTimedOut (no reply within `timeout` seconds).
        Replies come to the client's inbox, a topic only it reads."""
        if self._requester is None:
            self._requester = Requester(self, self._reactor)
        return self._requester.request(topic, data, headers, timeout)

    def reply(
        self,
        topic: str,
        handler: Callable[[Message], Reply | Deferred[Reply]],
        group: str | None = DEFAULT_RESPONDERS,
    ) -> Deferred[None]:
        """Answer the requests published to `topic`: `handler(request)`
        gives the reply's data (or (data, headers), or None for none; a
        Deferred of it too), published to the request's inbox. Responders
        share a consumer group (`group`, "responders" by default): each
        request goes to one of them; fires once subscribed."""
        return self.subscribe([topic], responder(self, handler), group=group)

    def kv(self, bucket: str, timeout: float = 5.0) -> KeyValue:
        """The key-value view of `bucket` (the compacted topic `kv.BUCKET`):
        put, get, delete, keys, history, watch, update (compare-and-set)."""
        return KeyValue(self, bucket, timeout)

    def subscriber_connected(self) -> Deferred[SubscriberProtocol]:
        """The subscriber connection, once it is up and has resubscribed."""
        return self._subscriber.when_ready()

    def _build_subscriber(self) -> SubscriberProtocol:
        protocol = SubscriberProtocol(
            _no_handler,
            prefetch=self.prefetch if self.extensions else None,
            credentials=self._credentials if self.extensions else None,
        )
        protocol.route = self._subscriptions.handler_for
        protocol.on_answered = self._answered
        protocol.on_withdrawn = self._withdrawn
        return protocol

    def _withdrawn(self, topic: str) -> None:
        self._subscriptions.withdrawn(topic)

    def _resubscribe(self, protocol: SubscriberProtocol) -> Deferred[None] | None:
        requests = self._subscriptions.resubscriptions(protocol.server)
        if not requests:
            return None
        log.info("resubscribed to {n} topic(s)", n=len(requests))
        return gatherResults(
            [protocol.subscribe(names, start, offset) for names, start, offset in requests],
            consumeErrors=True,
        ).addCallback(lambda _: None)

    def _answered(self, message: Message, acked: bool) -> None:
        self._subscriptions.answered(message, acked)

    # Both.

    def close(self) -> Deferred[None]:
        """Close both connections and stop reconnecting; what is still queued
        or unanswered fails with ConnectionDone."""
        self._closed = True
        stopping = [role.stop() for role in (self._publisher, self._subscriber)]
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.errback(ConnectionDone("the client was closed"))

        async def close() -> None:
            for stopped in stopping:
                if stopped is not None:
                    await stopped
            self._outbox.fail_all(ConnectionDone("the client was closed"))
            if self._requester is not None:
                self._requester.close(ConnectionDone("the client was closed"))

        return ensureDeferred(close())

    def _retrying(self, attempt: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """Run `attempt`, again if the connection drops before the answer."""

        async def run() -> T:
            while True:
                try:
                    return await attempt()
                except ConnectionClosed:
                    if self._closed:
                        raise
                    log.info("connection lost before the broker answered; trying again")
                # Never again in the same turn: what lost the connection
                # finishes first (a retry at once could spin on it).
                await deferLater(self._reactor, 0, lambda: None)

        return ensureDeferred(run())


def _tls_endpoint(
    reactor: Any,
    description: str,
    ca: str | Path | None,
    certificate: str | Path | None,
    private_key: str | Path | None,
) -> IStreamClientEndpoint:
    host, _, port = description[len("tls:") :].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{description!r}: write tls:HOST:PORT")
    options = client_options(host, ca=ca, certificate=certificate, private_key=private_key)
    return HandshakeFirstEndpoint(
        wrapClientTLS(options, HostnameEndpoint(reactor, host, int(port)))
    )


def connect(
    reactor: Any,
    description: str,
    *,
    extensions: bool = True,
    prefetch: int = 256,
    retry_policy: Callable[[int], float] | None = None,
    on_publish_error: Callable[[str], None] | None = None,
    max_queued: int = DEFAULT_MAX_QUEUED,
    ca: str | Path | None = None,
    certificate: str | Path | None = None,
    private_key: str | Path | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    retry_on_auth_failure: bool = False,
) -> BrokerClient:
    """A client for the broker at "host:port", "tls:host:port", or a client
    endpoint string ("tcp:host:port", "unix:/path").

    extensions: ask for confirms, offsets, prefetch and resume (the default;
    a broker without them is detected and spoken to plainly); False speaks
    the plain protocol, in which a publish fires with None once written,
    whether or not the broker stored it. prefetch: deliveries in
    flight with extensions. retry_policy: seconds to wait before attempt n.
    on_publish_error: called with each Error a publish gets. max_queued:
    publishes held while disconnected before publish() fails.

    With tls: the broker's certificate is checked against the system's trust
    roots, or the CAs in the PEM file `ca`, and its name against the host;
    `certificate` (and `private_key`, if not in the same file) is presented
    to a broker that asks for one. The ssl: endpoint, which checks nothing,
    is refused.

    user and password, or token: who the client is to a broker with a users
    file (they go in Hello, so they turn the extensions on). Refused
    credentials stop the client: connected() and every waiting or later
    call fail with AuthenticationFailed (kept in `refused`), unless
    retry_on_auth_failure asks for retries with backoff, each refusal logged
    and kept in `last_problem`. A user at its connection limit is retried.
    """
    credentials = credentials_of(user, password, token)
    scheme = description.partition(":")[0]
    if scheme == "ssl":
        raise ValueError(
            "the ssl: client endpoint accepts any certificate; use tls:HOST:PORT "
            "(with ca=... for a private CA)"
        )
    if scheme == "tls":
        endpoint = _tls_endpoint(reactor, description, ca, certificate, private_key)
    else:
        if scheme not in ("tcp", "unix"):
            host, _, port = description.rpartition(":")
            description = f"tcp:{host}:{port}"
        endpoint = clientFromString(reactor, description)
    return BrokerClient(
        endpoint,
        reactor,
        retry_policy=retry_policy,
        on_publish_error=on_publish_error,
        extensions=extensions,
        prefetch=prefetch,
        max_queued=max_queued,
        where=description,
        credentials=credentials,
        retry_on_auth_failure=retry_on_auth_failure,
    )


def _no_handler(message: Message) -> bool:
    """The protocol's handler, never called: the client routes each
    delivery to its subscription's handler."""
    return True


class _Gathered:
    """The publishes of one publish_many: their offsets, and the Deferred
    that fires once all are answered."""

    __slots__ = ("done", "error", "offsets", "remaining")

    def __init__(self, count: int, outbox: Outbox[Any]) -> None:
        self.offsets: list[int | None] = [None] * count
        self.remaining = count
        self.error: Exception | None = None
        self.done: Deferred[list[int | None]] = Deferred(
            lambda _: outbox.withdraw_where(lambda handle: _of(handle) is self)
        )
        if count == 0:
            self.done.callback([])

    def settle(self, index: int, offset: int | None) -> None:
        self.offsets[index] = offset
        self._one_answered()

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._one_answered()

    def _one_answered(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.done.called:
            if self.error is not None:
                self.done.errback(self.error)
            else:
                self.done.callback(self.offsets)


class _Slot:
    """One publish of a publish_many: its place in the batch."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Gathered, index: int) -> None:
        self.batch = batch
        self.index = index


def _of(handle: object) -> _Gathered | None:
    return handle.batch if type(handle) is _Slot else None


def _settle(done: Deferred[int | None] | _Slot, offset: int | None) -> None:
    if isinstance(done, _Slot):
        done.batch.settle(done.index, offset)
    elif not done.called:  # else cancelled after it was written
        done.callback(offset)


def _fail(done: Deferred[int | None] | _Slot, error: Exception) -> None:
    if isinstance(done, _Slot):
        done.batch.fail(error)
    elif not done.called:
        done.errback(error)
