"""The broker's core: what every front door (the TCP protocol today) shares,
with no frames and no sockets.

broker.py      Broker: settings, clock, store, topics, groups, timers, counters
settings.py    BrokerSettings: limits and timers, with their defaults
stats.py       BrokerStats: the counters the hot paths write
topics.py      TopicRegistry and Topic: each topic's log and who waits on it
consumer.py    Consumer: one subscriber's subscriptions, rights, groups, durables
patterns.py    one consumer's pattern subscriptions
delivery.py    subscriptions as cursors, each connection's window, ack timers
groups.py      consumer groups and durable consumers sharing one cursor
dead_letters.py, confirms.py, input_budget.py
"""

from broker.core.broker import Appended, Broker
from broker.core.consumer import Consumer, ConsumerOutput, SubscribeRefused
from broker.core.settings import BrokerSettings
from broker.core.stats import BrokerStats

__all__ = [
    "Appended",
    "Broker",
    "BrokerSettings",
    "BrokerStats",
    "Consumer",
    "ConsumerOutput",
    "SubscribeRefused",
]
