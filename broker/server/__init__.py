"""The broker's server side.

protocol.py   BrokerProtocol: one connection, its handshake and backpressure
session.py    what a connection does once it has a role
publisher.py  PublisherSession: batches, appends, confirms
subscriber.py SubscriberSession: subscriptions, deliveries, acks, slow consumers
connection.py what a session may ask of its connection, and a connection of its factory
factory.py    BrokerFactory: a core.Broker and the TCP connections to it

BrokerSettings (broker.core.settings) is re-exported here, where it has
always been imported from.
"""

from broker.core.settings import BrokerSettings
from broker.server.factory import BrokerFactory
from broker.server.protocol import LOGGED_REFUSALS, BrokerProtocol, describe_peer

__all__ = [
    "LOGGED_REFUSALS",
    "BrokerFactory",
    "BrokerProtocol",
    "BrokerSettings",
    "describe_peer",
]
