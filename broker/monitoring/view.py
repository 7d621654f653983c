"""What the monitor reads of the running broker, typed: the service that
composes the monitor (broker.app.service.BrokerService) is seen through this
view, so that monitoring never imports the layer above it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from broker.monitoring.stats import RateHistory
    from broker.server.factory import BrokerFactory


class MonitoredConnection(Protocol):
    """A client connection through any door (broker.core.Broker.connections),
    as /connz, the metrics and the admin API see it."""

    number: int
    peer: str
    door: str
    user: Any
    connected_at: float
    bytes_received: int
    transport: Any

    @property
    def role(self) -> str: ...

    @property
    def window(self) -> Any:
        """Its delivery window (None if it reads nothing)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def messages_in(self) -> int: ...

    @property
    def delivered_messages(self) -> int: ...

    @property
    def delivered_bytes(self) -> int: ...

    def details(self) -> dict[str, Any]:
        """What only its door knows (MQTT: client id, protocol version)."""

    def close(self, grace: float | None = None) -> None: ...


class MonitoredBroker(Protocol):
    """The running broker, as /varz, /connz, /topicz, /healthz and the
    dashboard see it."""

    @property
    def state(self) -> str:
        """starting, serving, draining, stopped or waiting for Redis."""

    @property
    def factory(self) -> BrokerFactory: ...

    @property
    def rates(self) -> RateHistory: ...

    @property
    def ports(self) -> list[str]: ...

    @property
    def users_file(self) -> Path | None: ...
