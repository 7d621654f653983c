"""The WebSocket door: this broker's protocol and MQTT over WebSocket
(Autobahn|Python), for browsers (door.py)."""

from broker.websocket.door import WebSocketDoor

__all__ = ["WebSocketDoor"]
