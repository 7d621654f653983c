"""The MQTT codec alone: what clients send, cut and parsed at any split,
and whatever else is refused as malformed, never buffered past the limit."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import broker.mqtt.packets as p

LIMIT = 4096


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + p.encode_varint(len(body)) + body


def connect_packet(
    level: int = p.MQTT_311,
    client_id: str = "c1",
    clean: bool = True,
    keep_alive: int = 30,
    user: str | None = None,
    password: bytes | None = None,
    properties: p.Properties | None = None,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0)
    flags |= 0x40 if password is not None else 0
    body = _string("MQTT") + bytes((level, flags)) + struct.pack(">H", keep_alive)
    if level == p.MQTT_5:
        body += p.encode_properties(properties)
    body += _string(client_id)
    if user is not None:
        body += _string(user)
    if password is not None:
        body += struct.pack(">H", len(password)) + password
    return _packet(p.CONNECT << 4, body)


def publish_packet(
    level: int,
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 1,
    retain: bool = False,
    properties: p.Properties | None = None,
) -> bytes:
    return (
        p.publish_header(
            level, p.encode_topic(topic), qos, retain, False, packet_id, properties, len(payload)
        )
        + payload
    )


def subscribe_packet(level: int, packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", packet_id) + (b"\x00" if level == p.MQTT_5 else b"")
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes((qos,))
    return _packet((p.SUBSCRIBE << 4) | 0x02, body)


def connected(level: int = p.MQTT_311) -> p.PacketDecoder:
    decoder = p.PacketDecoder(LIMIT)
    (connect,) = decoder.feed(connect_packet(level))
    assert isinstance(connect, p.Connect) and connect.level == level
    return decoder


@pytest.mark.parametrize("level", [p.MQTT_311, p.MQTT_5])
def test_connect_says_who_and_how(level):
    properties = {p.SESSION_EXPIRY_INTERVAL: 60, p.RECEIVE_MAXIMUM: 10} if level == 5 else None
    packet = connect_packet(
        level,
        "dev-7",
        clean=False,
        keep_alive=15,
        user="ann",
        password=b"secret",
        properties=properties,
    )
    (connect,) = p.PacketDecoder(LIMIT).feed(packet)
    assert (connect.client_id, connect.clean_start, connect.keep_alive) == ("dev-7", False, 15)
    assert (connect.username, connect.password) == ("ann", b"secret")
    assert connect.properties == (properties or {})


@given(
    st.sampled_from([p.MQTT_311, p.MQTT_5]),
    st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_characters="\x00+#", blacklist_categories=("Cs",)),
                min_size=1,
                max_size=20,
            ),
            st.binary(max_size=100),
            st.integers(0, 2),
        ),
        max_size=10,
    ),
    st.data(),
)
def test_publishes_come_out_as_sent_however_the_bytes_are_split(level, messages, data):
    properties = (
        {p.USER_PROPERTY: [("k", "v")], p.CONTENT_TYPE: "text/plain"} if level == 5 else None
    )
    stream = b"".join(
        publish_packet(level, topic, payload, qos, index + 1, properties=properties)
        for index, (topic, payload, qos) in enumerate(messages)
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    decoder = connected(level)
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert [(m.topic, m.payload, m.qos) for m in got] == messages
    assert all(m.properties == properties for m in got)
    assert decoder.buffered == 0


def test_a_subscribe_lists_its_filters():
    decoder = connected(p.MQTT_5)
    (subscribe,) = decoder.feed(subscribe_packet(5, 9, [("a/+", 1), ("b/#", 2)]))
    assert subscribe.packet_id == 9
    assert [(s.filter, s.qos) for s in subscribe.subscriptions] == [("a/+", 1), ("b/#", 2)]


def test_a_packet_over_the_limit_is_refused_from_its_header():
    decoder = connected()
    header = bytes((p.PUBLISH << 4,)) + p.encode_varint(LIMIT * 10)
    with pytest.raises(p.MalformedPacket) as refused:
        decoder.feed(header)  # nothing of the body has come
    assert refused.value.reason == p.PACKET_TOO_LARGE


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (bytes((p.PUBLISH << 4 | 0x06, 3, 0, 1, 0x61)), "QoS 3"),
        (bytes((p.PUBLISH << 4 | 0x08, 3, 0, 1, 0x61)), "DUP at QoS 0"),
        (bytes((p.PUBLISH << 4, 4, 0, 2, 0xC3, 0x28)), "UTF-8"),
        (bytes((p.PUBLISH << 4, 3, 0, 1, 0)), "U\\+0000"),
        (bytes((p.SUBSCRIBE << 4, 5, 0, 1, 0, 0, 0)), "flags"),
        (bytes((p.PUBLISH << 4, 0x80, 0x80, 0x80, 0x80, 0x01)), "four bytes"),
        (bytes((p.PUBLISH << 4, 0x80, 0x00)), "shortest"),
        (bytes((p.CONNACK << 4, 2, 0, 0)), "not one a server receives"),
        (connect_packet(), "second CONNECT"),
        (bytes((p.PINGREQ << 4 | 1, 0)), "PINGREQ"),
    ],
)
def test_what_is_not_a_packet_is_refused_with_the_reason(packet, why):
    with pytest.raises(p.MalformedPacket, match=why):
        connected().feed(packet)


def test_only_connect_may_come_first_and_only_mqtt_3_1_1_and_5():
    with pytest.raises(p.ProtocolViolation, match="first packet"):
        p.PacketDecoder(LIMIT).feed(bytes((p.PINGREQ << 4, 0)))
    with pytest.raises(p.ProtocolViolation) as refused:
        p.PacketDecoder(LIMIT).feed(connect_packet(level=3))
    assert refused.value.reason == p.UNSUPPORTED_PROTOCOL_VERSION


@given(st.binary(max_size=300))
def test_any_bytes_after_connect_are_packets_or_a_refusal(garbage):
    decoder = connected(p.MQTT_5)
    try:
        decoder.feed(garbage)
    except p.MalformedPacket as refused:
        assert refused.reason >= 0x80
    assert decoder.buffered <= LIMIT


@given(st.integers(0, p.MAX_REMAINING_LENGTH))
def test_variable_byte_integers_round_trip(value):
    encoded = p.encode_varint(value)
    assert len(encoded) <= 4
    assert p.read_varint(encoded, 0, len(encoded)) == (value, len(encoded))


def test_server_packets_are_laid_out_as_the_specification_says():
    assert p.encode_connack(p.MQTT_311, True, 0) == b"\x20\x02\x01\x00"
    assert p.encode_connack(p.MQTT_5, False, 0) == b"\x20\x03\x00\x00\x00"
    assert p.encode_acknowledgement(p.MQTT_311, p.PUBACK, 7) == b"\x40\x02\x00\x07"
    assert p.encode_acknowledgement(p.MQTT_5, p.PUBREL, 7) == b"\x62\x02\x00\x07"
    assert p.encode_acknowledgement(p.MQTT_5, p.PUBACK, 7, 0x87) == b"\x40\x03\x00\x07\x87"
    assert p.encode_suback(p.MQTT_311, 1, [1, 0x80]) == b"\x90\x04\x00\x01\x01\x80"
    assert p.encode_unsuback(p.MQTT_311, 1, [0]) == b"\xb0\x02\x00\x01"
    assert p.encode_disconnect(p.KEEP_ALIVE_TIMEOUT) == b"\xe0\x02\x8d\x00"
    assert p.PINGRESP_PACKET == b"\xd0\x00"
