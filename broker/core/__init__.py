"""The broker's core: what every front door (the TCP protocol today) shares,
with no frames and no sockets."""

from broker.core.broker import Broker
from broker.core.settings import BrokerSettings
from broker.core.stats import BrokerStats

__all__ = ["Broker", "BrokerSettings", "BrokerStats"]
