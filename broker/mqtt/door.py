"""The MQTT front door's factory: one `MQTTConnection` per TCP (or TLS, or
WebSocket) connection, all over one core.Broker; and what belongs to a
client identifier rather than to one connection: which connection holds
it now (a second one takes over), its QoS 2 publishes awaiting PUBREL, and
its will while the will's delay runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

import broker.mqtt.packets as p
from broker.core import Broker
from broker.mqtt.connection import MQTTConnection
from broker.mqtt.properties import UnfitProperties, headers_of
from broker.mqtt.state import keep_compacted, retain
from broker.mqtt.topics import InvalidTopic, to_broker_topic
from broker.wire.headers import with_headers

if TYPE_CHECKING:
    from broker.security.permissions import Rules
    from broker.security.users import Users

log = Logger()

HEADER_ROOM = 65_536 + 1_024
"""Bytes a PUBLISH packet may hold besides its payload and properties: its
topic (up to 64 KiB) and fixed fields."""


class MQTTDoor(ServerFactory):
    """Builds an MQTTConnection per connection (see the module)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        settings = broker.settings
        self.max_packet_size = settings.max_message_size + settings.max_header_bytes + HEADER_ROOM
        """The largest packet a client may send (told in CONNACK, MQTT 5)."""
        self.connections: set[MQTTConnection] = set()
        self._clients: dict[str, MQTTConnection] = {}
        self._awaiting: dict[str, set[int]] = {}
        self._wills: dict[str, IDelayedCall] = {}
        self._when_empty: list[Deferred[None]] = []
        keep_compacted(broker)

    def buildProtocol(self, addr: IAddress | None) -> MQTTConnection:
        connection = MQTTConnection(self)
        connection.factory = self
        return connection

    def connection_made(self, connection: MQTTConnection) -> None:
        self.connections.add(connection)

    def connection_gone(self, connection: MQTTConnection) -> None:
        self.connections.discard(connection)
        if self._clients.get(connection.client_id) is connection:
            del self._clients[connection.client_id]
        if not self.connections and self._when_empty:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    # A client identifier's state.

    def take_over(self, connection: MQTTConnection) -> None:
        """`connection` holds its client identifier now: an older connection
        of it is closed (MQTT 3.1.4-3), a will it left waiting is dropped."""
        client_id = connection.client_id
        older = self._clients.get(client_id)
        self._clients[client_id] = connection
        if older is not None and older is not connection:
            log.warn(
                "MQTT client {client!r} connected again: the older connection gives way",
                client=client_id,
            )
            older.take_over_by()
        will = self._wills.pop(client_id, None)
        if will is not None and will.active():
            will.cancel()

    def awaiting_release(self, client_id: str) -> set[int]:
        """Packet ids of the client's QoS 2 publishes stored and awaiting PUBREL."""
        awaiting = self._awaiting.get(client_id)
        if awaiting is None:
            awaiting = self._awaiting[client_id] = set()
        return awaiting

    def forget_client(self, client_id: str) -> None:
        """The client's session ended: forget what was kept for it."""
        self._awaiting.pop(client_id, None)

    # Wills.

    def will_on_loss(
        self, client_id: str, will: p.Will, delay: float, may_publish: Rules | None
    ) -> None:
        """A connection with a will ended without DISCONNECT: publish the
        will, after its delay (MQTT 5) unless the client comes back first."""
        if delay <= 0:
            self._publish_will(client_id, will, may_publish)
            return
        if client_id in self._clients:
            return  # taken over already: the session goes on
        self._wills[client_id] = self.broker.clock.callLater(
            delay, self._will_due, client_id, will, may_publish
        )

    def _will_due(self, client_id: str, will: p.Will, may_publish: Rules | None) -> None:
        self._wills.pop(client_id, None)
        self._publish_will(client_id, will, may_publish)

    def _publish_will(self, client_id: str, will: p.Will, may_publish: Rules | None) -> None:
        try:
            name = to_broker_topic(will.topic)
            block = headers_of(will.properties, self.broker.clock.seconds())
        except (InvalidTopic, UnfitProperties) as error:
            log.warn(
                "the will of MQTT client {client!r} is not published: {error}",
                client=client_id,
                error=error,
            )
            return
        payload = with_headers(will.payload, block) if block else will.payload
        if will.retain and (may_publish is None or may_publish.permits(name)):
            retain(self.broker, name, payload)
            if not payload:
                return
        appended = self.broker.append(
            name,
            [payload],
            may_publish,
            f"the will of MQTT client {client_id!r}",
            False,
            bool(block),
        )
        if appended.refusal is not None:
            log.warn(
                "the will of MQTT client {client!r} was refused: {refusal}",
                client=client_id,
                refusal=appended.refusal,
            )

    def reload_users(self, users: Users) -> None:
        """Connected MQTT clients keep to what a re-read users file grants
        (the authenticator has it already: the TCP door set it)."""
        for connection in list(self.connections):
            connection.users_reloaded(users)

    # Stopping.

    def close_connections(self, grace: float = 1.0) -> Deferred[None]:
        """Tell every client the server is going (MQTT 5) and close; fires
        once all are gone."""
        for will in self._wills.values():
            if will.active():
                will.cancel()
        self._wills.clear()
        if not self.connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._when_empty.append(done)
        for connection in list(self.connections):
            connection.shutting_down(grace)
        return done
