"""paho-mqtt, the Eclipse project's Python client, as the tests' MQTT device:
each call waits for the broker's answer (CONNACK, SUBACK, the publish's
PUBACK or PUBCOMP) or fails after a timeout, and what arrives is kept."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

VERSIONS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


class Device:
    """One MQTT client, connected on `connect()`."""

    def __init__(self, port: int, client_id: str = "", version: str = "3.1.1", **options: Any):
        self.port = port
        self.version = version
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=VERSIONS[version],
            clean_session=options.pop("clean_session", None) if version != "5" else None,
        )
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        self.connack: tuple[Any, Any] | None = None
        self.subacks: dict[int, list[Any]] = {}
        self.disconnected: Any = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self._options = options

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        with self._changed:
            self.connack = (flags, reason)
            self._changed.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        with self._changed:
            self.subacks[mid] = reasons
            self._changed.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._changed:
            self.disconnected = reason
            self._changed.notify_all()

    def wait(self, condition: Any, timeout: float = 15, what: str = "it") -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what} did not happen within {timeout} s")
                self._changed.wait(left)

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 60,
        clean_start: bool = True,
    ) -> Device:
        if user is not None:
            self.client.username_pw_set(user, password)
        if will is not None:
            self.client.will_set(*will)
        properties = None
        if self.version == "5" and session_expiry is not None:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if self.version == "5":
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.client.connect("127.0.0.1", self.port, **kwargs)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnected is not None, what="CONNACK")
        return self

    @property
    def session_present(self) -> bool:
        assert self.connack is not None
        return bool(self.connack[0].session_present)

    @property
    def refused(self) -> bool:
        assert self.connack is not None
        return bool(self.connack[1].is_failure)

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[Any]:
        result, mid = self.client.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self.wait(lambda: mid in self.subacks, what=f"SUBACK of {topic_filter}")
        return self.subacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(15)
        assert info.is_published()

    def wait_for(self, count: int, timeout: float = 15) -> list[mqtt.MQTTMessage]:
        self.wait(lambda: len(self.messages) >= count, timeout, f"{count} message(s)")
        return list(self.messages)

    def payloads(self) -> list[bytes]:
        return [message.payload for message in self.messages]

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (a device gone dark)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
