"""The TCP front door's factory: one core.Broker, and the connections to
it that came through this door's ports."""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory

from broker.core import Broker, BrokerSettings
from broker.log import IMessageStore
from broker.security.auth import Authenticator
from broker.security.users import Users
from broker.server.protocol import BrokerProtocol


class BrokerFactory(ServerFactory):
    """Builds a BrokerProtocol per TCP connection, each given the Broker,
    and keeps them: to close them all, and to tell them of a reload."""

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        clock: IReactorTime | None = None,
        store: IMessageStore | None = None,
        users: Users | Authenticator | None = None,
        broker: Broker | None = None,
    ) -> None:
        if broker is None:
            if clock is None:
                from twisted.internet import reactor

                clock = cast(IReactorTime, reactor)
            broker = Broker(settings or BrokerSettings(), clock, store, users)
        self.broker = broker
        self.connections: set[BrokerProtocol] = set()
        self._when_empty: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> BrokerProtocol:
        protocol = BrokerProtocol(self.broker, self)
        protocol.factory = self
        return protocol

    def connection_made(self, protocol: BrokerProtocol) -> None:
        self.connections.add(protocol)

    def connection_gone(self, protocol: BrokerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._when_empty:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    def reload_users(self, users: Users) -> None:
        """Use a re-read users file: new connections are checked against it,
        and connected users lose what it no longer grants them."""
        authenticator = self.broker.authenticator
        assert authenticator is not None
        authenticator.users = users
        for protocol in list(self.connections):
            protocol.users_reloaded(users)

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

    def stopFactory(self) -> None:
        self.broker.stop()
