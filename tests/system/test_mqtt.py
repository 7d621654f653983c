"""The MQTT door, through real MQTT clients from outside the project:
paho-mqtt (MQTT 3.1.1 and 5.0) and Debian's mosquitto_pub/mosquitto_sub,
against a real `twistd broker --mqtt-port`, beside this broker's own
clients on the same topics."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker.security.users import hash_secret, user_entry
from broker.sync import connect
from broker.wire import StartAt
from tests.clients import BrokerProcess, accepts, wait_until
from tests.mqtt_devices import Device
from tests.process import free_port

VERSIONS = ["3.1.1", "5"]


class MQTTBroker(BrokerProcess):
    """A broker with an MQTT port beside its own."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.mqtt_port = free_port()
        super().__init__(
            workdir, "--mqtt-port", f"tcp:{self.mqtt_port}:interface=127.0.0.1", *options
        )

    def start(self) -> MQTTBroker:
        super().start()
        wait_until(lambda: accepts(self.mqtt_port), what="the MQTT port opening")
        return self

    def device(self, client_id: str = "", version: str = "3.1.1", **options) -> Device:
        return Device(self.mqtt_port, client_id, version, **options)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MQTTBroker]:
    process = MQTTBroker(tmp_path_factory.mktemp("mqtt")).start()
    yield process
    process.stop()


def topic_of(request: pytest.FixtureRequest) -> str:
    """An MQTT topic of this test alone."""
    return "t/" + request.node.name.replace("[", "-").replace("]", "").replace(".", "_")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publishes_reach_subscribers_in_order_at_each_qos(running, request, version, qos):
    topic = topic_of(request)
    subscriber = running.device(version=version).connect()
    publisher = running.device(version=version).connect()
    try:
        assert [getattr(r, "value", r) for r in subscriber.subscribe(topic + "/#", qos)] == [qos]
        for n in range(20):
            publisher.publish(f"{topic}/a", b"m%d" % n, qos)
        got = subscriber.wait_for(20)
        assert [m.payload for m in got] == [b"m%d" % n for n in range(20)]
        assert {m.topic for m in got} == {f"{topic}/a"} and {m.qos for m in got} == {qos}
    finally:
        subscriber.disconnect()
        publisher.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_mqtt_and_this_brokers_clients_see_each_others_messages(running, request, version):
    topic = topic_of(request)
    name = topic.replace("/", ".")
    device = running.device(version=version).connect()
    try:
        device.subscribe(topic + "/#", 1)
        with connect(running.url) as client:
            replay = client.subscribe([name + ".>"], start=StartAt.BEGINNING)
            assert client.publish(name + ".from-python", b"hello device") == 0
            device.publish(f"{topic}/from-device", b"hello python", 1)
            first, second = replay.next(15), replay.next(15)
            assert [(first.topic, first.data), (second.topic, second.data)] == [
                (name + ".from-python", b"hello device"),
                (name + ".from-device", b"hello python"),
            ]
        got = device.wait_for(2)
        assert [(m.topic, m.payload) for m in got] == [
            (f"{topic}/from-python", b"hello device"),
            (f"{topic}/from-device", b"hello python"),
        ]
        # A plain client (the seed's protocol, as its Go clients speak it).
        assert _plain_replay(running.port, name + ".from-device") == [b"hello python"]
    finally:
        device.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_retained_message_greets_each_new_subscriber_until_cleared(running, request, version):
    topic = topic_of(request)
    publisher = running.device(version=version).connect()
    try:
        publisher.publish(f"{topic}/state", b"on", 1, retain=True)
        first = running.device(version=version).connect()
        first.subscribe(f"{topic}/+", 1)
        (greeted,) = first.wait_for(1)
        assert (greeted.topic, greeted.payload, greeted.retain) == (f"{topic}/state", b"on", True)
        publisher.publish(f"{topic}/state", b"off", 1, retain=True)
        (_, live) = first.wait_for(2)
        assert (live.payload, live.retain) == (b"off", False)  # a live one is not "retained"
        publisher.publish(f"{topic}/state", b"", 1, retain=True)  # clears it
        later = running.device(version=version).connect()
        later.subscribe(f"{topic}/+", 1)
        publisher.publish(f"{topic}/marker", b"after", 1)
        assert [m.payload for m in later.wait_for(1)] == [b"after"]
        first.disconnect()
        later.disconnect()
    finally:
        publisher.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_will_is_published_when_a_device_drops_and_not_when_it_says_goodbye(
    running, request, version
):
    topic = topic_of(request)
    watcher = running.device(version=version).connect()
    try:
        watcher.subscribe(f"{topic}/status", 1)
        polite = running.device(version=version)
        polite.connect(will=(f"{topic}/status", b"polite gone", 1, False))
        polite.disconnect()
        gone = running.device(version=version)
        gone.connect(will=(f"{topic}/status", b"gone dark", 1, False))
        gone.drop()
        assert [m.payload for m in watcher.wait_for(1)] == [b"gone dark"]
    finally:
        watcher.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_persistent_session_gets_what_was_published_while_it_was_away(running, request, version):
    topic = topic_of(request)
    client_id = f"persistent-{version}"
    options = {"clean_session": False} if version != "5" else {}
    expiry = {"session_expiry": 3600, "clean_start": False} if version == "5" else {}
    device = running.device(client_id, version, **options).connect(**expiry)
    publisher = running.device(version=version).connect()
    try:
        assert not device.session_present
        device.subscribe(f"{topic}/#", 1)
        publisher.publish(f"{topic}/x", b"while here", 1)
        device.wait_for(1)
        device.disconnect()
        for n in range(3):
            publisher.publish(f"{topic}/x", b"missed %d" % n, 1)
        again = running.device(client_id, version, **options).connect(**expiry)
        assert again.session_present
        missed = [b"missed 0", b"missed 1", b"missed 2"]
        again.wait(lambda: set(missed) <= set(again.payloads()), what="the missed messages")
        # In order, but for one the old connection had in flight when it
        # went (paho's DISCONNECT races the publishes): it comes again
        # later, marked DUP, as does "while here" if its PUBACK was lost.
        firsts = [m.payload for m in again.messages if not m.dup]
        assert [payload for payload in firsts if payload in missed] == sorted(
            set(firsts) & set(missed)
        )
        again.disconnect()
    finally:
        publisher.disconnect()


