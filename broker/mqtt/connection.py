"""One MQTT connection (3.1.1 or 5.0) over the broker's core: CONNECT and
who the client is, publishes appended to the broker's topics, and a
`core.Consumer` for its subscriptions, whose deliveries go out as PUBLISH
packets.

- QoS 1 and 2 publishes are answered (PUBACK, PUBREC) once the store holds
  them (fsynced with `--fsync always`), in the order they came, as MQTT
  4.6 asks. A QoS 2 publish whose PUBREC went out is not stored again when
  the client sends it again, until its PUBREL (that state outlives the
  connection, for its client identifier).
- Deliveries are at the QoS the subscription was granted; a QoS 0 delivery
  is acked as it is written, a QoS 1 one by its PUBACK, a QoS 2 one by its
  PUBREC (then PUBREL, PUBCOMP). Unanswered ones are sent again (DUP) after
  the broker's ack timeout. The window is the client's Receive Maximum (5.0),
  or the broker's prefetch limit.
- A persistent session (3.1.1 clean session 0; 5.0 a session expiry) reads
  through durable consumers, so that what is published while the client is
  away waits for it; its subscriptions are kept (broker.mqtt.state).
- Retained messages, wills (with 5.0's delay), keep-alive (1.5 times the
  client's), topic aliases from the client, its Maximum Packet Size,
  shared subscriptions as consumer groups.
"""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING, Any
from typing import Protocol as Protocol_

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

import broker.mqtt.packets as p
from broker.core import Consumer, SubscribeRefused
from broker.core.delivery import Delivery
from broker.mqtt.properties import UnfitProperties, headers_of, properties_of
from broker.mqtt.state import (
    StoredSession,
    forget_session,
    load_session,
    retain,
    retained_matching,
    save_session,
)
from broker.mqtt.topics import (
    InvalidTopic,
    starts_wild,
    to_broker_filters,
    to_broker_topic,
    to_mqtt_topic,
)
from broker.names import DURABLE_PREFIX, GROUP_PREFIX, parse_group_name
from broker.security.auth import AuthenticationFailed
from broker.security.tls import peer_certificate
from broker.security.users import ANONYMOUS, User, Users
from broker.subjects import matches
from broker.transport import IStreamTransport, OutputBackpressure
from broker.wire import ERR_PERMISSION_DENIED, StartAt
from broker.wire.headers import Headered, Headers, with_headers, without_message_id
from broker.wire.hello import HelloRequest

if TYPE_CHECKING:
    from broker.core import Broker
    from broker.security.permissions import Rules

log = Logger()

TOPIC_ALIAS_MAXIMUM = 1024
"""Topic aliases a client may set up (MQTT 5)."""
RECEIVE_MAXIMUM = 65535
"""QoS 1 and 2 publishes a client may have unanswered (MQTT 5): the broker
reads on as the store answers, so it asks for no smaller window."""
_ENDED = ("closing", "closed")
MAX_HELD_PACKETS = 1000
"""Packets read while CONNECT is being decided, held, at most."""


class Door(Protocol_):
    """What a connection asks of the door that made it (broker.mqtt.door)."""

    broker: Broker
    max_packet_size: int

    def connection_made(self, connection: MQTTConnection) -> None: ...

    def connection_gone(self, connection: MQTTConnection) -> None: ...

    def take_over(self, connection: MQTTConnection) -> None: ...

    def awaiting_release(self, client_id: str) -> set[int]: ...

    def forget_client(self, client_id: str) -> None: ...

    def will_on_loss(
        self, client_id: str, will: p.Will, delay: float, may_publish: Rules | None
    ) -> None: ...


class _Subscribed:
    """One of the client's topic filters: its QoS, the names it is
    subscribed to in the broker (groups and durables included), and the
    topics and patterns those names read."""

    __slots__ = ("names", "patterns", "qos", "wild_first")

    def __init__(self, qos: int, names: list[str], wild_first: bool) -> None:
        self.qos = qos
        self.names = names
        self.patterns = [
            parsed[1] if (parsed := parse_group_name(name)) is not None else name for name in names
        ]
        self.wild_first = wild_first


