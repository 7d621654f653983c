"""MQTTConnection on a fake clock and an in-memory transport: the timers
(CONNECT in time, keep-alive), and whatever bytes a client sends: each
connection ends in a clear refusal or goes on, nothing unhandled, nothing
held past the packet limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

import broker.mqtt.packets as p
from broker.core import Broker, BrokerSettings
from broker.mqtt import MQTTDoor
from tests.unit.mqtt.test_packets import connect_packet, publish_packet, subscribe_packet


def opened(level: int = p.MQTT_311) -> tuple[MQTTDoor, Clock, object, StringTransport]:
    clock = Clock()
    door = MQTTDoor(Broker(BrokerSettings(max_message_size=4096), clock))
    connection = door.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    connection.makeConnection(transport)
    return door, clock, connection, transport


def test_a_connection_without_connect_is_closed_after_the_handshake_timeout():
    _, clock, _, transport = opened()
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_a_silent_client_is_disconnected_after_one_and_a_half_keep_alives():
    _, clock, connection, transport = opened()
    connection.dataReceived(connect_packet(p.MQTT_5, keep_alive=10))
    assert transport.value().startswith(b"\x20")  # CONNACK
    clock.advance(14)
    connection.dataReceived(bytes((p.PINGREQ << 4, 0)))  # heard: the count starts again
    clock.advance(14)
    assert not transport.disconnecting
    assert transport.value().endswith(p.PINGRESP_PACKET)
    clock.advance(1.1)
    assert transport.disconnecting
    assert transport.value().endswith(
        p.encode_disconnect(p.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
    )


def test_qos1_publishes_are_answered_in_order_once_stored():
    door, _, connection, transport = opened()
    connection.dataReceived(connect_packet())
    transport.clear()
    connection.dataReceived(
        b"".join(publish_packet(p.MQTT_311, "a/b", b"m%d" % n, 1, n + 1) for n in range(5))
    )
    assert transport.value() == b"".join(
        p.encode_acknowledgement(p.MQTT_311, p.PUBACK, n + 1) for n in range(5)
    )
    log = door.broker.registry.get("a.b").log
    assert log.read(0, 10) == [b"m%d" % n for n in range(5)]


def test_a_qos2_publish_sent_again_before_its_release_is_stored_once():
    door, _, connection, transport = opened()
    connection.dataReceived(connect_packet(client_id="twice"))
    again = publish_packet(p.MQTT_311, "q2", b"once", 2, 7)
    connection.dataReceived(again)
    connection.dataReceived(again)  # its PUBREC was lost, say
    connection.dataReceived(bytes((p.PUBREL << 4 | 2, 2, 0, 7)))
    assert door.broker.registry.get("q2").log.read(0, 10) == [b"once"]
    assert transport.value().endswith(
        p.encode_acknowledgement(p.MQTT_311, p.PUBREC, 7) * 2
        + p.encode_acknowledgement(p.MQTT_311, p.PUBCOMP, 7)
    )


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([p.MQTT_311, p.MQTT_5]), st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_after_connect_end_in_a_refusal_or_go_on(level, chunks):
    door, clock, connection, transport = opened(level)
    connection.dataReceived(connect_packet(level))
    connection.dataReceived(subscribe_packet(level, 1, [("#", 1)]))
    for chunk in chunks:
        connection.dataReceived(chunk)
        assert connection.decoder.buffered <= door.max_packet_size
    clock.advance(120)  # timers fire without error
    sent = transport.value()
    assert sent.startswith(b"\x20")  # the CONNACK went first, whatever came


def test_a_topic_alias_stands_for_its_topic_and_an_unknown_one_is_refused():
    door, _, connection, transport = opened()
    connection.dataReceived(connect_packet(p.MQTT_5))
    alias = {p.TOPIC_ALIAS: 3}
    connection.dataReceived(publish_packet(p.MQTT_5, "long/topic/name", b"1", properties=alias))
    connection.dataReceived(publish_packet(p.MQTT_5, "", b"2", properties=alias))
    assert door.broker.registry.get("long.topic.name").log.read(0, 10) == [b"1", b"2"]
    connection.dataReceived(publish_packet(p.MQTT_5, "", b"3", properties={p.TOPIC_ALIAS: 4}))
    assert transport.value().endswith(
        p.encode_disconnect(p.PROTOCOL_ERROR, "topic alias 4 was never set")
    )
    assert transport.disconnecting


def test_a_second_connection_of_a_client_takes_its_session_over():
    door, _, first, first_transport = opened()
    first.dataReceived(connect_packet(p.MQTT_5, client_id="meter"))
    second = door.buildProtocol(None)
    second_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5556))
    second.makeConnection(second_transport)
    second.dataReceived(connect_packet(p.MQTT_5, client_id="meter"))
    assert first_transport.value().endswith(p.encode_disconnect(p.SESSION_TAKEN_OVER))
    assert first_transport.disconnecting and not second_transport.disconnecting


def test_a_packet_that_never_completes_is_given_up_after_the_frame_timeout():
    door, clock, connection, transport = opened(p.MQTT_5)
    connection.dataReceived(connect_packet(p.MQTT_5, keep_alive=0))
    packet = publish_packet(p.MQTT_5, "slow", b"x" * 1000, 1)
    for second in range(25):  # a byte a second: heard, but never whole
        connection.dataReceived(packet[second : second + 1])
        clock.advance(1)
    assert door.broker.input_budget.total == 25 and not transport.disconnecting
    clock.advance(5.1)  # 30 s since the packet began
    assert transport.disconnecting
    assert b"stayed incomplete" in transport.value()
    connection.connectionLost(None)
    assert door.broker.input_budget.total == 0