def test_a_persistent_session_survives_a_broker_restart_with_a_data_dir(tmp_path):
    process = MQTTBroker(tmp_path, "--data-dir", str(tmp_path / "data"))
    process.start()
    try:
        device = process.device("field-unit-1", clean_session=False).connect()
        device.subscribe("plant/+/temp", 1)
        device.disconnect()
        process.device().connect().publish("plant/a/temp", b"20.5", 1)
        process.stop()
        process.start()
        process.device().connect().publish("plant/b/temp", b"21.0", 1)
        again = process.device("field-unit-1", clean_session=False).connect()
        assert again.session_present
        assert [m.payload for m in again.wait_for(2)] == [b"20.5", b"21.0"]
        again.disconnect()
    finally:
        process.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_shared_subscription_splits_messages_between_its_members(running, request, version):
    topic = topic_of(request)
    members = [running.device(version=version).connect() for _ in range(2)]
    publisher = running.device(version=version).connect()
    try:
        for member in members:
            member.subscribe(f"$share/workers/{topic}/#", 1)
        for n in range(40):
            publisher.publish(f"{topic}/job", b"%d" % n, 1)
        wait_until(lambda: sum(len(m.messages) for m in members) >= 40, what="40 jobs done")
        payloads = sorted(int(p) for m in members for p in m.payloads())
        assert payloads == list(range(40))  # each once, among the members
    finally:
        for device in (*members, publisher):
            device.disconnect()


