"""The MQTT front door (3.1.1 and 5.0) over the broker's core.

packets.py     the codec, sans-I/O: an incremental decoder, the encoders
topics.py      MQTT topic names and filters as this broker's names
properties.py  MQTT 5 properties as message headers, and back
state.py       retained messages and persistent sessions, kept in compacted topics
connection.py  MQTTConnection: one client connection
door.py        MQTTDoor: the factory, and what belongs to a client identifier
"""

from broker.mqtt.door import MQTTDoor

__all__ = ["MQTTDoor"]
