"""MQTT 3.1.1 and 5.0 packets, sans-I/O: an incremental decoder that turns
bytes into packets, and encoders for what a server sends.

Every packet is a fixed header (a byte of type and flags, then the
remaining length as a variable byte integer of at most four bytes) and a
body. The decoder checks each as it is cut: a remaining length over the
limit is refused before its bytes arrive (so memory stays bounded by the
limit), and a body that does not parse, bad UTF-8, wrong flags or a packet
a server never receives are `MalformedPacket` or `ProtocolViolation` with
the MQTT 5 reason code a server answers with.

MQTT 5 packets carry properties (`Properties`: a dict of identifier to
value, user properties as a list of pairs); 3.1.1 packets have none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# Packet types.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

MQTT_311, MQTT_5 = 4, 5
"""Protocol levels (CONNECT's "protocol version")."""

MAX_REMAINING_LENGTH = 268_435_455
_TOPICS_KEPT = 256
"""What four bytes of variable byte integer can say."""

# MQTT 5 reason codes this server uses.
SUCCESS = 0x00
GRANTED_QOS_1, GRANTED_QOS_2 = 0x01, 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_SHUTTING_DOWN = 0x8B
ADMINISTRATIVE_ACTION = 0x98
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_IDENTIFIER_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99

# MQTT 3.1.1 CONNACK return codes.
V3_ACCEPTED = 0
V3_UNACCEPTABLE_PROTOCOL_VERSION = 1
V3_IDENTIFIER_REJECTED = 2
V3_SERVER_UNAVAILABLE = 3
V3_BAD_USER_NAME_OR_PASSWORD = 4
V3_NOT_AUTHORIZED = 5

# Property identifiers (MQTT 5.0, 2.2.2.2).
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    PAYLOAD_FORMAT_INDICATOR: _BYTE,
    MESSAGE_EXPIRY_INTERVAL: _U32,
    CONTENT_TYPE: _STRING,
    RESPONSE_TOPIC: _STRING,
    CORRELATION_DATA: _BINARY,
    SUBSCRIPTION_IDENTIFIER: _VARINT,
    SESSION_EXPIRY_INTERVAL: _U32,
    ASSIGNED_CLIENT_IDENTIFIER: _STRING,
    SERVER_KEEP_ALIVE: _U16,
    AUTHENTICATION_METHOD: _STRING,
    AUTHENTICATION_DATA: _BINARY,
    REQUEST_PROBLEM_INFORMATION: _BYTE,
    WILL_DELAY_INTERVAL: _U32,
    REQUEST_RESPONSE_INFORMATION: _BYTE,
    RESPONSE_INFORMATION: _STRING,
    SERVER_REFERENCE: _STRING,
    REASON_STRING: _STRING,
    RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16,
    TOPIC_ALIAS: _U16,
    MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _U32,
    WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}

Properties = dict[int, Any]
"""Property identifier -> value; USER_PROPERTY -> a list of (name, value),
SUBSCRIPTION_IDENTIFIER -> a list of ints (both may repeat)."""

_S_U16 = struct.Struct(">H")
_S_U32 = struct.Struct(">I")


class MalformedPacket(ValueError):
    """Bytes that are not an MQTT packet: the connection is closed (MQTT 5:
    after a DISCONNECT with `reason`)."""

    def __init__(self, text: str, reason: int = MALFORMED_PACKET) -> None:
        super().__init__(text)
        self.reason = reason


class ProtocolViolation(MalformedPacket):
    """A well-formed packet the protocol forbids here."""

    def __init__(self, text: str, reason: int = PROTOCOL_ERROR) -> None:
        super().__init__(text, reason)


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(default_factory=dict)


@dataclass
class Connect:
    level: int
    client_id: str
    clean_start: bool
    keep_alive: int
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: Properties | None = None


@dataclass
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass
class Subscribe:
    packet_id: int
    subscriptions: list[Subscription]
    properties: Properties = field(default_factory=dict)


@dataclass
class Unsubscribe:
    packet_id: int
    filters: list[str]
    properties: Properties = field(default_factory=dict)


@dataclass
class Acknowledgement:
    """PUBACK, PUBREC, PUBREL or PUBCOMP from a client."""

    kind: int
    packet_id: int
    reason: int = SUCCESS


@dataclass
class Disconnect:
    reason: int = SUCCESS
    properties: Properties = field(default_factory=dict)


@dataclass
class PingRequest:
    pass


Packet = Connect | Publish | Subscribe | Unsubscribe | Acknowledgement | Disconnect | PingRequest