def test_mqtt5_properties_travel_as_headers_and_back(running, request):
    topic = topic_of(request)
    subscriber = running.device(version="5").connect()
    publisher = running.device(version="5").connect()
    try:
        subscriber.subscribe(f"{topic}/#", 1)
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("tenant", "acme"), ("trace", "t-1")]
        properties.ContentType = "application/json"
        properties.ResponseTopic = f"{topic}/replies"
        properties.CorrelationData = b"req-42"
        properties.MessageExpiryInterval = 3600
        publisher.publish(f"{topic}/ask", b"{}", 1, properties=properties)
        (got,) = subscriber.wait_for(1)
        shown = got.properties
        assert shown.UserProperty == [("tenant", "acme"), ("trace", "t-1")]
        assert shown.ContentType == "application/json"
        assert shown.ResponseTopic == f"{topic}/replies"
        assert shown.CorrelationData == b"req-42"
        assert 3590 <= shown.MessageExpiryInterval <= 3600
        with connect(running.url) as client:
            replay = client.subscribe([topic.replace("/", ".") + ".ask"], start=StartAt.BEGINNING)
            headers = replay.next(15).headers
            assert headers["tenant"] == "acme" and headers["Content-Type"] == "application/json"
            assert headers["Reply-To"] == f"{topic}/replies".replace("/", ".")
            assert headers["Correlation-Id"] == "req-42"
    finally:
        subscriber.disconnect()
        publisher.disconnect()


def test_a_client_without_the_password_is_refused_and_rights_hold(tmp_path):
    users = tmp_path / "users.toml"
    users.write_text(
        user_entry("sensor", "password", hash_secret("s3cret"), ["plant.>"], ["plant.>"])
        + "max_connections = 1\n"
        + "\n[users.anonymous]\npublish = []\nsubscribe = []\n"
    )
    process = MQTTBroker(tmp_path, "--users", str(users)).start()
    try:
        wrong = process.device(version="5").connect(user="sensor", password="guess")
        assert wrong.refused
        v3 = process.device().connect(user="sensor", password="guess")
        assert v3.refused
        device = process.device(version="5").connect(user="sensor", password="s3cret")
        assert not device.refused
        (granted,) = device.subscribe("plant/#", 1)
        (denied,) = device.subscribe("office/#", 1)
        assert granted.value == 1 and denied.value == 0x87
        # Its max_connections (1) holds across doors: a second is refused.
        second = process.device(version="5").connect(user="sensor", password="s3cret")
        assert second.refused and second.connack[1].value == 0x97
        device.disconnect()
    finally:
        process.stop()