class MQTTConnection(Protocol):
    """One MQTT client connection (see the module)."""

    transport: IStreamTransport

    def __init__(self, door: Door) -> None:
        self._door = door
        self.broker = door.broker
        self.peer = "?"
        self.level = 0
        self.client_id = ""
        self.user: User | None = None
        self.connected_at = 0.0
        self.number = 0
        self.bytes_received = 0
        self.messages_in = 0
        self.delivered_messages = 0
        self.delivered_bytes = 0
        self.decoder = p.PacketDecoder(door.max_packet_size)
        self.consumer: Consumer | None = None
        self._state = "new"  # new, connecting, connected, closed
        self._held: list[p.Packet] = []
        self._keep_alive = 0
        self._last_heard = 0.0
        self._timer: IDelayedCall | None = None
        self._will: p.Will | None = None
        self._session: StoredSession | None = None
        self._subscribed: dict[str, _Subscribed] = {}
        self._qos_of: dict[str, int] = {}
        self._aliases: dict[int, str] = {}
        self._names: dict[str, str] = {}
        self._topic_fields: dict[str, bytes] = {}
        """Topics here -> their MQTT names as PUBLISH carries them."""
        self._client_max_packet = p.MAX_REMAINING_LENGTH
        self._receive_maximum = RECEIVE_MAXIMUM
        # Publishes of this read, by topic, and their answers in order.
        self._batch: dict[str, list[bytes]] = {}
        self._headered: set[str] = set()
        self._answers: list[tuple[str, p.Publish]] = []
        self._answer_queue: list[list[Any]] = []
        # Outgoing.
        self._outgoing: list[bytes] = []
        self._acked_on_write: list[int] = []
        self._acks: list[int] = []
        self._pump_soon: IDelayedCall | None = None
        self._packet_ids = itertools.cycle(range(1, 65536))
        self._out_packets: dict[int, int] = {}
        """Packet id -> delivery id of the deliveries awaiting PUBACK/PUBREC
        (-1 for a retained message sent on subscribing)."""
        self._out_ids: dict[int, int] = {}
        """Delivery id -> its packet id."""
        self._released: set[int] = set()
        """Packet ids of QoS 2 deliveries whose PUBREL went, awaiting PUBCOMP."""
        self._paused: set[str] = set()
        self._clean_end = False
        self._held_input = 0
        """Bytes of an incomplete packet held (told to the input budget)."""
        self._partial_since: float | None = None
        self._packet_timer: IDelayedCall | None = None

    # What the monitor reads (broker.monitoring.view.MonitoredConnection).

    door = "mqtt"
    role = "mqtt"

    @property
    def window(self) -> Any:
        return self.consumer.window if self.consumer is not None else None

    @property
    def in_flight(self) -> int:
        return self.consumer.window.in_flight if self.consumer is not None else 0

    def details(self) -> dict[str, Any]:
        """MQTT's own: the client identifier, the protocol, the session."""
        return {
            "client_id": self.client_id,
            "protocol": {p.MQTT_311: "MQTT 3.1.1", p.MQTT_5: "MQTT 5.0"}.get(self.level),
            "keep_alive": self._keep_alive,
            "persistent_session": self._session is not None,
            "filters": sorted(self._subscribed),
        }

    def close(self, grace: float | None = None) -> None:
        """Close it (an operator asked): DISCONNECT first for MQTT 5."""
        if self._state == "connected" and self.level == p.MQTT_5:
            self._write(p.encode_disconnect(p.ADMINISTRATIVE_ACTION))
        self._close(grace)

    # Connection events.

    def connectionMade(self) -> None:
        broker = self.broker
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.connected_at = broker.clock.seconds()
        broker.stats.connections_accepted += 1
        self.number = broker.stats.connections_accepted
        self.transport.registerProducer(OutputBackpressure(self), True)
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._timer = broker.clock.callLater(
            broker.settings.handshake_timeout, self._handshake_timed_out
        )
        self._door.connection_made(self)
        broker.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._state in _ENDED:
            return
        self.bytes_received += len(data)
        self._last_heard = self.broker.clock.seconds()
        try:
            packets = self.decoder.feed(data)
        except p.MalformedPacket as error:
            self._fail(error.reason, str(error))
            return
        if self.decoder.buffered or self._held_input:
            self._track_partial_packet()
        for packet in packets:
            if self._state in _ENDED:
                return
            if self._state == "connecting":
                if len(self._held) >= MAX_HELD_PACKETS:
                    self._fail(p.QUOTA_EXCEEDED, "too many packets before CONNACK")
                    return
                self._held.append(packet)
                continue
            self._handle(packet)
        self._end_of_read()

    def _handle(self, packet: p.Packet) -> None:
        kind = type(packet)
        if kind is p.Publish:
            self._publish(packet)  # type: ignore[arg-type]
        elif kind is p.Acknowledgement:
            self._acknowledged(packet)  # type: ignore[arg-type]
        elif kind is p.PingRequest:
            self._write(p.PINGRESP_PACKET)
        elif kind is p.Subscribe:
            self._subscribe(packet)  # type: ignore[arg-type]
        elif kind is p.Unsubscribe:
            self._unsubscribe(packet)  # type: ignore[arg-type]
        elif kind is p.Disconnect:
            self._disconnected(packet)  # type: ignore[arg-type]
        elif kind is p.Connect:
            self._connect(packet)  # type: ignore[arg-type]

    def _end_of_read(self) -> None:
        if self._batch:
            self._append_batch()
        if self._acks and self.consumer is not None:
            acks, self._acks = self._acks, []
            self.consumer.ack_ids(acks)
            self.consumer.pump()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was = self._state
        self._state = "closed"
        self.broker.input_budget.remove(self)
        if self._packet_timer is not None and self._packet_timer.active():
            self._packet_timer.cancel()
        ended_connected = was in ("connected", "closing")
        self._cancel_timer()
        if self._pump_soon is not None and self._pump_soon.active():
            self._pump_soon.cancel()
        if self.consumer is not None:
            self.consumer.close()
        if self.user is not None:
            self.broker.release(self.user)
        if ended_connected:
            if self._will is not None and not self._clean_end:
                may_publish = self.user.publish if self.user is not None else None
                self._door.will_on_loss(self.client_id, self._will, self._will_delay(), may_publish)
            self._session_ended()
        self._door.connection_gone(self)
        self.broker.connections.discard(self)
        log.debug("{peer} (MQTT {client!r}) disconnected", peer=self.peer, client=self.client_id)

    # CONNECT.

    def _connect(self, connect: p.Connect) -> None:
        self.level = connect.level
        self._cancel_timer()
        if p.AUTHENTICATION_METHOD in connect.properties:
            self._refuse(
                p.BAD_AUTHENTICATION_METHOD, p.V3_NOT_AUTHORIZED, "enhanced authentication"
            )
            return
        client_id = connect.client_id
        assigned = None
        if not client_id:
            if self.level == p.MQTT_311 and not connect.clean_start:
                self._refuse(
                    p.CLIENT_IDENTIFIER_NOT_VALID,
                    p.V3_IDENTIFIER_REJECTED,
                    "an empty client identifier with a persistent session",
                )
                return
            client_id = assigned = "auto-" + uuid.uuid4().hex
        self.client_id = client_id
        self._keep_alive = connect.keep_alive
        self._will = connect.will
        if connect.will is not None:
            try:
                to_broker_topic(connect.will.topic)
            except InvalidTopic as error:
                self._refuse(p.TOPIC_NAME_INVALID, p.V3_NOT_AUTHORIZED, f"will topic: {error}")
                return
        properties = connect.properties
        self._client_max_packet = properties.get(p.MAXIMUM_PACKET_SIZE, p.MAX_REMAINING_LENGTH)
        self._receive_maximum = properties.get(p.RECEIVE_MAXIMUM, RECEIVE_MAXIMUM)
        if self.level == p.MQTT_5:
            expiry = properties.get(p.SESSION_EXPIRY_INTERVAL, 0)
            persistent = expiry > 0
            keep_for = None if expiry == 0xFFFFFFFF else expiry
        else:
            persistent = not connect.clean_start
            keep_for = None
        self._state = "connecting"
        self.transport.pauseProducing()
        signed_in = self._sign_in(connect)
        signed_in.addCallback(self._signed_in, connect.clean_start, persistent, keep_for, assigned)
        signed_in.addErrback(self._sign_in_failed)

    def _sign_in(self, connect: p.Connect) -> Deferred[Any]:
        """The user the client is (None without a users file)."""
        authenticator = self.broker.authenticator
        if authenticator is None:
            return succeed(None)
        password = connect.password.decode("utf-8", "replace") if connect.password else None
        if connect.username is None and password is not None:
            request = HelloRequest(token=password)  # a password alone is a token
        elif connect.username is not None:
            request = HelloRequest(user=connect.username, password=password or "")
        else:
            request = None
        return authenticator.authenticate(self.peer, request, peer_certificate(self.transport))

    def _signed_in(
        self,
        user: User | None,
        clean_start: bool,
        persistent: bool,
        keep_for: int | None,
        assigned: str | None,
    ) -> Deferred[None] | None:
        if self._state in _ENDED:
            return None
        if user is not None:
            limit = self.broker.admit(user)
            if limit is not None:
                text = f"user {user.name} has {limit} connection(s) already"
                self._refuse(p.QUOTA_EXCEEDED, p.V3_SERVER_UNAVAILABLE, text)
                return None
            self.user = user
        self._door.take_over(self)
        if clean_start:
            self._door.forget_client(self.client_id)
            stored: Deferred[StoredSession | None] = succeed(None)
            forget_session(self.broker, self.client_id)
        else:
            stored = load_session(self.broker, self.client_id)
        return stored.addCallback(self._resume, persistent, keep_for, assigned)

    def _resume(
        self,
        stored: StoredSession | None,
        persistent: bool,
        keep_for: int | None,
        assigned: str | None,
    ) -> Deferred[None] | None:
        if self._state in _ENDED:
            return None
        now = self.broker.clock.seconds()
        present = stored is not None and not stored.expired(now)
        if persistent:
            session = stored if present and stored is not None else StoredSession()
            session.expiry = keep_for
            session.ended_at = None
            self._session = session
            save_session(self.broker, self.client_id, session)
        elif stored is not None:
            forget_session(self.broker, self.client_id)
            self._door.forget_client(self.client_id)
        properties: p.Properties = {}
        if self.level == p.MQTT_5:
            properties = {
                p.RECEIVE_MAXIMUM: RECEIVE_MAXIMUM,
                p.TOPIC_ALIAS_MAXIMUM: TOPIC_ALIAS_MAXIMUM,
                p.MAXIMUM_PACKET_SIZE: self._door.max_packet_size,
                p.RETAIN_AVAILABLE: 1,
                p.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
                p.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
                p.SHARED_SUBSCRIPTION_AVAILABLE: 1,
            }
            if assigned is not None:
                properties[p.ASSIGNED_CLIENT_IDENTIFIER] = assigned
        self._write(p.encode_connack(self.level, present and persistent, p.SUCCESS, properties))
        self._state = "connected"
        log.debug(
            "{peer} is MQTT client {client!r} (protocol level {version})",
            peer=self.peer,
            client=self.client_id,
            version=self.level,
        )
        self._start_keep_alive()
        resubscribed = None
        if present and persistent and self._session is not None and self._session.filters:
            resubscribed = self._subscribe_all(
                [p.Subscription(f, qos) for f, qos in self._session.filters.items()],
                save=False,
                resumed=True,
            )
        held, self._held = self._held, []
        for packet in held:
            if self._state in _ENDED:
                return None
            self._handle(packet)
        self._end_of_read()
        self.transport.resumeProducing()
        if resubscribed is not None:
            return resubscribed.addCallback(lambda _: None)
        return None

    def _sign_in_failed(self, failure: Failure) -> None:
        if self._state in _ENDED:
            return
        self.broker.stats.authentication_failures += 1
        if failure.check(AuthenticationFailed):
            log.warn(
                "{peer}: MQTT authentication failed: {reason}",
                peer=self.peer,
                reason=failure.getErrorMessage(),
            )
        else:
            log.failure("{peer}: MQTT CONNECT broke", failure, peer=self.peer)
        self._refuse(p.BAD_USER_NAME_OR_PASSWORD, p.V3_BAD_USER_NAME_OR_PASSWORD, "")

    def _refuse(self, reason: int, v3_code: int, text: str) -> None:
        """Refuse a CONNECT with a CONNACK that says why, and close."""
        if text:
            log.warn("{peer}: MQTT CONNECT refused: {text}", peer=self.peer, text=text)
        code = reason if self.level == p.MQTT_5 else v3_code
        self._write(p.encode_connack(self.level or p.MQTT_311, False, code))
        self._close()

    # Publishing.

    def _publish(self, publish: p.Publish) -> None:
        if self._state != "connected":
            self._fail(p.PROTOCOL_ERROR, "PUBLISH before CONNECT was answered")
            return
        topic = publish.topic
        properties = publish.properties
        if properties:
            alias = properties.get(p.TOPIC_ALIAS)
            if alias is not None:
                if not 0 < alias <= TOPIC_ALIAS_MAXIMUM:
                    self._fail(p.TOPIC_ALIAS_INVALID, f"topic alias {alias}")
                    return
                if topic:
                    self._aliases[alias] = topic
                else:
                    found = self._aliases.get(alias)
                    if found is None:
                        self._fail(p.PROTOCOL_ERROR, f"topic alias {alias} was never set")
                        return
                    topic = found
            if p.SUBSCRIPTION_IDENTIFIER in properties:
                self._fail(p.PROTOCOL_ERROR, "a subscription identifier in PUBLISH")
                return
        name = self._names.get(topic)
        if name is None:
            try:
                name = to_broker_topic(topic)
            except InvalidTopic as error:
                if topic.startswith("$"):
                    self._refused_publish(publish, p.NOT_AUTHORIZED, str(error))
                    return
                self._fail(p.TOPIC_NAME_INVALID, str(error))
                return
            if len(self._names) >= 1024:
                self._names.clear()
            self._names[topic] = name
        payload = publish.payload
        if properties and self.level == p.MQTT_5:
            try:
                block = headers_of(properties, self.broker.clock.seconds())
            except UnfitProperties as error:
                self._refused_publish(publish, p.IMPLEMENTATION_SPECIFIC_ERROR, str(error))
                return
            if block:
                payload = with_headers(payload, block)
                self._headered.add(name)
        if publish.qos == 2 and publish.packet_id in self._door.awaiting_release(self.client_id):
            # Stored already: its PUBREC was lost, or is on its way.
            self._answer(publish, p.PUBREC, p.SUCCESS)
            return
        self.messages_in += 1
        if publish.retain:
            self._retain(name, payload)
            if not payload:  # (an empty retained message only clears the one kept)
                if publish.qos == 2:
                    self._door.awaiting_release(self.client_id).add(publish.packet_id)
                if publish.qos:
                    self._answer(publish, p.PUBACK if publish.qos == 1 else p.PUBREC, 0)
                return
        batch = self._batch.get(name)
        if batch is None:
            self._batch[name] = [payload]
        else:
            batch.append(payload)
        if publish.qos:
            self._answers.append((name, publish))

    def _retain(self, name: str, payload: bytes) -> None:
        may = self.user.publish if self.user is not None else None
        if may is not None and not may.permits(name):
            return  # refused with the publish itself
        appended = retain(self.broker, name, payload)
        if isinstance(appended.first, Deferred):
            appended.first.addErrback(
                lambda failure: log.warn(
                    "{peer}: retaining on {topic!r} failed: {error}",
                    peer=self.peer,
                    topic=name,
                    error=failure.getErrorMessage(),
                )
            )

    def _refused_publish(self, publish: p.Publish, reason: int, text: str) -> None:
        log.warn(
            "{peer}: MQTT publish to {topic!r} refused: {text}",
            peer=self.peer,
            topic=publish.topic,
            text=text,
        )
        if publish.qos == 1:
            self._answer(publish, p.PUBACK, reason)
        elif publish.qos == 2:
            self._answer(publish, p.PUBREC, reason)

    def _answer(self, publish: p.Publish, kind: int, reason: int) -> None:
        """Queue an answer that is ready now (behind those still waiting)."""
        if self.level != p.MQTT_5 and reason >= 0x80:
            reason = p.SUCCESS  # 3.1.1 has no refusal but closing (MQTT-3.3.5-2)
        entry = [True, p.encode_acknowledgement(self.level, kind, publish.packet_id, reason)]
        self._answer_queue.append(entry)
        self._write_answers()

    def _append_batch(self) -> None:
        """Append this read's publishes, one batch per topic; queue each QoS
        1 and 2 publish's answer in order, filled once its topic's batch is
        stored (at once from a local store that need not sync)."""
        batch, self._batch = self._batch, {}
        headered, self._headered = self._headered, set()
        answers, self._answers = self._answers, []
        may_publish = self.user.publish if self.user is not None else None
        waiting: dict[str, list[tuple[list[Any], p.Publish, int]]] = {}
        for name, publish in answers:
            entries = waiting.setdefault(name, [])
            entry: list[Any] = [False, b""]
            self._answer_queue.append(entry)
            entries.append((entry, publish, len(entries)))
        for name, payloads in batch.items():
            appended = self.broker.append(
                name, payloads, may_publish, self.peer, True, name in headered
            )
            answering = waiting.get(name)
            refusal = appended.refusal
            if refusal is not None:
                if refusal.startswith(ERR_PERMISSION_DENIED):
                    log.warn("{peer}: {refusal}", peer=self.peer, refusal=refusal)
                if answering:
                    self._answered(refusal, answering)
                continue
            first = appended.first
            committed = appended.committed
            if not isinstance(first, Deferred) and committed is None:
                if answering:
                    self._answered(first, answering)
                continue
            ready: Deferred[Any] = first if isinstance(first, Deferred) else succeed(first)
            if committed is not None:
                ready.addCallback(_once_committed, committed)
            if answering:
                ready.addBoth(self._answered, answering)
            else:
                ready.addErrback(lambda _: None)
        if answers:
            self._write_answers()

    def _answered(self, outcome: Any, entries: list[tuple[list[Any], p.Publish, int]]) -> None:
        """Fill the answers of a topic's publishes from what the store said:
        a first offset, each one's offset or refusal, or one refusal."""
        version = self.level
        for entry, publish, index in entries:
            one = outcome[index] if isinstance(outcome, list) else outcome
            kind = p.PUBACK if publish.qos == 1 else p.PUBREC
            reason = p.SUCCESS
            if isinstance(one, Failure | str):
                text = one.getErrorMessage() if isinstance(one, Failure) else one
                denied = text.startswith(ERR_PERMISSION_DENIED)
                reason = p.NOT_AUTHORIZED if denied else p.UNSPECIFIED_ERROR
                if version != p.MQTT_5:
                    reason = p.SUCCESS  # (3.1.1: a positive answer, or closing)
                    if not denied:
                        self._fail(p.UNSPECIFIED_ERROR, f"not stored: {text}")
            elif kind == p.PUBREC:
                self._door.awaiting_release(self.client_id).add(publish.packet_id)
            entry[0] = True
            entry[1] = p.encode_acknowledgement(version, kind, publish.packet_id, reason)
        self._write_answers()

    def _write_answers(self) -> None:
        queue = self._answer_queue
        ready = 0
        while ready < len(queue) and queue[ready][0]:
            ready += 1
        if ready:
            self._write(b"".join(entry[1] for entry in queue[:ready]))
            del queue[:ready]

    # Acknowledgements from the client.

    def _acknowledged(self, ack: p.Acknowledgement) -> None:
        kind = ack.kind
        if kind == p.PUBREL:
            released = self._door.awaiting_release(self.client_id)
            known = ack.packet_id in released
            released.discard(ack.packet_id)
            reason = p.SUCCESS if known else p.PACKET_IDENTIFIER_NOT_FOUND
            self._write(p.encode_acknowledgement(self.level, p.PUBCOMP, ack.packet_id, reason))
            return
        if kind == p.PUBCOMP:
            self._released.discard(ack.packet_id)
            return
        delivery_id = self._out_packets.pop(ack.packet_id, None)
        if delivery_id is None:
            return  # late, or never ours
        if delivery_id >= 0:
            self._out_ids.pop(delivery_id, None)
            self._acks.append(delivery_id)
        if kind == p.PUBREC and ack.reason < 0x80:
            self._released.add(ack.packet_id)
            self._write(p.encode_acknowledgement(self.level, p.PUBREL, ack.packet_id))

    # Subscribing.

    def _subscribe(self, subscribe: p.Subscribe) -> None:
        answered = self._subscribe_all(subscribe.subscriptions, save=True)
        answered.addCallback(
            lambda reasons: self._write(p.encode_suback(self.level, subscribe.packet_id, reasons))
        )
        answered.addErrback(
            lambda failure: log.failure("{peer}: MQTT SUBSCRIBE broke", failure, peer=self.peer)
        )

    def _subscribe_all(
        self, subscriptions: list[p.Subscription], save: bool, resumed: bool = False
    ) -> Deferred[list[int]]:
        """Subscribe each; the reason code of each. A session resumed
        (`resumed`) gets no retained messages: its subscriptions existed."""
        consumer = self._ensure_consumer()
        reasons: list[Deferred[int]] = []
        for subscription in subscriptions:
            reasons.append(self._subscribe_one(consumer, subscription, resumed))
        done = gatherResults(reasons, consumeErrors=True)
        if save and self._session is not None:
            session = self._session

            def saved(codes: list[int]) -> list[int]:
                save_session(self.broker, self.client_id, session)
                return codes

            done.addCallback(saved)
        return done

    def _subscribe_one(
        self, consumer: Consumer, subscription: p.Subscription, resumed: bool
    ) -> Deferred[int]:
        topic_filter = subscription.filter
        try:
            plain = to_broker_filters(topic_filter)
        except InvalidTopic as error:
            log.warn("{peer}: MQTT subscribe refused: {error}", peer=self.peer, error=error)
            return succeed(p.TOPIC_FILTER_INVALID if self.level == p.MQTT_5 else 0x80)
        shared = topic_filter.startswith(GROUP_PREFIX)
        user = self.user
        if len(plain) > 1 and user is not None and not user.subscribe.permits(plain[0]):
            plain = plain[1:]  # `a/#` for a user who may read `a.>` but not `a` itself
        names = plain
        if self._session is not None and not shared:
            names = [f"{DURABLE_PREFIX}{self._session.durable}/{name}" for name in plain]
        qos = min(subscription.qos, 2)
        existing = self._subscribed.pop(topic_filter, None)
        if existing is not None:
            consumer.unsubscribe(existing.names)
        new = existing is None
        # Known before the subscribe, which may deliver at once (a durable
        # consumer's backlog).
        self._subscribed[topic_filter] = _Subscribed(qos, names, starts_wild(topic_filter))
        self._qos_of.clear()
        # A resumed session's durable consumers go on from their positions;
        # a topic made while it was away has none, and is read from its start.
        start = StartAt.BEGINNING if resumed else StartAt.CURRENT
        try:
            opening = consumer.subscribe(names, start, 0, lambda: None)
        except SubscribeRefused as refused:
            del self._subscribed[topic_filter]
            log.warn(
                "{peer}: MQTT subscribe refused: {reason}",
                peer=self.peer,
                reason=refused.detail or refused.reason,
            )
            if self.level != p.MQTT_5:
                return succeed(0x80)
            denied = refused.reason.startswith(ERR_PERMISSION_DENIED)
            return succeed(p.NOT_AUTHORIZED if denied else p.UNSPECIFIED_ERROR)
        if self._session is not None:
            self._session.filters[topic_filter] = qos
        ready: Deferred[Any] = opening if opening is not None else succeed(None)
        send_retained = (
            not shared
            and not resumed
            and (subscription.retain_handling == 0 or (subscription.retain_handling == 1 and new))
        )
        if send_retained:
            ready.addCallback(lambda _: self._send_retained(plain, topic_filter, qos))
        return ready.addCallback(lambda _: qos)

    def _send_retained(self, names: list[str], topic_filter: str, qos: int) -> Deferred[None]:
        def send(found: list[tuple[str, bytes]]) -> None:
            wild = starts_wild(topic_filter)
            for name, payload in found:
                if wild and name.startswith("$"):
                    continue
                self._send_publish(name, payload, min(qos, 1), True, False, -1)
            self.flush()

        return retained_matching(self.broker, names).addCallback(send)

    def _unsubscribe(self, unsubscribe: p.Unsubscribe) -> None:
        reasons = []
        for topic_filter in unsubscribe.filters:
            existing = self._subscribed.pop(topic_filter, None)
            if existing is None:
                reasons.append(p.NO_SUBSCRIPTION_EXISTED)
                continue
            if self.consumer is not None:
                self.consumer.unsubscribe(existing.names)
            if self._session is not None:
                self._session.filters.pop(topic_filter, None)
            reasons.append(p.SUCCESS)
        self._qos_of.clear()
        if self._session is not None:
            save_session(self.broker, self.client_id, self._session)
        self._write(p.encode_unsuback(self.level, unsubscribe.packet_id, reasons))

    def _ensure_consumer(self) -> Consumer:
        if self.consumer is None:
            settings = self.broker.settings
            capacity = max(1, min(self._receive_maximum, settings.max_prefetch))
            self.consumer = Consumer(
                self.broker,
                self,
                self.peer,
                self._deliver,
                capacity,
                user=self.user,
                patterns=True,
                groups=True,
            )
        return self.consumer

    # Deliveries.

    def _deliver(self, delivery: Delivery) -> None:
        name = delivery.subscription.topic.name
        qos = self._qos_of.get(name)
        if qos is None:
            qos = self._qos_for(name)
        if qos < 0:  # a `$` topic only a wildcard matched: not for MQTT
            self._acked_on_write.append(delivery.id)
            return
        packet_id = self._out_ids.get(delivery.id, -1)
        self._send_publish(
            name, delivery.payload, qos, False, delivery.attempts > 1, delivery.id, packet_id
        )

    def _qos_for(self, name: str) -> int:
        """The QoS deliveries of topic `name` go at: the highest of the
        filters that match it; -1 for a `$` topic only a wildcard matched
        (MQTT 4.7.2: not for this client)."""
        best = -1
        excluded = False
        for subscribed in self._subscribed.values():
            if name.startswith("$") and subscribed.wild_first:
                excluded = True
                continue
            for pattern in subscribed.patterns:
                if pattern == name or matches(pattern, name):
                    best = max(best, subscribed.qos)
        if best < 0 and not excluded:
            best = 0  # (a filter just unsubscribed: what was in flight goes as QoS 0)
        if len(self._qos_of) >= 4096:
            self._qos_of.clear()
        self._qos_of[name] = best
        return best

    def _send_publish(
        self,
        name: str,
        payload: bytes,
        qos: int,
        retained: bool,
        dup: bool,
        delivery_id: int,
        packet_id: int = -1,
    ) -> None:
        properties = None
        if self.level == p.MQTT_5 and type(payload) is Headered:
            shown = without_message_id(payload.headers)
            if shown:
                properties = properties_of(Headers.of_block(shown), self.broker.clock.seconds())
        if qos and packet_id < 0:
            packet_id = self._next_packet_id()
            if packet_id < 0:
                qos = 0  # (65,535 unanswered: no id left; as QoS 0)
        topic = self._topic_fields.get(name)
        if topic is None:
            topic = p.encode_topic(to_mqtt_topic(name))
            if len(self._topic_fields) >= 1024:
                self._topic_fields.clear()
            self._topic_fields[name] = topic
        header = p.publish_header(
            self.level,
            topic,
            qos,
            retained,
            dup,
            packet_id,
            properties,
            len(payload),
        )
        if len(header) + len(payload) > self._client_max_packet:
            log.warn(
                "{peer}: a message of {topic!r} is over the client's maximum packet size",
                peer=self.peer,
                topic=name,
            )
            if delivery_id >= 0:
                self._acked_on_write.append(delivery_id)
            return
        if qos:
            self._out_packets[packet_id] = delivery_id
            if delivery_id >= 0:
                self._out_ids[delivery_id] = packet_id
        elif delivery_id >= 0:
            self._acked_on_write.append(delivery_id)
        self._outgoing += (header, payload)
        self.delivered_messages += 1
        self.delivered_bytes += len(payload)

    def _next_packet_id(self) -> int:
        taken = self._out_packets
        if len(taken) + len(self._released) >= 65535:
            return -1
        while True:
            packet_id = next(self._packet_ids)
            if packet_id not in taken and packet_id not in self._released:
                return packet_id

    # ConsumerOutput.

    def flush(self) -> None:
        if self._outgoing:
            outgoing, self._outgoing = self._outgoing, []
            self._write(b"".join(outgoing))
        if self._acked_on_write and self.consumer is not None:
            acked, self._acked_on_write = self._acked_on_write, []
            self.consumer.ack_ids(acked)
            if self._pump_soon is None or not self._pump_soon.active():
                # (Not now: this runs at the end of the window's pump.)
                self._pump_soon = self.broker.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        if self.consumer is not None and self._state not in _ENDED:
            self.consumer.pump()

    def notify(self, error: str) -> None:
        log.warn("{peer}: {error}", peer=self.peer, error=error)

    def log_refusal(self, reason: str) -> None:
        log.warn("{peer}: {reason}", peer=self.peer, reason=reason)

    def abort(self) -> None:
        self.transport.abortConnection()

    def output_full(self) -> None:
        self._pause_reading("output")
        if self.consumer is not None:
            self.consumer.output_full()

    def output_drained(self) -> None:
        self._resume_reading("output")
        if self.consumer is not None:
            self.consumer.output_drained()

    def _pause_reading(self, reason: str) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self._state != "connecting":
                self.transport.resumeProducing()

    # Ending.

    def _disconnected(self, disconnect: p.Disconnect) -> None:
        self._clean_end = disconnect.reason != p.DISCONNECT_WITH_WILL
        if self._session is not None and p.SESSION_EXPIRY_INTERVAL in disconnect.properties:
            expiry = disconnect.properties[p.SESSION_EXPIRY_INTERVAL]
            self._session.expiry = None if expiry == 0xFFFFFFFF else expiry
        self._close()

    def _session_ended(self) -> None:
        session = self._session
        if session is None:
            self._door.forget_client(self.client_id)
            return
        if session.expiry == 0:
            forget_session(self.broker, self.client_id)
            self._door.forget_client(self.client_id)
            return
        session.ended_at = self.broker.clock.seconds()
        save_session(self.broker, self.client_id, session)

    def _will_delay(self) -> float:
        if self._will is None:
            return 0.0
        delay = float(self._will.properties.get(p.WILL_DELAY_INTERVAL, 0))
        if self._session is not None and self._session.expiry is not None:
            delay = min(delay, float(self._session.expiry))
        return delay

    def users_reloaded(self, users: Users) -> None:
        """The users file was re-read: keep to what it grants now (a user
        removed is disconnected; rights withdrawn end subscriptions)."""
        user = self.user
        if user is None or self._state in _ENDED:
            return
        fresh = users.anonymous if user.name == ANONYMOUS else users.by_name.get(user.name)
        if fresh is None:
            log.warn(
                "{peer}: MQTT user {user} was removed; closing", peer=self.peer, user=user.name
            )
            self._fail(p.NOT_AUTHORIZED, "the user was removed")
            return
        self.user = fresh
        if self.consumer is not None:
            self.consumer.permissions_changed(fresh)

    def take_over_by(self) -> None:
        """Another connection of this client identifier came: give way."""
        self._clean_end = False
        if self.level == p.MQTT_5:
            self._write(p.encode_disconnect(p.SESSION_TAKEN_OVER))
        self._close()

    def shutting_down(self, grace: float) -> None:
        """The broker stops: say so (MQTT 5) and close (cut off after `grace`)."""
        if self._state == "connected" and self.level == p.MQTT_5:
            self._write(p.encode_disconnect(p.SERVER_SHUTTING_DOWN))
        self._clean_end = True  # (no will: the client did nothing wrong)
        self._close(grace)

    def _fail(self, reason: int, text: str) -> None:
        """A protocol error: say why (MQTT 5, once connected), then close."""
        log.warn("{peer}: MQTT: {text}", peer=self.peer, text=text)
        if self.level == p.MQTT_5 and self._state == "connected":
            self._write(p.encode_disconnect(reason, text[:200]))
        elif self._state in ("new", "connecting") and reason == p.UNSUPPORTED_PROTOCOL_VERSION:
            self._write(p.encode_connack(p.MQTT_311, False, p.V3_UNACCEPTABLE_PROTOCOL_VERSION))
        self._close()

    def _close(self, grace: float | None = None) -> None:
        """Close once what is written has gone; cut off after `grace`
        seconds (the broker's close grace) a peer that reads nothing."""
        if self._state in _ENDED:
            return
        self._state = "closing" if self._state == "connected" else "closed"
        if self.consumer is not None:
            # Nothing more goes out; what is in flight goes back to its
            # topics and groups now (a session taken over resumes in order).
            self.consumer.close()
            self.consumer = None
        self.transport.loseConnection()
        self.broker.clock.callLater(
            self.broker.settings.close_grace if grace is None else grace,
            self.transport.abortConnection,
        )

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    # Incomplete packets: the broker-wide input budget and --frame-timeout,
    # as on the broker's own port (broker.core.input_budget).

    def _track_partial_packet(self) -> None:
        broker = self.broker
        held = self.decoder.buffered
        if held != self._held_input:
            self._held_input = held
            broker.input_budget.update(self, held, self.decoder.missing)
        if not held:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = broker.clock.seconds()
            if self._packet_timer is None or not self._packet_timer.active():
                self._packet_timer = broker.clock.callLater(
                    broker.settings.frame_timeout, self._packet_timer_fired
                )

    def _packet_timer_fired(self) -> None:
        self._packet_timer = None
        since = self._partial_since
        if since is None or self._state in _ENDED:
            return
        clock = self.broker.clock
        timeout = self.broker.settings.frame_timeout
        left = since + timeout - clock.seconds()
        if left > 1e-6:
            self._packet_timer = clock.callLater(left, self._packet_timer_fired)
            return
        self._fail(
            p.UNSPECIFIED_ERROR,
            f"a packet stayed incomplete for {timeout:g} s ({self._held_input} bytes held)",
        )

    def pause_input(self) -> None:
        """The broker-wide budget for incomplete packets is spent."""
        self._pause_reading("input")

    def resume_input(self) -> None:
        self._resume_reading("input")

    # Timers.

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == "new":
            log.warn("{peer}: no MQTT CONNECT in time", peer=self.peer)
            self._close()

    def _start_keep_alive(self) -> None:
        if self._keep_alive:
            self._timer = self.broker.clock.callLater(self._keep_alive * 1.5, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self._timer = None
        if self._state != "connected":
            return
        limit = self._keep_alive * 1.5
        quiet = self.broker.clock.seconds() - self._last_heard
        if quiet >= limit:
            log.warn(
                "{peer}: MQTT client {client!r} silent past its keep-alive",
                peer=self.peer,
                client=self.client_id,
            )
            self._fail(p.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
            return
        self._timer = self.broker.clock.callLater(limit - quiet, self._keep_alive_due)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _once_committed(outcome: Any, committed: Deferred[None]) -> Deferred[Any]:
    """`outcome`, once `committed` fires (the batch is as safe as the store makes it)."""
    return committed.addCallback(lambda _: outcome)