class _Reader:
    """A cursor over one packet's body; every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def left(self) -> int:
        return self.end - self.pos

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedPacket("packet ends too soon")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise MalformedPacket("packet ends too soon")
        (value,) = _S_U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        if self.pos + 4 > self.end:
            raise MalformedPacket("packet ends too soon")
        (value,) = _S_U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def varint(self) -> int:
        value, self.pos = read_varint(self.data, self.pos, self.end)
        if value < 0:
            raise MalformedPacket("packet ends too soon")
        return value

    def binary(self) -> bytes:
        length = self.u16()
        if self.pos + length > self.end:
            raise MalformedPacket("packet ends too soon")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return bytes(value)

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string is not valid UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("a string holds U+0000")
        return text

    def rest(self) -> bytes:
        value = bytes(self.data[self.pos : self.end])
        self.pos = self.end
        return value

    def properties(self) -> Properties:
        length = self.varint()
        end = self.pos + length
        if end > self.end:
            raise MalformedPacket("properties run past the packet")
        found: Properties = {}
        while self.pos < end:
            identifier = self.varint()
            kind = _PROPERTY_TYPES.get(identifier)
            if kind is None:
                raise MalformedPacket(f"unknown property {identifier:#x}")
            value: Any
            if kind == _BYTE:
                value = self.byte()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _STRING:
                value = self.string()
            elif kind == _BINARY:
                value = self.binary()
            else:
                value = (self.string(), self.string())
            if identifier in (USER_PROPERTY, SUBSCRIPTION_IDENTIFIER):
                found.setdefault(identifier, []).append(value)
            elif identifier in found:
                raise ProtocolViolation(f"property {identifier:#x} given twice")
            else:
                found[identifier] = value
        if self.pos != end:
            raise MalformedPacket("a property runs past the properties")
        return found


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of a variable byte integer at `pos`; value
    -1 if the bytes end before it does. MalformedPacket past four bytes."""
    value = 0
    shift = 0
    for count in range(4):
        if pos >= end:
            return -1, pos
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if count and byte == 0:
                raise MalformedPacket("a variable byte integer is not in its shortest form")
            return value, pos
        shift += 7
    raise MalformedPacket("a variable byte integer longer than four bytes")


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class PacketDecoder:
    """Cuts packets out of a byte stream and parses them. `level` is the
    protocol level once CONNECT said it (before that only CONNECT may
    come); `max_packet_size` bounds a packet's whole size, checked from its
    fixed header before its body is held."""

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = max_packet_size
        self.level = 0
        self._buffer = b""
        self._topics: dict[bytes, str] = {}
        """Topic names read lately (checked), by their bytes."""
        self.missing = 0
        """Bytes the packet begun still misses (0 if not known yet)."""

    @property
    def buffered(self) -> int:
        """Bytes of a packet begun and not yet whole."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """The whole packets `data` completes, in order. MalformedPacket (or
        ProtocolViolation) at the first that is not one: nothing after it
        can be trusted."""
        buffer = self._buffer + data if self._buffer else data
        packets: list[Packet] = []
        self.missing = 0
        pos = 0
        end = len(buffer)
        while pos < end:
            if pos + 2 > end:
                break
            first = buffer[pos]
            if not self.level and first >> 4 != CONNECT:
                raise ProtocolViolation("the first packet must be CONNECT")
            length, body = read_varint(buffer, pos + 1, end)
            if length < 0:
                break
            size = body - pos + length
            if size > self.max_packet_size:
                raise MalformedPacket(
                    f"a packet of {size} bytes is over the limit of {self.max_packet_size}",
                    PACKET_TOO_LARGE,
                )
            stop = body + length
            if stop > end:
                self.missing = stop - end
                break
            if first >> 4 == PUBLISH and self.level and length >= 2:
                publish = self._publish(first, buffer, body, stop)
                if publish is not None:
                    packets.append(publish)
                    pos = stop
                    continue
            packets.append(self._parse(first >> 4, first & 0x0F, buffer, body, stop))
            pos = stop
        self._buffer = buffer[pos:] if pos < end else b""
        return packets

    def _publish(self, first: int, data: bytes, pos: int, end: int) -> Publish | None:
        """A PUBLISH cut quickly (most packets are): its topic known from
        one seen lately, no properties or none; None for any other case,
        which `_parse` reads in full (and refuses if it must)."""
        qos = (first >> 1) & 0x03
        if qos == 3 or (first & 0x08 and not qos):
            return None
        topic_end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if topic_end > end:
            return None
        topic = self._topics.get(data[pos + 2 : topic_end])
        if topic is None:
            return None
        pos = topic_end
        packet_id = 0
        if qos:
            if pos + 2 > end:
                return None
            packet_id = (data[pos] << 8) | data[pos + 1]
            if not packet_id:
                return None
            pos += 2
        if self.level == MQTT_5:
            if pos >= end or data[pos]:
                return None  # properties: read in full
            pos += 1
        if pos > end:
            return None
        return Publish(topic, data[pos:end], qos, bool(first & 0x01), bool(first & 0x08), packet_id)

    def _parse(self, kind: int, flags: int, data: bytes, pos: int, end: int) -> Packet:
        reader = _Reader(data, pos, end)
        if not self.level:
            if kind != CONNECT:
                raise ProtocolViolation("the first packet must be CONNECT")
            if flags:
                raise MalformedPacket("CONNECT with flags")
            connect = _parse_connect(reader)
            self.level = connect.level
            return connect
        v5 = self.level == MQTT_5
        if kind == PUBLISH:
            publish = _parse_publish(reader, flags, v5)
            topics = self._topics
            if len(topics) >= _TOPICS_KEPT:
                topics.clear()
            topics[publish.topic.encode("utf-8")] = publish.topic
            return publish
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            if flags != (0x02 if kind == PUBREL else 0):
                raise MalformedPacket(f"packet type {kind} with flags {flags:#x}")
            packet_id = reader.u16()
            reason = SUCCESS
            if v5 and reader.left():
                reason = reader.byte()
                if reader.left():
                    reader.properties()
            if reader.left():
                raise MalformedPacket("bytes after an acknowledgement")
            return Acknowledgement(kind, packet_id, reason)
        if kind == SUBSCRIBE:
            if flags != 0x02:
                raise MalformedPacket("SUBSCRIBE's flags must be 0010")
            return _parse_subscribe(reader, v5)
        if kind == UNSUBSCRIBE:
            if flags != 0x02:
                raise MalformedPacket("UNSUBSCRIBE's flags must be 0010")
            packet_id = reader.u16()
            properties = reader.properties() if v5 else {}
            filters = []
            while reader.left():
                filters.append(reader.string())
            if not filters:
                raise ProtocolViolation("UNSUBSCRIBE names no topic filter")
            return Unsubscribe(packet_id, filters, properties)
        if kind == PINGREQ:
            if flags or reader.left():
                raise MalformedPacket("PINGREQ with flags or a body")
            return PingRequest()
        if kind == DISCONNECT:
            if flags:
                raise MalformedPacket("DISCONNECT with flags")
            if not v5:
                if reader.left():
                    raise MalformedPacket("DISCONNECT with a body")
                return Disconnect()
            reason = reader.byte() if reader.left() else SUCCESS
            properties = reader.properties() if reader.left() else {}
            if reader.left():
                raise MalformedPacket("bytes after DISCONNECT's properties")
            return Disconnect(reason, properties)
        if kind == CONNECT:
            raise ProtocolViolation("a second CONNECT")
        if kind == AUTH and v5:
            raise ProtocolViolation(
                "AUTH: no enhanced authentication here", BAD_AUTHENTICATION_METHOD
            )
        raise MalformedPacket(f"packet type {kind} is not one a server receives")


def _parse_connect(reader: _Reader) -> Connect:
    name = reader.string()
    level = reader.byte()
    if name != "MQTT" or level not in (MQTT_311, MQTT_5):
        raise ProtocolViolation(
            f"protocol {name!r} level {level}: this server speaks MQTT 3.1.1 (4) and 5.0 (5)",
            UNSUPPORTED_PROTOCOL_VERSION,
        )
    flags = reader.byte()
    if flags & 0x01:
        raise MalformedPacket("CONNECT's reserved flag is set")
    keep_alive = reader.u16()
    properties = reader.properties() if level == MQTT_5 else {}
    client_id = reader.string()
    will = None
    will_qos = (flags >> 3) & 0x03
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will_properties = reader.properties() if level == MQTT_5 else {}
        will = Will(reader.string(), reader.binary(), will_qos, bool(flags & 0x20), will_properties)
    elif will_qos or flags & 0x20:
        raise MalformedPacket("will QoS or retain without a will")
    username = reader.string() if flags & 0x80 else None
    if flags & 0x40 and level == MQTT_311 and username is None:
        raise MalformedPacket("a password without a user name")
    password = reader.binary() if flags & 0x40 else None
    if reader.left():
        raise MalformedPacket("bytes after CONNECT's payload")
    return Connect(
        level, client_id, bool(flags & 0x02), keep_alive, username, password, will, properties
    )


def _parse_publish(reader: _Reader, flags: int, v5: bool) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise MalformedPacket("PUBLISH with DUP at QoS 0")
    topic = reader.string()
    packet_id = 0
    if qos:
        packet_id = reader.u16()
        if not packet_id:
            raise MalformedPacket("packet identifier 0")
    properties = reader.properties() if v5 else None
    return Publish(topic, reader.rest(), qos, bool(flags & 0x01), dup, packet_id, properties)


def _parse_subscribe(reader: _Reader, v5: bool) -> Subscribe:
    packet_id = reader.u16()
    if not packet_id:
        raise MalformedPacket("packet identifier 0")
    properties = reader.properties() if v5 else {}
    subscriptions = []
    while reader.left():
        topic_filter = reader.string()
        options = reader.byte()
        qos = options & 0x03
        if qos == 3:
            raise MalformedPacket("a subscription with QoS 3")
        if v5:
            retain_handling = (options >> 4) & 0x03
            if options & 0xC0 or retain_handling == 3:
                raise MalformedPacket("reserved subscription options set")
            subscriptions.append(
                Subscription(
                    topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling
                )
            )
        else:
            if options & 0xFC:
                raise MalformedPacket("reserved subscription options set")
            subscriptions.append(Subscription(topic_filter, qos))
    if not subscriptions:
        raise ProtocolViolation("SUBSCRIBE names no topic filter")
    return Subscribe(packet_id, subscriptions, properties)


# Encoding what a server sends.


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _S_U16.pack(len(raw)) + raw


def _binary(raw: bytes) -> bytes:
    return _S_U16.pack(len(raw)) + raw


def encode_properties(properties: Properties | None) -> bytes:
    """The properties block (its length first) of an MQTT 5 packet."""
    if not properties:
        return b"\x00"
    parts: list[bytes] = []
    for identifier, value in properties.items():
        kind = _PROPERTY_TYPES[identifier]
        values = value if identifier in (USER_PROPERTY, SUBSCRIPTION_IDENTIFIER) else [value]
        for one in values:
            parts.append(encode_varint(identifier))
            if kind == _BYTE:
                parts.append(bytes((one,)))
            elif kind == _U16:
                parts.append(_S_U16.pack(one))
            elif kind == _U32:
                parts.append(_S_U32.pack(one))
            elif kind == _VARINT:
                parts.append(encode_varint(one))
            elif kind == _STRING:
                parts.append(_string(one))
            elif kind == _BINARY:
                parts.append(_binary(one))
            else:
                parts.append(_string(one[0]) + _string(one[1]))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_connack(
    level: int, session_present: bool, reason: int, properties: Properties | None = None
) -> bytes:
    """CONNACK: `reason` is an MQTT 5 reason code, or for 3.1.1 a return code."""
    body = bytes((1 if session_present else 0, reason))
    if level == MQTT_5:
        body += encode_properties(properties)
    return _packet(CONNACK << 4, body)


def encode_topic(topic: str) -> bytes:
    """A topic name as PUBLISH carries it (its length first)."""
    return _string(topic)


def publish_header(
    level: int,
    topic: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    properties: Properties | None,
    payload_size: int,
) -> bytes:
    """A PUBLISH packet up to its payload (the payload follows), for a
    topic encoded by `encode_topic`."""
    variable = topic
    if qos:
        variable += _S_U16.pack(packet_id)
    if level == MQTT_5:
        variable += encode_properties(properties)
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes((first,)) + encode_varint(len(variable) + payload_size) + variable


def encode_acknowledgement(level: int, kind: int, packet_id: int, reason: int = SUCCESS) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (the reason said only by MQTT 5,
    and only when it is not success)."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    body = _S_U16.pack(packet_id)
    if level == MQTT_5 and reason != SUCCESS:
        body += bytes((reason,))
    return _packet(first, body)


def encode_suback(level: int, packet_id: int, reasons: list[int]) -> bytes:
    body = _S_U16.pack(packet_id)
    if level == MQTT_5:
        body += b"\x00"
    return _packet(SUBACK << 4, body + bytes(reasons))


def encode_unsuback(level: int, packet_id: int, reasons: list[int]) -> bytes:
    body = _S_U16.pack(packet_id)
    if level == MQTT_5:
        body += b"\x00" + bytes(reasons)
    return _packet(UNSUBACK << 4, body)


PINGRESP_PACKET = bytes((PINGRESP << 4, 0))


def encode_disconnect(reason: int, text: str | None = None) -> bytes:
    """An MQTT 5 server's DISCONNECT (3.1.1 has none: the server just closes)."""
    properties = {REASON_STRING: text} if text else None
    return _packet(DISCONNECT << 4, bytes((reason,)) + encode_properties(properties))
