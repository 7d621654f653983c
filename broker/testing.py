"""Brokers for tests: the project's own and its users'.

- `InMemoryBroker`: a broker and any number of clients connected in memory,
  with no sockets and no running reactor, on a fake clock. A test publishes,
  calls `flush()` or `advance(seconds)`, and sees deliveries, acks, ack
  timeouts and redeliveries at once, with no sleeps (as `treq.testing` does
  for HTTP).
- `start_broker()`: a real broker listening on 127.0.0.1, for tests that run
  the reactor (pytest-twisted, trial).

Installing the package also gives pytest the fixtures `memory_broker` and
`broker` (see `broker.pytest_plugin`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.test.iosim import connect as connect_in_memory
from zope.interface import implementer

from broker.client import BrokerClient
from broker.client.reconnecting import credentials_of
from broker.core import Broker
from broker.security.users import Users
from broker.server import BrokerFactory, BrokerSettings

T = TypeVar("T")
_ports = itertools.count(40000)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """Connects a client factory to an InMemoryBroker, in memory."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return succeed(self._broker.connect(factory))


class InMemoryBroker:
    """A broker whose clients connect in memory, on a fake clock.

        broker = InMemoryBroker()
        client = broker.client(extensions=True)
        received = []
        client.subscribe(["orders"], received.append)
        sent = client.publish("orders", b"pizza")
        broker.flush()
        assert broker.result(sent) == 0 and received[0].payload == b"pizza"

    Nothing happens between two calls of `flush` or `advance`: every byte a
    connection writes waits for them, and so does every timer.
    """

    def __init__(self, settings: BrokerSettings | None = None, users: Users | None = None) -> None:
        self.clock = MemoryReactorClock()
        # Passwords are checked at once, in the caller, not in a thread.
        self.factory = BrokerFactory(settings, clock=self.clock, users=users)
        self.core = self.factory.broker
        """The broker's core (broker.core.Broker): its topics, groups, counters."""
        self._pumps: list[IOPump] = []

    @property
    def endpoint(self) -> IStreamClientEndpoint:
        """A client endpoint that connects to this broker in memory."""
        return _MemoryEndpoint(self)

    def client(
        self,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> BrokerClient:
        """A BrokerClient of this broker; options as for `broker.client.connect`."""
        options.setdefault("retry_policy", lambda attempt: 0.1)
        return BrokerClient(
            self.endpoint,
            self.clock,
            where="the in-memory broker",
            credentials=credentials_of(user, password, token),
            **options,
        )

    def connect(self, factory: IProtocolFactory) -> IProtocol:
        """Connect a protocol built by `factory` to the broker; return it."""
        port = next(_ports)
        client_address = IPv4Address("TCP", "127.0.0.1", port)
        server_address = IPv4Address("TCP", "127.0.0.1", 3000)
        client = factory.buildProtocol(server_address)
        server = self.factory.buildProtocol(client_address)
        assert client is not None and server is not None
        client_transport = FakeTransport(client, False, client_address, server_address)
        server_transport = FakeTransport(server, True, server_address, client_address)
        pump = connect_in_memory(
            server, server_transport, client, client_transport, greet=False, clock=None
        )
        self._pumps.append(pump)
        return client

    def flush(self) -> None:
        """Move every byte written, both ways, until nothing moves; run the
        timers that are due; report closed connections."""
        self.clock.advance(0)
        moved = True
        while moved:
            moved = False
            for pump in list(self._pumps):
                if pump.pump():
                    moved = True
                if pump.serverIO.disconnected or pump.clientIO.disconnected:
                    pump.pump()  # the other side hears of it
                    self._pumps.remove(pump)
                    moved = True
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass on the broker's and the clients' clock, then flush."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def drop_connections(self) -> None:
        """Close every connection from the broker's side, as a crash would."""
        for pump in self._pumps:
            pump.serverIO.loseConnection()
        self.flush()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self.factory.connections)

    @staticmethod
    def result(deferred: Deferred[T]) -> T:
        """What `deferred` fired with; AssertionError if it has not fired or
        failed (the failure is raised)."""
        results: list[Any] = []
        deferred.addBoth(results.append)
        if not results:
            raise AssertionError(f"{deferred!r} has not fired (flush or advance first?)")
        result = results[0]
        if isinstance(result, Failure):
            deferred.addErrback(lambda _: None)
            result.raiseException()
        return result


@dataclass
class RunningBroker:
    """A broker listening on 127.0.0.1 at an ephemeral port."""

    factory: BrokerFactory
    listening: IListeningPort

    @property
    def core(self) -> Broker:
        """The broker's core (broker.core.Broker): its topics, groups, counters."""
        return self.factory.broker

    @property
    def port(self) -> int:
        return self.listening.getHost().port  # type: ignore[attr-defined]  # IAddress has no port; TCP's does

    @property
    def endpoint(self) -> str:
        """Client endpoint string for `broker.client.connect`."""
        return f"tcp:127.0.0.1:{self.port}"

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection."""
        for connection in list(self.factory.connections):
            connection.transport.abortConnection()
        return self.listening.stopListening()  # type: ignore[return-value]  # a TCP port returns one


def start_broker(
    settings: BrokerSettings | None = None,
    reactor: IReactorTCP | None = None,
    clock: IReactorTime | None = None,
    port: int = 0,
    users: Users | None = None,
) -> RunningBroker:
    """Start a broker on 127.0.0.1 (`port` 0: any free port), open to all or
    to the `users` given (whose passwords it checks in the reactor: fine for
    tests, where hashes are made cheap; the service uses a thread)."""
    if reactor is None:
        from twisted.internet import reactor as default

        reactor = cast(IReactorTCP, default)
    factory = BrokerFactory(settings, clock=clock or cast(IReactorTime, reactor), users=users)
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    return RunningBroker(factory, listening)
