"""One broker: its settings, its topic registry (with each topic's replay
log), the delivery timers all its connections share, and its connections."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from broker.auth import Authenticator
from broker.dead_letters import DeadLetterPolicy, encode_dead_letter
from broker.delivery import Delivery, DeliveryTimers
from broker.groups import GroupRegistry
from broker.input_budget import InputBudget
from broker.log import MemoryLog, StoreError
from broker.monitoring.stats import BrokerStats
from broker.server.protocol import BrokerProtocol
from broker.server.settings import BrokerSettings
from broker.topics import TooManyTopics, TopicRegistry
from broker.users import Users

log = Logger()


class BrokerFactory(ServerFactory):
    """One broker: its settings, its topic registry (with each topic's replay
    log) and the delivery timers all its connections share."""

    protocol = BrokerProtocol  # type: ignore[assignment]  # Factory's stub wants a callable

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        clock: IReactorTime | None = None,
        registry: TopicRegistry | None = None,
        users: Users | Authenticator | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.settings = settings or BrokerSettings()
        self.clock: IReactorTime = clock
        if registry is None:
            retention = self.settings.retention
            seconds = self.clock.seconds
            registry = TopicRegistry(
                lambda name: MemoryLog(retention, clock=seconds),
                self.settings.max_topics,
                clock=seconds,
            )
        self.registry = registry
        self.timers = DeliveryTimers(self.clock, self.settings.delivery)
        self.dead_letters = DeadLetterPolicy(self.settings.dead_letter_topic)
        self.groups = GroupRegistry(self.clock, self.settings.delivery.ack_delay)
        self.connections: set[BrokerProtocol] = set()
        self.stats = BrokerStats()
        self.shared_store: Any = None
        """A store shared with other nodes (the Redis store), for monitoring."""
        self.started = self.clock.seconds()
        self.input_budget = InputBudget(self.settings.max_pending_input)
        self._when_empty: list[Deferred[None]] = []
        if isinstance(users, Users):
            users = Authenticator(users, self.clock, identity=self.settings.tls_identity)
        self.authenticator: Authenticator | None = users
        """Who connections are and what they may do; None: no users file, all open."""
        self.user_connections: Counter[str] = Counter()

    def reload_users(self, users: Users) -> None:
        """Use a re-read users file: new connections are checked against it,
        and connected users lose what it no longer grants them."""
        assert self.authenticator is not None
        self.authenticator.users = users
        for protocol in list(self.connections):
            protocol.users_reloaded(users)

    def connection_gone(self, protocol: BrokerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._when_empty:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self, grace: float = 1.0) -> Deferred[None]:
        """Close every connection (cutting off, after `grace` seconds, those
        that do not take what is still written to them); fires once all are gone."""
        if not self.connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._when_empty.append(done)
        for protocol in list(self.connections):
            protocol.close(grace)
        return done

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

    def stopFactory(self) -> None:
        self.timers.stop()
