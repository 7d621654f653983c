"""One connection: the handshake, Hello and who the peer is, then a session
for its role; backpressure both ways, timeouts of incomplete frames, and
refusals.

It is an `Int32StringReceiver`, as the design card asks, and keeps what
fits of it: `MAX_LENGTH` is the broker's message limit, and the transport,
`connectionMade` and `connectionLost` are Twisted's. What the fast path
replaces, and why:

- `dataReceived`: the plain protocol's frames mix bare u16 fields (actions,
  acks, start-at) with Int32 strings, so they cannot all be strings. Every
  byte goes to one incremental decoder (`broker.wire.ServerDecoder`) that
  walks a single buffer without copying, decodes a read's acks and
  publishes in runs, and holds an oversized frame's bytes not at all.
- `stringReceived`: never called, since the decoder cuts the frames.
- `sendString`: answers are encoded by `broker.wire` a read's worth at a
  time and written in one write (`broker.server.transport.direct_writer`), not one
  length-prefixed string per call.
- `lengthLimitExceeded`: a frame over the limit is refused with an Error
  and its bytes skipped as they arrive, where Int32StringReceiver would
  drop the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from broker import __version__
from broker.security.auth import AuthenticationFailed
from broker.security.tls import peer_certificate
from broker.security.users import ANONYMOUS, User, Users
from broker.server.publisher import PublisherSession
from broker.server.session import Session, cancel_call
from broker.server.subscriber import SubscriberSession
from broker.transport import IStreamTransport, OutputBackpressure
from broker.wire import (
    CONFIRM_ORDER_TOPIC,
    ERR_AUTH_FAILED,
    ERR_AUTH_REVOKED,
    ERR_FRAME_TIMEOUT,
    ERR_HANDSHAKE_TIMEOUT,
    ERR_TOO_MANY_CONNECTIONS,
    ERR_UNKNOWN_ACTION,
    EXTENSIONS_VERSION,
    ProtocolError,
    ServerDecoder,
    ServerEvents,
    encode_error,
    encode_hello,
)
from broker.wire.hello import HelloRequest, parse_hello_request

if TYPE_CHECKING:
    from broker.core import Broker

log = Logger()

# Refusals logged per connection before the rest are only counted: a client
# flooding bad frames must not flood the log too.
LOGGED_REFUSALS = 10


def describe_peer(address: IAddress) -> str:
    """host:port for TCP, the path (or 'unix') for UNIX sockets."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{getattr(address, 'port', '?')}"
    return getattr(address, "name", None) or type(address).__name__


class ConnectionHost(Protocol):
    """What a connection asks of the front door that made it
    (broker.server.factory.BrokerFactory): to be kept, and forgotten."""

    def connection_made(self, protocol: BrokerProtocol) -> None: ...

    def connection_gone(self, protocol: BrokerProtocol) -> None: ...


