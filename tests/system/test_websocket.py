"""The WebSocket door: a real headless Chromium runs the page the monitor
serves (live.html, over broker-client.js), which subscribes and publishes
through the broker's WebSocket port beside a Python client of its TCP port;
paho-mqtt speaks MQTT over the same WebSocket port; and what is not a
WebSocket client is refused: a disallowed Origin, unknown subprotocols,
text messages, oversize messages."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from broker.app.service import BrokerService
from broker.client import connect
from broker.server import BrokerSettings
from broker.wire import StartAt
from tests.conftest import Inbox
from tests.devtools import DevTools
from tests.process import free_port
from tests.system.test_dashboard import CHROMIUM, INTERACTIVE


async def started(origins: list[str] | None = None) -> tuple[BrokerService, int, int, int]:
    port, ws, monitor = free_port(), free_port(), free_port()
    service = BrokerService(
        [f"tcp:{port}:interface=127.0.0.1"],
        BrokerSettings(max_message_size=64 * 1024),
        monitor=f"tcp:{monitor}:interface=127.0.0.1",
        ws_ports=[f"tcp:{ws}:interface=127.0.0.1"],
        ws_origins=origins or [],
    )
    service.privilegedStartService()
    service.startService()
    return service, port, ws, monitor


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary (.ci/run installs it)")
@pytest_twisted.ensureDeferred
async def test_a_browser_page_shows_what_python_publishes_and_publishes_itself(tmp_path):
    service, port, ws, monitor = await started()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    browser = DevTools()
    try:
        await browser.start(CHROMIUM, INTERACTIVE, tmp_path / "profile")
        page = await browser.open(
            f"http://127.0.0.1:{monitor}/live.html?ws=ws://127.0.0.1:{ws}&topic=live.orders"
        )
        await browser.until(page, "document.body.classList.contains('subscribed')")
        await client.publish("live.orders", b"hello browser", headers={"tenant": "acme"})
        cells = "[...document.querySelectorAll('#messages td')].map((td) => td.textContent)"
        shown = await browser.until(page, f"{cells}.length >= 4 && {cells}")
        assert shown == ["0", "live.orders", "hello browser", "tenant: acme"]
        # The page publishes; a Python subscriber of the TCP port gets it.
        typed = (
            "document.getElementById('text').value = 'from the browser';"
            "document.getElementById('publish').requestSubmit(); true"
        )
        await browser.evaluate(page, typed)
        stored = "document.getElementById('published').textContent"
        assert await browser.until(page, stored) == "stored at offset 1"
        got = Inbox()
        await client.subscribe(["live.orders"], got, start=StartAt.BEGINNING)
        await got.wait(2)
        assert [m.payload for m in got.messages] == [b"hello browser", b"from the browser"]
        assert got.messages[1].headers["Content-Type"] == "text/plain"
    finally:
        await browser.stop()
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_mqtt_over_websocket_shares_the_topics(tmp_path):
    service, port, ws, _ = await started()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    try:

        def device_round_trip() -> list[tuple[str, bytes]]:
            got: list[tuple[str, bytes]] = []
            subscribed = __import__("threading").Event()
            device = mqtt.Client(
                CallbackAPIVersion.VERSION2, transport="websockets", protocol=mqtt.MQTTv5
            )
            device.on_message = lambda c, u, m: got.append((m.topic, m.payload))
            device.on_subscribe = lambda *_: subscribed.set()
            device.connect("127.0.0.1", ws)
            device.loop_start()
            device.subscribe("sensors/#", 1)
            assert subscribed.wait(15)
            device.publish("sensors/hall", b"21.5", 1).wait_for_publish(15)
            return got

        got = await deferToThread(device_round_trip)
        inbox = Inbox()
        await client.subscribe(["sensors.hall"], inbox, start=StartAt.BEGINNING)
        await inbox.wait(1)
        assert inbox.messages[0].payload == b"21.5"
        assert got in ([], [("sensors/hall", b"21.5")])  # (its own, if in time)
    finally:
        await client.close()
        await service.stopService()


class _Probe(WebSocketClientProtocol):
    def onConnect(self, response):
        self.factory.opened.callback(response.protocol)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason or str(code)))
        self.factory.closed.callback((code, reason))


async def _handshake(ws: int, protocols: list[str], origin: str | None = None) -> Deferred:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{ws}", protocols=protocols, origin=origin)
    factory.protocol = _Probe
    factory.opened, factory.closed = Deferred(), Deferred()
    protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", ws).connect(factory)
    factory.instance = protocol
    return factory


@pytest_twisted.ensureDeferred
async def test_origins_subprotocols_text_and_oversize_messages_are_refused():
    service, _, ws, _ = await started(origins=["http://good.example"])
    try:
        allowed = await _handshake(ws, ["twisted-broker"], "http://good.example")
        assert await allowed.opened == "twisted-broker"
        # A text message is not a frame: the connection is closed.
        allowed.instance.sendMessage(b"hello", isBinary=False)
        code, _ = await allowed.closed
        assert code == 1003
        other = await _handshake(ws, ["twisted-broker"], "http://evil.example")
        with pytest.raises(ConnectionError):
            await other.opened
        unknown = await _handshake(ws, ["stomp"], "http://good.example")
        with pytest.raises(ConnectionError):
            await unknown.opened
        big = await _handshake(ws, ["twisted-broker"], "http://good.example")
        await big.opened
        big.instance.sendMessage(b"\x00" * (64 * 1024 + 70_000), isBinary=True)
        code, _ = await big.closed
        # Too big: refused from its header (1009), never held; the close
        # frame may not reach a client still sending the rest of it.
        assert code in (1009, None)
        # The broker still serves a well-behaved client.
        hello = await _handshake(ws, ["twisted-broker"], "http://good.example")
        await hello.opened
        answered: Deferred = Deferred()
        hello.instance.onMessage = lambda payload, binary: answered.callback(payload)
        body = json.dumps({"version": 1}).encode()
        hello.instance.sendMessage(b"\x00\x10" + len(body).to_bytes(4, "big") + body, True)
        answer = await answered
        assert answer[:2] == b"\x00\x10" and json.loads(answer[6:])["version"] == 1
        hello.instance.sendClose()
    finally:
        await service.stopService()


def _raw_websocket(ws: int, frame: bytes) -> bytes:
    """Open a WebSocket by hand, send `frame`, and read until the server
    closes (what it sent after the handshake)."""
    import base64
    import os
    import socket

    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", ws), timeout=15) as raw:
        raw.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{ws}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: twisted-broker\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += raw.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101")
        rest = answer.split(b"\r\n\r\n", 1)[1]
        raw.sendall(frame)
        try:
            while chunk := raw.recv(4096):
                rest += chunk
        except ConnectionResetError:
            pass  # (the server drops the connection after its Close frame)
        return rest


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x82\x05hello", 1002),  # a client's frame not masked
        (b"\x82\xff" + (2**40).to_bytes(8, "big") + b"\x00" * 4, 1009),  # a terabyte declared
        (b"\x80\x85\x00\x00\x00\x00hello", 1002),  # a continuation with nothing to continue
        (b"\x8b\x80\x00\x00\x00\x00", 1002),  # an opcode that does not exist
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_websocket_frames_are_refused_with_their_close_code(frame, code):
    service, _, ws, _ = await started()
    try:
        sent = await deferToThread(_raw_websocket, ws, frame)
        assert sent[0] == 0x88  # a Close frame, with its code
        assert int.from_bytes(sent[2:4], "big") == code
    finally:
        await service.stopService()
