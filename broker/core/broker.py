"""One broker, whatever its front doors: its settings and clock, the topic
registry (each topic with its replay log), consumer groups and durable
positions, the delivery timers every subscriber shares, dead letters, the
input budget, who may connect, and its counters.

A front door (broker.server's TCP protocol today) holds one Broker and
calls it; the Broker never sees a frame or a socket, so another door
(MQTT, WebSocket) can share it with the first."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from broker.auth import Authenticator
from broker.core.settings import BrokerSettings
from broker.core.stats import BrokerStats
from broker.dead_letters import DeadLetterPolicy, encode_dead_letter
from broker.delivery import Delivery, DeliveryTimers
from broker.groups import GroupRegistry
from broker.input_budget import InputBudget
from broker.log import MemoryLog, StoreError
from broker.topics import TooManyTopics, TopicRegistry
from broker.users import Users

if TYPE_CHECKING:
    from broker.log.redis import RedisStore

log = Logger()


class Broker:
    """The state every connection of one broker shares, and what it does
    with no connection in mind (dead-lettering a message given up)."""

    def __init__(
        self,
        settings: BrokerSettings,
        clock: IReactorTime,
        registry: TopicRegistry | None = None,
        users: Users | Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        if registry is None:
            retention = settings.retention
            seconds = clock.seconds
            registry = TopicRegistry(
                lambda name: MemoryLog(retention, clock=seconds),
                settings.max_topics,
                clock=seconds,
            )
        self.registry = registry
        self.timers = DeliveryTimers(clock, settings.delivery)
        self.dead_letters = DeadLetterPolicy(settings.dead_letter_topic)
        self.groups = GroupRegistry(clock, settings.delivery.ack_delay)
        self.stats = BrokerStats()
        self.shared_store: RedisStore | None = None
        """A store shared with other nodes (the Redis store), for monitoring."""
        self.started = clock.seconds()
        self.input_budget = InputBudget(settings.max_pending_input)
        if isinstance(users, Users):
            users = Authenticator(users, clock, identity=settings.tls_identity)
        self.authenticator: Authenticator | None = users
        """Who connections are and what they may do; None: no users file, all open."""
        self.user_connections: Counter[str] = Counter()
        """Connections per user, over every front door (for max_connections)."""

    def dead_letter(self, delivery: Delivery, reason: str, subscriber: str) -> str | None:
        """Append a given-up message to its dead-letter topic; return that
        topic, or None if it was dropped."""
        topic = self.dead_letters.topic_for(delivery.topic.name)
        if topic is None:
            return None
        letter = encode_dead_letter(
            {
                "topic": delivery.topic.name,
                "offset": delivery.offset,
                "deliveries": delivery.attempts,
                "reason": reason,
                "subscriber": subscriber,
                "time": self.clock.seconds(),
            },
            delivery.payload,
        )
        try:
            stored = self.registry.publish(topic, [letter])
        except (TooManyTopics, StoreError) as error:
            log.error("could not dead-letter to {topic!r}: {error}", topic=topic, error=error)
            return None
        if isinstance(stored, Deferred):  # a networked store answers later
            stored.addErrback(
                lambda failure: log.error(
                    "could not dead-letter to {topic!r}: {error}", topic=topic, error=failure.value
                )
            )
        self.stats.dead_letters += 1
        return topic

    def stop(self) -> None:
        """Stop its timers (the connections are the front doors' to close)."""
        self.timers.stop()