class BrokerProtocol(Int32StringReceiver):
    """One client connection. Until its first action it is handled here
    (Hello included); then its decoder reports to its role's session."""

    transport: IStreamTransport

    def __init__(self, broker: Broker, host: ConnectionHost) -> None:
        self.broker = broker
        self._host = host
        self.peer = "?"
        self.decoder: ServerDecoder | None = None
        self.session: Session | None = None
        self.hello: HelloRequest | None = None
        """What Hello agreed (prefetch already capped), or None without extensions."""
        self.user: User | None = None
        """Who the peer is, once decided; always None without a users file."""
        # Which stored secret the peer proved it knows ("password_hash",
        # "token_hash"), if any: a reload that changes it closes the connection.
        self._proved: str | None = None
        self._authenticating = False
        self._gone = False
        self._handshake: IDelayedCall | None = None
        self._refusals = 0
        # Why reading is paused: "output" (our answers pile up), "input" (budget).
        self._read_pauses: set[str] = set()
        self._output_full = False
        # The incomplete frame held, and since when (for --frame-timeout).
        self._held_input = 0
        self._partial_since: float | None = None
        self._partial_progress = -1
        self._frame_timer: IDelayedCall | None = None
        self._cut_off: IDelayedCall | None = None
        self.connected_at = 0.0
        self.bytes_received = 0
        self.number = 0
        """This connection's number in the broker's life (for /connz)."""

    # Connection events.

    def connectionMade(self) -> None:
        broker = self.broker
        settings = broker.settings
        self.peer = describe_peer(self.transport.getPeer())
        self.connected_at = broker.clock.seconds()
        broker.stats.connections_accepted += 1
        self.number = broker.stats.connections_accepted
        self.MAX_LENGTH = settings.max_message_size
        # The protocol hears what comes before a role; its session the rest.
        self.decoder = ServerDecoder(cast(ServerEvents, self), settings.max_message_size)
        self._start_handshake_timer()
        self.transport.registerProducer(OutputBackpressure(self), True)
        # The broker writes what a read produced at once, in one write: Nagle's
        # algorithm would only hold the next one back for the peer's ACK.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._host.connection_made(self)
        broker.connections.add(self)
        log.debug("{peer} connected", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        decoder = self.decoder
        assert decoder is not None
        self.bytes_received += len(data)
        decoder.feed(data)
        self._after_decoding(decoder)

    def hold_input_until(self, ready: Deferred[Any], then: Callable[[], None]) -> None:
        """Decode and read nothing more until `ready` fires (a networked store
        learning a topic's offsets), then call `then` and go on where it stopped."""
        decoder = self.decoder
        assert decoder is not None
        decoder.hold()
        self._pause_reading("store")

        def go_on(_: object) -> None:
            if self._gone:
                return
            then()
            self._resume_reading("store")
            decoder.release()
            self._after_decoding(decoder)

        ready.addCallback(go_on).addErrback(
            lambda failure: log.failure("{peer}: after the store answered", failure, peer=self.peer)
        )

    def _after_decoding(self, decoder: ServerDecoder) -> None:
        if self.session is not None:
            self.session.end_of_read()
        if (decoder.buffered or self._held_input) and not decoder.on_hold:
            self._track_incomplete_frame(decoder)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self._end_handshake()
        cancel_call(self._frame_timer)
        cancel_call(self._cut_off)
        self._frame_timer = self._cut_off = None
        self.broker.input_budget.remove(self)
        if self.decoder is not None:
            self.decoder.discard()
        if self.session is not None:
            self.session.close()
        if self.user is not None:
            self.broker.release(self.user)
        self._host.connection_gone(self)
        self.broker.connections.discard(self)
        role = self.decoder.role if self.decoder else "new"
        log.debug("{peer} ({role}) disconnected", peer=self.peer, role=role)
        if self._refusals > LOGGED_REFUSALS:
            log.warn(
                "{peer}: {n} refusals in all, {unlogged} not logged",
                peer=self.peer,
                n=self._refusals,
                unlogged=self._refusals - LOGGED_REFUSALS,
            )

    def stringReceived(self, string: bytes) -> None:
        # Frames are decoded by ServerDecoder, never by Int32StringReceiver.
        raise NotImplementedError

    # Decoder events before a role (and those sessions pass back).

    def unknown_action(self, code: int) -> None:
        self.log_refusal(f"unknown action {code}")
        self.send_error(ERR_UNKNOWN_ACTION)

    def refused(self, reason: str, detail: str | None = None) -> None:
        self.log_refusal(detail or reason)
        self.send_error(reason)

    def hello_requested(self, payload: bytes) -> None:
        try:
            request = parse_hello_request(payload)
        except ProtocolError as error:
            self.refused(str(error), error.detail)
            return
        if self.broker.authenticator is None:
            self._agree(request)
        else:
            self._authenticate(request, lambda: self._agree(request))

    def _agree(self, request: HelloRequest) -> None:
        settings = self.broker.settings
        prefetch = min(request.prefetch, settings.max_prefetch)
        # Only what was agreed is kept: no secret outlives the check.
        # Answers per topic only for a client that asked (old clients match
        # confirms by publish order).
        confirm_order = request.confirm_order if request.confirms else None
        self.hello = HelloRequest(
            request.version,
            prefetch,
            request.confirms,
            patterns=request.patterns,
            groups=request.groups,
            confirm_order=confirm_order,
            headers=request.headers,
        )
        assert self.decoder is not None
        self.decoder.extended = True
        if request.headers:
            self.decoder.max_header_bytes = settings.max_header_bytes
        answer: dict[str, object] = {
            "version": EXTENSIONS_VERSION,
            "server": f"twisted-broker/{__version__}",
            "confirms": request.confirms,
            "patterns": request.patterns,
            "groups": request.groups,
            "prefetch": prefetch,
            "max_prefetch": settings.max_prefetch,
            "max_message_size": settings.max_message_size,
            "max_inflight_bytes": settings.max_inflight_bytes,
            "max_deliveries": settings.delivery.max_deliveries,
            "ack_timeout": settings.delivery.ack_timeout,
            "ack_delay": settings.delivery.ack_delay,
            "dead_letters": settings.dead_letter_topic,
            "from64": True,
        }
        if request.confirm_order is not None:
            answer["confirm_order"] = confirm_order or "publish"
        if request.headers:  # said only to a client that asked
            answer["headers"] = True
            answer["max_header_bytes"] = settings.max_header_bytes
            if settings.dedup_window > 0:
                # A publish with a Msg-Id header is stored once within it.
                answer["dedup_window"] = settings.dedup_window
        if self.user is not None:
            answer["user"] = self.user.name
        self.transport.write(encode_hello(answer))
        log.debug(
            "{peer} agreed extensions: confirms={confirms}, prefetch={prefetch}",
            peer=self.peer,
            confirms=request.confirms,
            prefetch=prefetch,
        )

    def became_publisher(self) -> None:
        self._as_user(self._begin_publisher)

    def became_subscriber(self) -> None:
        self._as_user(self._begin_subscriber)

    def _begin_publisher(self) -> None:
        user = self.user
        self._begin(
            PublisherSession(
                self,
                confirms=bool(self.hello and self.hello.confirms),
                by_topic=bool(self.hello and self.hello.confirm_order == CONFIRM_ORDER_TOPIC),
                may_publish=user.publish if user is not None else None,
            )
        )

    def _begin_subscriber(self) -> None:
        hello = self.hello
        user = self.user
        session = SubscriberSession(
            self,
            extended=hello is not None,
            prefetch=hello.prefetch if hello else 1,
            patterns=bool(hello and hello.patterns),
            groups=bool(hello and hello.groups),
            user=user,
            headers=bool(hello and hello.headers),
        )
        self._begin(session)

    def _begin(self, session: Session) -> None:
        self._end_handshake()
        self.session = session
        assert self.decoder is not None
        self.decoder.events = cast(ServerEvents, session)
        if self._output_full:
            session.output_full()
        log.debug("{peer} is a {role}", peer=self.peer, role=session.role)

    # Who the peer is.

    def _as_user(self, then: Callable[[], None]) -> None:
        """Run `then` once the peer's user is known (a client that sent no
        Hello is its certificate's user, or anonymous)."""
        if self.broker.authenticator is None or self.user is not None:
            then()
        else:
            self._authenticate(None, then)

    def _authenticate(self, request: HelloRequest | None, then: Callable[[], None]) -> None:
        """Decide who the peer is, then run `then`. A password is checked in
        a thread: until then nothing more from this peer is decoded or read."""
        authenticator = self.broker.authenticator
        assert authenticator is not None and self.decoder is not None
        certificate = peer_certificate(self.transport)
        if certificate is not None and authenticator.identity != "none":
            self._proved = None
        elif request is not None and request.token is not None:
            self._proved = "token_hash"
        elif request is not None and request.user is not None:
            self._proved = "password_hash"
        address = getattr(self.transport.getPeer(), "host", None) or "local"
        # The wait for repeated failures may outlast the handshake timeout: the
        # clock stops while the broker, not the peer, is the one to answer.
        self._end_handshake()
        self._authenticating = True
        answer = authenticator.authenticate(address, request, certificate)
        answer.addCallbacks(self._authenticated, self._authentication_failed, callbackArgs=(then,))
        if self._authenticating:
            self.decoder.hold()
            self._pause_reading("auth")

    def _authenticated(self, user: User, then: Callable[[], None]) -> None:
        self._authenticating = False
        if self._gone:
            return
        limit = self.broker.admit(user)
        if limit is not None:
            log.warn(
                "{peer}: refused as user {user}: it has {limit} connection(s) already",
                peer=self.peer,
                user=user.name,
                limit=limit,
            )
            self._refuse_connection(ERR_TOO_MANY_CONNECTIONS)
            return
        self.user = user
        if self.session is None and self._handshake is None:
            self._start_handshake_timer()  # the peer's turn again: to choose its role
        if user.name != ANONYMOUS:
            log.debug("{peer} is user {user}", peer=self.peer, user=user.name)
        then()
        if "auth" in self._read_pauses:
            assert self.decoder is not None
            self._resume_reading("auth")
            self.decoder.release()
            self._after_decoding(self.decoder)

    def _authentication_failed(self, failure: Failure) -> None:
        self._authenticating = False
        if self._gone:
            return
        self.broker.stats.authentication_failures += 1
        if failure.check(AuthenticationFailed):
            log.warn(
                "{peer}: authentication failed: {reason}",
                peer=self.peer,
                reason=failure.getErrorMessage(),
            )
        else:
            log.failure("{peer}: authentication broke", failure, peer=self.peer)
        self._refuse_connection(ERR_AUTH_FAILED)

    def users_reloaded(self, users: Users) -> None:
        """The users file was re-read: keep to what it grants now."""
        user = self.user
        if user is None or self._gone:
            return  # not decided yet: it will be, against the new file
        fresh = users.anonymous if user.name == ANONYMOUS else users.by_name.get(user.name)
        proved = self._proved
        if fresh is None or (
            proved is not None and getattr(fresh, proved) != getattr(user, proved)
        ):
            log.warn(
                "{peer}: user {user} was removed or its secret changed; closing",
                peer=self.peer,
                user=user.name,
            )
            self._refuse_connection(ERR_AUTH_REVOKED)
            return
        self.user = fresh
        if self.session is not None:
            self.session.permissions_changed(fresh)

    # Stopping.

    def drain(self) -> None:
        """The broker is stopping: take no new publishes, start no new
        deliveries; acks of those in flight are still read."""
        if self.session is None or self.session.role == "publisher":
            self._pause_reading("drain")
        else:
            self.session.halt()

    # What the monitor reads (broker.monitoring.view.MonitoredConnection).

    door = "tcp"

    @property
    def role(self) -> str:
        return self.decoder.role if self.decoder else "new"

    @property
    def window(self) -> Any:
        return getattr(self.session, "window", None)

    @property
    def messages_in(self) -> int:
        return int(getattr(self.session, "messages", 0))

    @property
    def delivered_messages(self) -> int:
        return int(getattr(self.session, "delivered_messages", 0))

    @property
    def delivered_bytes(self) -> int:
        return int(getattr(self.session, "delivered_bytes", 0))

    def details(self) -> dict[str, Any]:
        """What only this door knows of a connection."""
        return {"extensions": self.hello is not None}

    @property
    def in_flight(self) -> int:
        """Deliveries awaiting an ack on this connection."""
        window = getattr(self.session, "window", None)
        return window.in_flight if window is not None else 0

    def _refuse_connection(self, text: str) -> None:
        """Say why, hear nothing more, send nothing more, and close."""
        assert self.decoder is not None
        self.decoder.hold()
        if self.session is not None:
            self.session.halt()
        self._close_with_error(text)

    # Refusals and errors.

    def log_refusal(self, reason: str) -> None:
        self._refusals += 1
        if self._refusals <= LOGGED_REFUSALS:
            log.warn("{peer}: {reason}", peer=self.peer, reason=reason)
            if self._refusals == LOGGED_REFUSALS:
                log.warn("{peer}: further refusals are counted, not logged", peer=self.peer)

    def send_error(self, text: str) -> None:
        self.broker.stats.refused(text)
        self.transport.write(encode_error(text))

    def close(self, grace: float | None = None) -> None:
        """Close once what is written has gone; cut the peer off if that
        takes longer than `grace` seconds (default: the close grace), as a
        peer that reads nothing, or a TLS handshake that never comes, would."""
        self.transport.loseConnection()
        if self._cut_off is None:
            self._cut_off = self.broker.clock.callLater(
                self.broker.settings.close_grace if grace is None else grace,
                self.transport.abortConnection,
            )

    def _close_with_error(self, text: str) -> None:
        self.send_error(text)
        self.close()

    # Backpressure, both ways.

    def output_full(self) -> None:
        """What we wrote piles up unread: send nothing new, read nothing."""
        self._output_full = True
        self._pause_reading("output")
        if self.session is not None:
            self.session.output_full()

    def output_drained(self) -> None:
        """Everything we wrote has gone to the peer's socket."""
        self._output_full = False
        self._resume_reading("output")
        if self.session is not None:
            self.session.output_drained()

    def pause_input(self) -> None:
        """The broker-wide input budget is spent: stop reading for now."""
        self._pause_reading("input")

    def resume_input(self) -> None:
        self._resume_reading("input")

    def _pause_reading(self, reason: str) -> None:
        if not self._read_pauses:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self._read_pauses:
            self._read_pauses.discard(reason)
            if not self._read_pauses:
                self.transport.resumeProducing()

    # Incomplete frames and timeouts.

    def _track_incomplete_frame(self, decoder: ServerDecoder) -> None:
        """Account the incomplete frame left after a read, and time it."""
        broker = self.broker
        held = decoder.buffered
        progress = decoder.progress
        if held != self._held_input:
            self._held_input = held
            broker.input_budget.update(self, held, decoder.missing)
        if not held:
            self._partial_since = None
        elif self._partial_since is None or progress != self._partial_progress:
            self._partial_since = broker.clock.seconds()
            self._partial_progress = progress
            if self._frame_timer is None:
                self._frame_timer = broker.clock.callLater(
                    broker.settings.frame_timeout, self._frame_timer_fired
                )

    def _frame_timer_fired(self) -> None:
        self._frame_timer = None
        if self._partial_since is None:
            return
        clock = self.broker.clock
        timeout = self.broker.settings.frame_timeout
        left = self._partial_since + timeout - clock.seconds()
        if left > 1e-6:
            self._frame_timer = clock.callLater(left, self._frame_timer_fired)
            return
        log.warn(
            "{peer}: a frame stayed incomplete for {seconds} s ({held} bytes held); closing",
            peer=self.peer,
            seconds=timeout,
            held=self._held_input,
        )
        self._close_with_error(ERR_FRAME_TIMEOUT)

    def _start_handshake_timer(self) -> None:
        broker = self.broker
        self._handshake = broker.clock.callLater(
            broker.settings.handshake_timeout, self._handshake_expired
        )

    def _end_handshake(self) -> None:
        cancel_call(self._handshake)
        self._handshake = None

    def _handshake_expired(self) -> None:
        self._handshake = None
        log.warn("{peer} sent no valid first action in time; closing", peer=self.peer)
        self._close_with_error(ERR_HANDSHAKE_TIMEOUT)
