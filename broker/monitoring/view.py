"""What the monitor reads of the running broker, typed: the service that
composes the monitor (broker.app.service.BrokerService) is seen through this
view, so that monitoring never imports the layer above it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.monitoring.stats import RateHistory
    from broker.server.factory import BrokerFactory


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
