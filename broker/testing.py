"""A real broker on loopback, for tests: the project's own and its users'."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime

from broker.server import BrokerFactory, BrokerSettings


@dataclass
class RunningBroker:
    """A broker listening on 127.0.0.1 at an ephemeral port."""

    factory: BrokerFactory
    listening: IListeningPort

    @property
    def port(self) -> int:
        return self.listening.getHost().port  # type: ignore[attr-defined]

    @property
    def endpoint(self) -> str:
        """Client endpoint string for `broker.client.connect`."""
        return f"tcp:127.0.0.1:{self.port}"

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection."""
        for connection in list(self.factory.connections):
            connection.transport.abortConnection()
        return self.listening.stopListening()  # type: ignore[return-value]


def start_broker(
    settings: BrokerSettings | None = None,
    reactor: IReactorTCP | None = None,
    clock: IReactorTime | None = None,
    port: int = 0,
) -> RunningBroker:
    """Start a broker on 127.0.0.1 (`port` 0: any free port)."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[assignment]
    factory = BrokerFactory(settings, clock=clock or reactor)  # type: ignore[arg-type]
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[union-attr]
    return RunningBroker(factory, listening)
