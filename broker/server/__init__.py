"""The broker's server side.

settings.py   BrokerSettings: limits and timers, with their defaults
protocol.py   BrokerProtocol: one connection, its handshake and backpressure
session.py    what a connection does once it has a role
publisher.py  PublisherSession: batches, appends, confirms
subscriber.py SubscriberSession: subscriptions, deliveries, acks, slow consumers
factory.py    BrokerFactory: the registry, the shared timers, the connections
"""

from broker.server.factory import BrokerFactory
from broker.server.protocol import LOGGED_REFUSALS, BrokerProtocol, describe_peer
from broker.server.settings import BrokerSettings

__all__ = [
    "LOGGED_REFUSALS",
    "BrokerFactory",
    "BrokerProtocol",
    "BrokerSettings",
    "describe_peer",
]