def test_bad_packets_close_that_connection_and_nothing_else(running):
    healthy = running.device().connect()
    try:
        for garbage in (
            b"\x10\xff\xff\xff\xff\x7f",  # a remaining length past four bytes
            b"\x30\x05\x00\x01a",  # PUBLISH before CONNECT
            b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00",  # MQTT 3.1 (level 3)
            b"\x10\xff\xff\xff\x7f",  # CONNECT of 256 MB declared
        ):
            with socket.create_connection(("127.0.0.1", running.mqtt_port), timeout=10) as raw:
                raw.sendall(garbage)
                answer = b""
                while chunk := raw.recv(100):
                    answer += chunk
                assert answer in (b"", b"\x20\x02\x00\x01")  # closed (level 3: CONNACK 1)
        healthy.subscribe("still/here", 1)
        healthy.publish("still/here", b"fine", 1)
        assert healthy.wait_for(1)[0].payload == b"fine"
    finally:
        healthy.disconnect()


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="no mosquitto-clients")
def test_mosquitto_sub_gets_what_this_brokers_client_publishes(running):
    mqtt = ["-h", "127.0.0.1", "-p", str(running.mqtt_port), "-q", "1"]
    # A retained message first: mosquitto_sub prints it once it is subscribed.
    subprocess.run(
        ["mosquitto_pub", *mqtt, "-t", "orders/ready", "-m", "ready", "-r"], check=True, timeout=30
    )
    listening = subprocess.Popen(
        ["mosquitto_sub", *mqtt, "-t", "orders/#", "-v", "-C", "3", "-W", "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listening.stdout is not None
        assert listening.stdout.readline() == "orders/ready ready\n"
        with connect(running.url) as client:
            client.publish("orders.eu", b"from a client of this broker")
        subprocess.run(
            ["mosquitto_pub", *mqtt, "-t", "orders/us", "-m", "from mosquitto_pub"],
            check=True,
            timeout=30,
        )
        out, _ = listening.communicate(timeout=30)
        assert out.splitlines() == [
            "orders/eu from a client of this broker",
            "orders/us from mosquitto_pub",
        ]
    finally:
        listening.kill()


def test_the_monitor_shows_which_door_each_connection_came_through(tmp_path):
    import urllib.request

    monitor = free_port()
    process = MQTTBroker(tmp_path, "--monitor", str(monitor)).start()
    try:
        wait_until(lambda: accepts(monitor), what="the monitor opening")
        device = process.device("meter-1", "5").connect()
        device.subscribe("meters/#", 1)
        with connect(process.url) as client:
            client.publish("meters.hall", b"7")
            device.wait_for(1)

            def read(path: str) -> bytes:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}{path}", timeout=10) as r:
                    return r.read()

            rows = json.loads(read("/connz"))["items"]
            mqtt = [row for row in rows if row["door"] == "mqtt"]
            assert [(row["client_id"], row["protocol"], row["role"]) for row in mqtt] == [
                ("meter-1", "MQTT 5.0", "mqtt")
            ]
            assert (mqtt[0]["filters"], mqtt[0]["subscriptions"]) == (["meters/#"], ["meters.hall"])
            assert {row["door"] for row in rows} == {"mqtt", "tcp"}
            varz = json.loads(read("/varz"))
            assert varz["connections"]["by_door"]["mqtt"] == 1
            metrics = read("/metrics").decode()
            assert 'broker_door_connections{door="mqtt"} 1.0' in metrics
        device.disconnect()
    finally:
        process.stop()


def test_mqtt_over_tls_with_a_client_certificate_naming_its_user(tmp_path):
    from tests.certs import Authority

    authority = Authority(tmp_path / "pki")
    server = authority.issue("server", "localhost", True)
    device = authority.issue("device", "sensor", False)
    users = tmp_path / "users.toml"
    users.write_text(
        user_entry("sensor", "password", hash_secret("unused"), ["plant.>"], ["plant.>"])
        + "\n[users.anonymous]\npublish = []\nsubscribe = []\n"
    )
    tls_port = free_port()
    process = BrokerProcess(
        tmp_path,
        "--mqtt-port",
        f"tls:{tls_port}:interface=127.0.0.1",
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-ca",
        str(authority.pem),
        "--users",
        str(users),
    ).start()
    try:
        wait_until(lambda: accepts(tls_port), what="the MQTT TLS port opening")
        signed = Device(tls_port, "tls-1", "5")
        signed.client.tls_set(
            ca_certs=str(authority.pem), certfile=str(device.cert), keyfile=str(device.key)
        )
        signed.connect()
        assert not signed.refused  # its certificate names user "sensor": no password
        (granted,) = signed.subscribe("plant/#", 1)
        assert granted.value == 1
        signed.publish("plant/boiler", b"hot", 1)
        assert signed.wait_for(1)[0].payload == b"hot"
        signed.disconnect()
    finally:
        process.stop()


def _plain_replay(port: int, topic: str) -> list[bytes]:
    """What a client of the plain protocol gets subscribing to `topic` from
    the beginning: the first delivery, acked (u16 frames, as the seed's Go
    client sends them)."""
    import struct

    names = json.dumps([topic]).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        raw.sendall(struct.pack(">HI", 1, len(names)) + names + struct.pack(">H", 0))

        def exactly(count: int) -> bytes:
            data = b""
            while len(data) < count:
                chunk = raw.recv(count - len(data))
                assert chunk, "closed"
                data += chunk
            return data

        assert exactly(2) == b"\x00\x01"  # Subscribed
        (length,) = struct.unpack(">H", exactly(2))
        assert exactly(length).decode() == topic
        (size,) = struct.unpack(">Q", exactly(8))
        payload = exactly(size)
        raw.sendall(b"\x00\x04")  # Ack
        return [payload]
