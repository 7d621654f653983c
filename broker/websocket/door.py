"""The WebSocket door (`--ws-port`): browsers and other WebSocket clients
reach the broker's own protocol and MQTT over one port, with
Autobahn|Python (the Twisted WebSocket library) doing the WebSocket part.

A connection asks for its protocol by WebSocket subprotocol, as clients
of both do:

- `mqtt` (or `mqttv3.1`): MQTT over WebSocket, as mqtt.js and paho speak
  it: each binary message carries MQTT bytes (MQTT 6.0);
- `twisted-broker`, or none: this broker's protocol, its frames carried in
  binary messages (the JavaScript client, broker-client.js, speaks it).

The bytes go to the same protocol objects the TCP and MQTT ports use, as
a stream: a message may hold part of a frame or many. So every rule of
those doors holds (sign-in, rights, bounded memory, timeouts); Autobahn
adds WebSocket's own: masking, fragments, a bound on a message's size
(the broker's maximum message plus headers, so nothing larger is held),
and an `Origin` allow-list (`--ws-origin`).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
BROKER_SUBPROTOCOL = "twisted-broker"
FRAME_ROOM = 65_536 + 1_024
"""Bytes a message may carry besides one payload and its headers: a topic
and the fixed fields of a frame or packet."""


def with_port(origin: str) -> str:
    """An allowed origin as Autobahn matches it, `scheme://host:port`: the
    scheme's default port added where none is given (a browser's Origin
    header names none for those)."""
    scheme, found, rest = origin.partition("://")
    if not found or ":" in rest.rstrip("/"):
        return origin
    port = {"http": 80, "https": 443}.get(scheme.lower())
    return f"{origin.rstrip('/')}:{port}" if port is not None else origin


class _StreamTransport:
    """What the inner protocol (the broker's, or MQTT's) takes for its
    transport: writes become binary WebSocket messages, and the rest
    (pausing, producers, addresses, certificates) is the TCP or TLS
    connection under the WebSocket."""

    def __init__(self, websocket: _WebSocketConnection) -> None:
        self._websocket = websocket
        self.disconnecting = False
        self.origin = websocket.origin
        """The page the connection came from (its Origin), for the monitor."""

    @property
    def _under(self) -> Any:
        return self._websocket.transport

    def write(self, data: bytes) -> None:
        if data and not self.disconnecting:
            self._websocket.sendMessage(data, isBinary=True)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._websocket.sendClose()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._under.abortConnection()

    def pauseProducing(self) -> None:
        self._under.pauseProducing()

    def resumeProducing(self) -> None:
        self._under.resumeProducing()

    def stopProducing(self) -> None:
        self._under.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._under.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._under.unregisterProducer()

    def getPeer(self) -> IAddress:
        return self._under.getPeer()

    def getHost(self) -> IAddress:
        return self._under.getHost()

    def getPeerCertificate(self) -> Any:
        get = getattr(self._under, "getPeerCertificate", None)
        return get() if get is not None else None


class _WebSocketConnection(WebSocketServerProtocol):
    """One WebSocket connection: the inner protocol its subprotocol names
    is made when the handshake is done, and fed each binary message."""

    factory: WebSocketDoor

    def __init__(self) -> None:
        super().__init__()
        self._inner: Any = None
        self._inner_factory: Factory | None = None
        self.origin: str | None = None
        self.subprotocol: str | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self.origin = request.origin
        door = self.factory
        for offered in request.protocols:
            if offered in MQTT_SUBPROTOCOLS and door.mqtt is not None:
                self._inner_factory = door.mqtt
                self.subprotocol = offered
                return offered
            if offered == BROKER_SUBPROTOCOL:
                self._inner_factory = door.broker
                self.subprotocol = offered
                return offered
        if request.protocols:
            raise ConnectionDeny(
                ConnectionDeny.NOT_ACCEPTABLE,
                f"this broker speaks the WebSocket subprotocols {door.subprotocols()}",
            )
        self._inner_factory = door.broker
        return None

    def onOpen(self) -> None:
        assert self._inner_factory is not None
        assert self.transport is not None
        inner = self._inner_factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self.sendClose()
            return
        self._inner = inner
        inner.makeConnection(_StreamTransport(self))  # type: ignore[arg-type]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            # (As Autobahn's own stream wrapper refuses them: 1003 is a
            # protocol-level code, which sendClose does not take.)
            self._fail_connection(self.CLOSE_STATUS_CODE_UNSUPPORTED_DATA, "binary messages only")
            return
        if self._inner is not None:
            self._inner.dataReceived(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connectionLost(Failure(ConnectionError(f"WebSocket closed ({code})")))


class WebSocketDoor(WebSocketServerFactory):
    """Builds a WebSocket connection per TCP (or TLS) connection, whose
    inner protocol comes from `broker` (this broker's protocol) or `mqtt`
    (the MQTT door, if there is one)."""

    protocol = _WebSocketConnection  # type: ignore[assignment]

    def __init__(
        self,
        broker: Factory,
        mqtt: Factory | None,
        max_message_bytes: int,
        origins: list[str] | None = None,
    ) -> None:
        super().__init__(protocols=None)
        self.broker = broker
        self.mqtt = mqtt
        limit = max_message_bytes + FRAME_ROOM
        options: dict[str, Any] = {
            "maxFramePayloadSize": limit,
            "maxMessagePayloadSize": limit,
            "failByDrop": False,
            "openHandshakeTimeout": 10,
            "closeHandshakeTimeout": 2,
        }
        if origins:
            options["allowedOrigins"] = [with_port(origin) for origin in origins]
        self.setProtocolOptions(**options)

    def subprotocols(self) -> list[str]:
        offered = [BROKER_SUBPROTOCOL]
        if self.mqtt is not None:
            offered += MQTT_SUBPROTOCOLS
        return offered
